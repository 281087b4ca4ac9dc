"""Static token merging: schedule and plan, the torch twin, the graph pass against the twin, composition, CLI.

The common recipe on a tiny model (img 32, patch 4: 64 patches, enough for windows of 4x4 and 2x2): the
expected structure (op types and counts, no Scatter, TopK sorted with K < 3840, static shapes), ONNX Runtime
against the merged twin with explicit tolerances (fp32 and fp16), the ONNX checker, the plan's JSON round trip,
and the pass contract (stateless; ``apply_to_twin`` never mutates its input).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import max_abs, score_path, tiny_vit
from vitrt.compiler.cleanup import CleanupPass
from vitrt.compiler.cost import vit_flops
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import FP32_TOLERANCE, PassContext, PassManager
from vitrt.compiler.verify import run_onnx, run_torch, verification_inputs
from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
from vitrt.transforms.precision.plan import FP16_TOLERANCE, PrecisionPlan
from vitrt.transforms.prune.graph_pass import PrunePass
from vitrt.transforms.prune.plan import BlockPlan, PruningPlan
from vitrt.transforms.tome.graph_pass import TokenMergePass
from vitrt.transforms.tome.report import describe, merge_figure
from vitrt.transforms.tome.schedule import (BlockMerge, MergePlan, TomeSchedule, parse_per_block, parse_r,
                                            quadtree_order, requested_r, resolve, window_levels)
from vitrt.transforms.tome.solve import solve_flops
from vitrt.transforms.tome.twin import MergingBlock, bipartite_merge, trace_sources

BATCH = 2
SCHEDULES = {
    "tome": TomeSchedule(r=4, skip=0),
    "dfe": TomeSchedule(r=5, skip=1),
    "dfe_lgtm": TomeSchedule(r=4, skip=1, window=2, transition=2),
    "capped": TomeSchedule(r=40, skip=0),  # every block merges half its tokens: no A token is kept
}


def small_twin(distilled=False, depth=4):
    """img 32, patch 4: an 8x8 grid (64 patches), enough tokens for windows of 4x4 and 2x2."""
    return canonicalize(tiny_vit(distilled=distilled, depth=depth, patch_size=4))


def merged(twin, schedule, batch=BATCH):
    """(merged view, merged twin, plan): the pass run on the lowered twin, and its twin transform."""
    view = GraphView.from_onnx(lower(twin, batch=batch))
    plan = resolve(schedule, view.spec)
    token_merge = TokenMergePass(plan)
    return token_merge.run(view, PassContext()).view, token_merge.apply_to_twin(twin), plan


def images_for(twin, seed=1, count=2, batch=BATCH):
    return verification_inputs(twin.spec, batch, seed=seed, count=count)


def without_attention(twin, block: int):
    """A pruning plan that removes ``block``'s attention branch (heads, qk, v) and keeps everything else."""
    plan = PruningPlan.keep_all(twin.spec)
    blocks = list(plan.blocks)
    blocks[block] = BlockPlan((), (), (), blocks[block].mlp)
    return dataclasses.replace(plan, blocks=tuple(blocks)).validate()


def one_line_error(call, match: str) -> str:
    with pytest.raises(VitrtError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- schedule and plan ----------------------------------------------------------------------------------------
def test_parse_and_schedule_json_round_trip():
    assert parse_r("13") == (13, 0.0) and parse_r("16,0.5") == (16, 0.5)
    assert parse_per_block("0,2,3") == (0, 2, 3)
    for bad in ("x", "1,2,3"):
        with pytest.raises(VitrtError):
            parse_r(bad)
    one_line_error(lambda: parse_per_block("1,a"), "comma-separated")
    s = TomeSchedule(r=8, inflection=-0.5, skip=2, window=4, transition=1)
    assert TomeSchedule.from_json(s.to_json()) == s
    assert TomeSchedule.from_json(TomeSchedule(per_block=(0, 1)).to_json()).per_block == (0, 1)
    one_line_error(lambda: TomeSchedule.from_dict({"r": 1, "depth": 3}), "unknown field")


def test_resolve_defaults_ramp_cap_and_tokens():
    spec = small_twin(depth=12).spec  # 1 + 64 tokens, 12 blocks
    plan = resolve(TomeSchedule(r=3), spec)
    assert plan.r == [0, 0] + [3] * 10  # DFE default: depth // 6 = 2 blocks skipped
    assert plan.tokens == [65, 65, 65] + [65 - 3 * k for k in range(1, 10)]
    assert all(b.tokens_out == n for b, n in zip(plan.blocks[:-1], plan.tokens[1:]))
    ramp = resolve(TomeSchedule(r=4, inflection=0.5, skip=0), spec).r
    assert ramp[0] == 2 and ramp[-1] == 6 and ramp == sorted(ramp)
    capped = resolve(TomeSchedule(r=40, skip=0), spec)  # ToMe's cap: at most half the mergeable tokens
    assert capped.r[0] == 32 and all(b.merges <= (b.tokens - 1) // 2 for b in capped.blocks)
    assert capped.tokens_out[-1] >= 2
    new_spec = plan.apply_to_spec(spec)
    assert [b.tokens for b in new_spec.blocks] == plan.tokens
    assert new_spec.extra["token_merge"]["r"] == plan.r
    assert vit_flops(new_spec) < vit_flops(spec)


def test_over_merging_schedule_is_refused_naming_the_block():
    spec = small_twin(depth=4).spec
    # block 2 has 44 mergeable tokens: at most 22
    message = one_line_error(lambda: resolve(TomeSchedule(per_block=(0, 20, 30, 0)), spec), "block 2")
    assert message.startswith("block 2:")
    one_line_error(lambda: resolve(TomeSchedule(per_block=(1, 1, 1)), spec), "lists 3 values")
    one_line_error(lambda: resolve(TomeSchedule(r=2, window=3), spec), "does not divide")
    one_line_error(lambda: resolve(TomeSchedule(r=2, window=2, transition=3), spec), "at most 2 local")


def test_lgtm_windows_grow_and_are_contiguous():
    spec = small_twin(depth=6).spec
    plan = resolve(TomeSchedule(r=8, skip=1, window=2, transition=2), spec)
    assert [b.windows for b in plan.blocks] == [1, 16, 4, 1, 1, 1]
    assert [b.per_window for b in plan.blocks] == [0, 1, 2, 8, 8, 8]  # ceil(r / windows), the paper's rule
    assert [b.permute for b in plan.blocks] == [False, True, False, False, False, False]
    order = quadtree_order(8, 2)
    assert sorted(order) == list(range(64))
    first = {(p // 8 // 2, p % 8 // 2) for p in order[:4]}
    quad = {(p // 8 // 4, p % 8 // 4) for p in order[:16]}
    assert len(first) == 1 and len(quad) == 1  # a window, and 2x2 windows, are contiguous


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_merge_plan_json_round_trip(name):
    spec = small_twin(distilled=True, depth=6).spec
    plan = resolve(SCHEDULES[name], spec)
    again = MergePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.to_dict() == plan.to_dict()
    assert [b.permute for b in again.blocks] == [b.permute for b in plan.blocks]
    assert again.apply_to_spec(spec) == plan.apply_to_spec(spec)


def test_malformed_or_foreign_merge_plan_is_refused_in_one_line():
    spec = small_twin(depth=4).spec
    data = resolve(SCHEDULES["dfe_lgtm"], spec).to_dict()  # tokens [65, 65, 49, 45], windows [1, 16, 4, 1]

    def refused(mutate, match):
        bad = json.loads(json.dumps(data))
        mutate(bad)
        one_line_error(lambda: MergePlan.from_dict(bad), match)

    refused(lambda d: d.pop("tokens"), "missing or invalid field")
    refused(lambda d: d.update(per_window=["x", 1, 1, 4]), "missing or invalid field")
    refused(lambda d: d.update(windows=[1, 16, 4]), "differ in length")
    refused(lambda d: d["tokens"].__setitem__(3, 44), "block 2 leaves 45 tokens, block 3 takes 44")
    refused(lambda d: d["windows"].__setitem__(1, 3), "block 1 cannot split 64 mergeable tokens into 3")
    refused(lambda d: d["per_window"].__setitem__(1, 3), "more than half")
    refused(lambda d: d["schedule"].update(depth=4), "unknown field")
    # windows only split the full grid: a plan that merges inside windows after a global merge is foreign
    refused(lambda d: d.update(tokens=[65, 49, 33, 29], windows=[1, 16, 4, 1], per_window=[16, 1, 1, 4]),
            "block 1 merges inside windows after tokens were merged globally")
    plan = MergePlan.from_dict(data)
    for other in (small_twin(depth=3).spec, small_twin(distilled=True).spec):
        one_line_error(lambda: plan.apply_to_spec(other), "merge plan made for 4 blocks")
    coarse = GraphView.from_onnx(lower(canonicalize(tiny_vit(depth=4)), batch=BATCH))  # patch 8: a 4x4 grid
    one_line_error(lambda: TokenMergePass(plan).run(coarse, PassContext()),
                   "the model has 4 blocks, 1 prefix token\\(s\\), a 4x4 grid, 17 tokens")


def test_blocks_without_attention_are_skipped_by_r_and_refused_by_lists():
    """Constant and ramp schedules merge nothing in a block without attention; an explicit list is refused."""
    twin = small_twin(depth=4)
    pruned = PrunePass(without_attention(twin, 1)).apply_to_twin(twin)
    spec = pruned.spec
    assert [b.heads for b in spec.blocks] == [2, 0, 2, 2]
    constant = resolve(TomeSchedule(r=4, skip=0), spec)
    assert [b.per_window for b in constant.blocks] == [4, 0, 4, 4]
    ramp = resolve(TomeSchedule(r=4, inflection=0.5, skip=0), spec)
    assert ramp.r[1] == 0 and all(r > 0 for i, r in enumerate(ramp.r) if i != 1)
    message = one_line_error(lambda: resolve(TomeSchedule(per_block=(2, 2, 2, 2)), spec), "block 1 has no attention")
    assert message.startswith("block 1")
    assert resolve(TomeSchedule(per_block=(2, 0, 2, 2)), spec).r == [2, 0, 2, 2]


def test_windows_start_where_merging_starts():
    """The first local block has no attention: the next one gathers the window order, so every merged token
    still covers patches of one 4x4 window (a row-major split would make 2x8 strips)."""
    twin = small_twin(depth=2)
    prune_plan = without_attention(twin, 0)
    pruned = PrunePass(prune_plan).apply_to_twin(twin)
    plan = resolve(TomeSchedule(r=8, skip=0, window=2), pruned.spec)
    assert [(b.windows, b.per_window, b.permute) for b in plan.blocks] == [(16, 0, False), (4, 2, True)]
    assert MergePlan.from_dict(plan.to_dict()) == plan
    merged_twin = TokenMergePass(plan).apply_to_twin(pruned)
    images = images_for(twin)
    sources = trace_sources(merged_twin, torch.from_numpy(images)).numpy()  # [B, 64]: final token of each patch
    window_of = np.array([(p // 8 // 4) * 2 + p % 8 // 4 for p in range(64)])
    for row in sources:
        for token in np.unique(row):
            assert len(set(window_of[row == token])) == 1
    assert max(np.bincount(row).max() for row in sources) > 1  # some tokens did merge
    # Pruning and merging composed in one pass manager: ONNX Runtime equals the twin the manager kept in step.
    result = PassManager([PrunePass(prune_plan), TokenMergePass(plan)]).run(
        GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext(), twin=twin)
    assert max_abs(run_onnx(result.view.to_onnx(), images, BATCH), run_torch(result.twin, images)) <= FP32_TOLERANCE
    assert max_abs(run_torch(result.twin, images), run_torch(merged_twin, images)) == 0.0


# --- the merge itself ----------------------------------------------------------------------------------------
def tome_reference(x, metric, sizes, r):
    """ToMe's own formulation (bipartite_soft_matching + merge_wavg with scatter_reduce), kept-token order sorted."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
    unm_idx, src_idx = edge_idx[:, r:].sort(dim=1)[0], edge_idx[:, :r]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(t, mode):
        src, dst = t[:, ::2], t[:, 1::2]
        c = t.shape[-1]
        unm = src.gather(dim=-2, index=unm_idx.expand(-1, -1, c))
        moved = src.gather(dim=-2, index=src_idx.expand(-1, -1, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(-1, -1, c), moved, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    out = merge(x * sizes, "sum")
    new_sizes = merge(sizes, "sum")
    return out / new_sizes, new_sizes


@pytest.mark.parametrize("n,r", [(16, 5), (15, 7), (64, 20)])
def test_merge_matches_tome_reference(n, r):
    g = torch.Generator().manual_seed(n)
    x, metric = torch.randn(3, n, 8, generator=g), torch.randn(3, n, 6, generator=g)
    sizes = torch.randint(1, 4, (3, n, 1), generator=g).float()
    ours_x, ours_s, _ = bipartite_merge(x, metric, sizes, r)
    ref_x, ref_s = tome_reference(x, metric, sizes, r)
    assert ours_x.shape == (3, n - r, 8)
    assert max_abs(ours_x, ref_x) < 1e-5 and torch.equal(ours_s, ref_s)
    assert float(ours_s.sum()) == float(sizes.sum())  # no token is lost or counted twice


def test_ties_break_by_lower_index_in_twin_and_onnx():
    """Identical tokens make every similarity tie: twin and ONNX must still pick the same pairs."""
    twin = small_twin(depth=2)
    with torch.no_grad():
        twin.pos_embed.zero_()  # constant images -> all patch tokens identical -> all scores equal
    view, merged_twin, _ = merged(twin, TomeSchedule(r=6, skip=0))
    images = np.full((2, 3, 32, 32), 0.3, dtype=np.float32)
    assert max_abs(run_onnx(view.to_onnx(), images, BATCH), run_torch(merged_twin, images)) <= FP32_TOLERANCE


# --- the graph pass against the twin -------------------------------------------------------------------------
def test_r0_changes_nothing():
    twin = small_twin(depth=2)
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    before = onnx.load_from_string(view.to_onnx().SerializeToString())
    plan = resolve(TomeSchedule(r=0), view.spec)
    token_merge = TokenMergePass(plan)
    result = token_merge.run(view, PassContext())
    assert not result.modified and result.view is view and result.stats == {"merged_tokens": 0}
    assert result.view.to_onnx().graph == before.graph
    assert plan.tokens_out == [65, 65] and token_merge.apply_to_twin(twin) is twin


@pytest.mark.parametrize("distilled", [False, True])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_onnx_equals_twin_tiny(name, distilled):
    twin = small_twin(distilled=distilled)
    view, merged_twin, plan = merged(twin, SCHEDULES[name])
    images = images_for(twin)
    model = view.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    assert max_abs(run_onnx(model, images, BATCH), run_torch(merged_twin, images)) <= FP32_TOLERANCE
    assert max_abs(run_torch(merged_twin, images), run_torch(twin, images)) > 1e-4  # merging changed the function
    assert [b.tokens for b in view.spec.blocks] == plan.tokens == [b.tokens for b in merged_twin.spec.blocks]
    assert view.spec.blocks[-1].out_tokens == plan.tokens_out[-1]
    assert view.spec.prefix_tokens == (2 if distilled else 1)


def test_structure_static_no_scatter():
    twin = small_twin(depth=4)
    view, _, plan = merged(twin, SCHEDULES["dfe_lgtm"])
    view = CleanupPass().run(view, PassContext()).view
    model = view.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    counts = GraphView.from_onnx(model).op_counts()
    assert not any(op.startswith("Scatter") for op in counts)
    merging = [b for b in plan.blocks if b.merges]
    assert [b.index for b in merging] == [1, 2, 3]
    # Per merging block: TopK for the 2 best B, the r edges, and the kept A tokens (when any A token is kept).
    kept = sum(1 for b in merging if ((b.tokens - 1) // b.windows + 1) // 2 > b.per_window)
    assert counts["TopK"] == 2 * len(merging) + kept
    assert counts["GatherND"] >= 3 * len(merging) and counts["Equal"] == 2 * len(merging)
    dense = CleanupPass().run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext()).view.op_counts()
    assert counts["Gather"] - dense.get("Gather", 0) == 2  # window order of keys and tokens, in the first local block
    for node in model.graph.node:
        if node.op_type == "TopK":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["sorted"] == 1
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    k_values = [int(init[n.input[1]][0]) for n in model.graph.node if n.op_type == "TopK"]
    assert len(k_values) == counts["TopK"] and max(k_values) < 3840
    for vi in list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), vi.name
    assert len([n for n in model.graph.node if n.name.endswith(".tome.edges")]) == len(merging)
    # later blocks' reshapes carry their smaller token counts
    shape = init[next(n.input[1] for n in model.graph.node if n.name == "blocks.3.attn.q.split_heads")]
    assert shape[1] == plan.tokens[3]


def test_proportional_attention_adds_log_size_right_after_qk():
    """After the first merge, every block's score path is MatMul(Q·s, Kᵀ) -> Add(log size) -> Softmax: the scale
    lives in q, so the Add sits where TensorRT's fused attention takes it; earlier blocks keep MatMul -> Softmax."""
    twin = small_twin(depth=4)
    view, _, plan = merged(twin, SCHEDULES["dfe"])  # block 0 dense, block 1 merges first
    model = view.to_onnx()
    names = {n.name: n for n in model.graph.node}
    for i in range(4):
        if i > 1:
            assert score_path(model.graph, i) == ["MatMul", "Add", "Softmax"]
            add = names[f"blocks.{i}.attn.size_bias"]
            assert add.input[0] == names[f"blocks.{i}.attn.qk"].output[0]
            assert add.output[0] == names[f"blocks.{i}.attn.softmax"].input[0]
        else:
            assert score_path(model.graph, i) == ["MatMul", "Softmax"]


def test_proportional_attention_counts_a_merged_token_as_the_tokens_it_stands_for():
    """ToMe's proportional attention: a key of size s weighs as s identical keys. So a block that reads sizes gives
    every token the output the plain block gives it when each token is repeated ``size`` times (an independent
    reference: the graph is checked against this twin elsewhere, so a wrong bias in both would pass there)."""
    twin = small_twin()
    block, prefix = twin.blocks[1], twin.spec.prefix_tokens
    x = torch.randn(1, prefix + 6, twin.spec.emb, generator=torch.Generator().manual_seed(5))
    sizes = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0, 4.0])
    sized = MergingBlock(block, BlockMerge(1, prefix + 6, 1, 0, False), prefix, None, sized_in=True, sized_out=False)
    size_channel = torch.cat([torch.ones(prefix), sizes])[None, :, None]
    repeated = torch.cat([x[:, :prefix]] + [x[:, prefix + i:prefix + i + 1].expand(1, int(s), -1)
                                            for i, s in enumerate(sizes)], dim=1)
    first = [*range(prefix), *(prefix + int(sum(sizes[:i])) for i in range(len(sizes)))]
    with torch.no_grad():
        want = block(repeated)[:, first]
        assert max_abs(sized(torch.cat([x, size_channel], dim=-1)), want) < 1e-5
        assert max_abs(block(x), want) > 1e-2  # without the sizes the outputs differ: the check can fail


def state_of(twin):
    """What a twin transform must leave alone: block types, the spec and every tensor of the state."""
    return [type(b) for b in twin.blocks], twin.spec, {k: v.clone() for k, v in twin.state_dict().items()}


def test_pass_is_stateless_and_never_mutates_the_twin():
    twin = small_twin(distilled=True)
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    token_merge = TokenMergePass(resolve(SCHEDULES["dfe_lgtm"], view.spec))
    fields = copy.deepcopy(vars(token_merge))
    types, spec, state = state_of(twin)
    first = token_merge.apply_to_twin(twin)
    token_merge.run(view, PassContext())
    second = token_merge.apply_to_twin(twin)
    assert vars(token_merge) == fields
    assert [type(b) for b in twin.blocks] == types and twin.spec == spec
    assert twin.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in twin.state_dict().items())
    assert first is not twin and any(isinstance(b, MergingBlock) for b in first.blocks)
    images = images_for(twin)
    assert max_abs(run_torch(first, images), run_torch(second, images)) == 0.0
    with torch.no_grad():  # the new twin shares no tensor with its input
        first.blocks[1].attn.q.weight.add_(1.0)
    assert torch.equal(twin.blocks[1].attn.q.weight, state["blocks.1.attn.q.weight"])


def test_onnx_equals_twin_digits(digits_reference, digits_test):
    model, _ = digits_reference
    twin = canonicalize(model)
    images = digits_test.images[:32].numpy()
    for schedule in (TomeSchedule(r=3, skip=0), TomeSchedule(r=4), TomeSchedule(r=4, window=2, transition=2)):
        view, merged_twin, plan = merged(twin, schedule, batch=8)
        assert max_abs(run_onnx(view.to_onnx(), images, 8), run_torch(merged_twin, images)) <= FP32_TOLERANCE
    sources = trace_sources(merged_twin, torch.from_numpy(images[:2]))
    assert sources.shape == (2, 64) and len(torch.unique(sources[0])) == plan.tokens_out[-1] - 1


# --- composition with precision typing ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tome", "dfe_lgtm"])
def test_fp16_typed_merge_equals_fp16_twin(name):
    """The merge subgraph's Cast(to=FLOAT) and ConstantOfShape are retyped with the graph (defect 1)."""
    twin = small_twin()
    view, merged_twin, _ = merged(twin, SCHEDULES[name])
    assert {"Cast", "ConstantOfShape"} <= set(view.op_counts())
    fp16 = PrecisionTypingPass(PrecisionPlan())
    model = fp16.run(view, PassContext()).view.to_onnx()
    onnx.checker.check_model(model, full_check=True)  # strict shape inference: one float32 Cast would fail here
    readers = {}
    for node in model.graph.node:
        for name_in in node.input:
            readers.setdefault(name_in, []).append(node.op_type)
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Cast" and attrs["to"] == onnx.TensorProto.FLOAT:  # only into the kept fp32 ops
            assert node.output[0] in outputs or set(readers[node.output[0]]) <= {"LayerNormalization", "Softmax"}
        if node.op_type == "ConstantOfShape":
            assert attrs["value"].data_type == onnx.TensorProto.FLOAT16
    images = images_for(twin)
    assert max_abs(run_onnx(model, images, BATCH), run_torch(fp16.apply_to_twin(merged_twin), images)) <= FP16_TOLERANCE


def assert_picture_from_stage_twin(result, model, tmp_path):
    """token_merge.png is what the merged fp32 twin of the tome stage draws (never the final twin's picture)."""
    import matplotlib.image

    plan = result.plans["tome"]
    assert result.manifest["token_merge"]["picture"] == "token_merge.png"
    expected = tmp_path / "expected.png"
    merge_figure(expected, [(TokenMergePass(plan).apply_to_twin(canonicalize(model)), describe(plan))])
    drawn = matplotlib.image.imread(result.out / "token_merge.png")
    assert np.array_equal(drawn, matplotlib.image.imread(expected))


@pytest.mark.parametrize("window", [None, 2])
def test_compile_tome_fp16_verifies_and_draws_the_merged_fp32_twin(tmp_path, window):
    """Defect 1 (tome + fp16 died in onnx shape inference) and defect 4 (the picture drew the final fp16 twin)."""
    from vitrt import compile as vitrt_compile

    model = tiny_vit(depth=4, patch_size=4)
    result = vitrt_compile(model, tmp_path / "out", tome="8", lgtm_window=window, precision="fp16", verify=True,
                           batch=BATCH, quiet=True)
    m = result.manifest
    assert m["verify"]["ok"] and m["verify"]["reference"] == "torch twin"
    assert m["verify"]["tolerance"] == FP16_TOLERANCE
    assert [p["name"] for p in m["passes"] if p["modified"]][:2] == ["token_merge", "precision_typing"]
    assert m["token_merge"]["r"][0] == (16 if window else 8) and m["precision"]["activations"] == "fp16"
    assert_picture_from_stage_twin(result, model, tmp_path)


def test_compile_tome_int8_draws_the_merged_fp32_twin(tmp_path):
    """Defect 4 with the fake-quant twin as the final one."""
    from vitrt import compile as vitrt_compile

    model = tiny_vit(depth=4, patch_size=4)
    result = vitrt_compile(model, tmp_path / "out", tome="8", precision="int8", calib_data="synthetic",
                           calib_images=16, verify=True, batch=BATCH, quiet=True)
    assert result.manifest["verify"]["ok"] and "quantization" in result.manifest
    assert_picture_from_stage_twin(result, model, tmp_path)


def test_compile_skips_merging_where_attention_was_pruned(tmp_path):
    from vitrt import compile as vitrt_compile

    model = tiny_vit(depth=4, patch_size=4)
    plan_path = tmp_path / "plan.json"
    without_attention(canonicalize(model), 2).save(plan_path)
    result = vitrt_compile(model, tmp_path / "out", prune_plan=plan_path, tome="4", verify=True, batch=BATCH,
                           bench=True, bench_iters=4, bench_warmup=1, quiet=True)
    m = result.manifest
    assert m["verify"]["ok"] and m["token_merge"]["r"] == [4, 4, 0, 4]
    assert [b["heads"] for b in m["spec_after"]["blocks"]] == [2, 2, 0, 2]
    # --bench: the finish hook records the compile's side-by-side dense timing (the pass times nothing).
    measured = json.loads((result.out / "token_merge_bench.json").read_text())
    assert measured == m["token_merge"]["measured"]
    assert measured["speedup"] == m["latency"]["versus_dense"]["speedup"] > 0
    # it times the whole compile (pruned and merged) against the dense model, and says so; the FLOPs reduction
    # beside it is the whole compile's too, not merging's against the pruned model (review)
    assert measured["scope"] == "the whole compile (prune, tome) against the dense model"
    assert measured["flops_reduction"] == round(m["flops"]["before"] / m["flops"]["after"], 4)
    assert m["pruning"]["dense_latency"]["scope"] == measured["scope"]
    with pytest.raises(VitrtError, match="block 2 has no attention"):
        vitrt_compile(model, tmp_path / "bad", prune_plan=plan_path, tome_schedule="4,4,4,4", batch=BATCH,
                      quiet=True)
    assert not (tmp_path / "bad").exists()


# --- solvers --------------------------------------------------------------------------------------------------
def test_flops_solver():
    spec = small_twin(depth=12).spec
    plan = solve_flops(spec, 0.6)
    fraction = vit_flops(plan.apply_to_spec(spec)) / vit_flops(spec)
    assert fraction <= 0.6
    r = plan.schedule.r
    looser = resolve(TomeSchedule(r=r - 1), spec)
    assert vit_flops(looser.apply_to_spec(spec)) / vit_flops(spec) > 0.6
    one_line_error(lambda: solve_flops(spec, 0.01), "keeps")
    one_line_error(lambda: solve_flops(spec, 1.5), "fraction in")


def test_latency_solver_uses_the_table_token_axis(tmp_path):
    """On a table whose values are known (cost proportional to tokens, written in, not measured), the solver
    returns the least merging that meets the target."""
    import numpy as np

    from vitrt.benchmarks.lut_build import grid_of, grid_points, new_table
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.spec import BlockSpec, ViTSpec
    from vitrt.transforms.tome.solve import solve_latency

    grid = grid_of("tiny")
    table = new_table("ort", "cpu", 1, grid, "tiny", "fp32", "dense", None)
    for name, part in table.tables["fp32/dense"].items():
        for index, point in grid_points(grid, name):
            part.ms[index] = 0.01 * point.get("tokens", point.get("patches", 1)) * point.get("emb", 64)  # linear: no emb
    path = tmp_path / "lut.json"
    table.save(path)
    block = BlockSpec(heads=2, qk=32, v=32, mlp=128, tokens=17, scale=32 ** -0.5)
    spec = ViTSpec(emb=64, patch=8, img=32, in_chans=3, prefix_tokens=1, num_classes=10, blocks=(block,) * 4)
    table = LatencyTable.load(path)
    plan = solve_latency(spec, 0.9, path, skip=0)
    dense = table.model_ms(spec, clamp=True)
    assert plan.schedule.r > 0 and table.model_ms(plan.apply_to_spec(spec), clamp=True) / dense <= 0.9
    looser = resolve(TomeSchedule(r=plan.schedule.r - 1, skip=0), spec)
    assert table.model_ms(looser.apply_to_spec(spec), clamp=True) / dense > 0.9
    assert np.isfinite(dense)
    one_line_error(lambda: solve_latency(spec, 0.9, None), "needs --tome-lut")


# --- CLI ------------------------------------------------------------------------------------------------------
def test_cli_flags(tmp_path, capsys):
    from vitrt.cli import main

    out = tmp_path / "out"
    args = ["compile", "vit_tiny_patch16_224", "--img-size", "64", "-o", str(out), "--quiet"]
    assert main(args + ["--tome", "2", "--lgtm-window", "2", "--verify"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["token_merge"]
    assert record["tokens"] == [b["tokens"] for b in manifest["spec_after"]["blocks"]]
    assert record["windows"][:4] == [1, 1, 4, 1] and record["flops_after"] == manifest["flops"]["after"]
    assert manifest["verify"]["ok"] and (out / "token_merge.png").stat().st_size > 1000
    capsys.readouterr()
    bad = main(args + ["--force", "--tome-schedule", "0,0,9,0,0,0,0,0,0,0,0,0"])
    err = capsys.readouterr().err.strip()
    assert bad == 2 and err.count("\n") == 0 and "block 2" in err
    assert main(args + ["--force", "--tome", "2", "--tome-flops", "0.5"]) == 2
    assert "at most one of" in capsys.readouterr().err
    assert main(args + ["--force", "--dfe-skip", "1"]) == 2
    assert "need --tome" in capsys.readouterr().err


def test_tome_bench_cli(tmp_path, capsys):
    """``vitrt tome-bench`` is wired to its config class; bad targets are one line, exit 2, nothing written."""
    from vitrt.cli import main

    with pytest.raises(SystemExit) as info:
        main(["tome-bench", "--help"])
    assert info.value.code == 0 and "--no-throughput" in capsys.readouterr().out
    out = tmp_path / "sweep"
    assert main(["tome-bench", "--targets", "0.6,1.5", "--no-throughput", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--targets" in err and not out.exists()
    assert main(["tome-bench", "--targets", "0.05", "--no-throughput", "-o", str(out)]) == 2
    assert "--targets 0.05: ToMe keeps at least" in capsys.readouterr().err and not out.exists()  # not --tome-flops
    assert main(["tome-bench", "--no-throughput"]) == 2  # no default: it wrote into ./benchmarks/results
    assert "no output directory" in capsys.readouterr().err
    assert main(["tome-bench", "--model", "swin_tiny_patch4_window7_224", "-o", str(out)]) == 2  # before the sweep
    assert "unsupported architecture" in capsys.readouterr().err and not out.exists()
    assert main(["tome-bench", "--no-throughput"]) == 2
    assert "no output directory" in capsys.readouterr().err
    out.mkdir()
    (out / "tome_sweep.md").write_text("the recorded sweep")
    assert main(["tome-bench", "--no-throughput", "-o", str(out)]) == 2
    assert "already holds tome_sweep.md: pass --force" in capsys.readouterr().err
    assert (out / "tome_sweep.md").read_text() == "the recorded sweep"


def test_verification_pins_merge_decisions_so_reduced_precision_near_ties_do_not_fail_it(digits_reference, tmp_path):
    """In fp16 a near tie can go one way in the graph and the other in the twin (one image then differs by a whole
    merge: 0.33 against 0.05 here, before verification pinned the decisions). Verification runs the twin with the
    graph's decisions, so what it checks is the arithmetic, and counts the images that would have merged
    differently."""
    import vitrt
    from vitrt.compiler.verify import compare, decision_modules

    result = vitrt.compile(digits_reference[0], tmp_path / "out", tome="4", precision="fp16", verify=True, seed=4,
                           quiet=True)
    verify = result.manifest["verify"]
    assert verify["ok"] and verify["max_abs_err"] <= FP16_TOLERANCE and verify["decision_flips"] >= 1
    model, twin = onnx.load(str(result.onnx_path)), result.twin
    deciders = decision_modules(twin)
    assert [m.decision_tensors[0] for m in deciders] == [f"blocks.{i}.tome.edges.indices" for i in range(12)
                                                          if result.manifest["token_merge"]["r"][i]]
    images = verification_inputs(twin.spec, 1, seed=4, count=2)
    unpinned = float(np.max(np.abs(run_onnx(model, images, 1) - run_torch(twin, images))))
    pinned = compare(model, twin, images, 1, "torch twin", FP16_TOLERANCE)
    assert pinned.ok and pinned.decision_flips >= 1 and unpinned > FP16_TOLERANCE  # the flip that pinning sets apart
    assert all(m.forced is None and m.disagree is None for m in deciders)  # verification leaves the twin as it was


def test_the_built_artifact_is_verified_against_the_graph(digits_reference, tmp_path):
    """--verify checks what ships (ONNX Runtime's optimised graph) as well as the graph it was built from; a
    runtime that changed the result fails the check, except for merge decisions tipped in reduced precision."""
    import vitrt
    from vitrt.compiler.verify import verify_artifact

    result = vitrt.compile(digits_reference[0], tmp_path / "out", tome="4", verify=True, quiet=True)
    artifact = result.manifest["verify"]["artifact"]
    assert artifact["ok"] and artifact["max_abs_err"] <= artifact["tolerance"] == FP32_TOLERANCE
    model = onnx.load(str(result.onnx_path))
    images = verification_inputs(result.twin.spec, 1, count=2)

    class Shifted:  # a runtime whose rewrites moved every logit
        def infer(self, x):
            return run_onnx(model, x, 1) + 0.5

    assert not verify_artifact(Shifted(), model, images, 1, FP32_TOLERANCE, decisions=False)["ok"]
    tipped = verify_artifact(Shifted(), model, images, 1, FP16_TOLERANCE, decisions=True)
    assert tipped["ok"] and "recorded, not failed" in tipped["note"]


def test_windows_are_listed_in_z_order():
    """Quad-tree (Z) order: each 2 x 2 group of windows is contiguous, row before column inside it."""
    assert quadtree_order(4, 1)[:8] == [0, 1, 4, 5, 2, 3, 6, 7]
    assert quadtree_order(4, 2)[:8] == [0, 1, 4, 5, 2, 3, 6, 7]  # window (0, 0) then (0, 1)


def test_the_solver_takes_a_target_met_exactly():
    """A FLOPs target equal to what r merges reach is met by that r (<=, not <): not by merging more."""
    twin = small_twin()
    for r in (2, 5):
        plan = resolve(TomeSchedule(r=r, skip=0), twin.spec)
        exact = vit_flops(plan.apply_to_spec(twin.spec)) / vit_flops(twin.spec)
        assert solve_flops(twin.spec, exact, skip=0).schedule.r == r


def test_a_ramp_over_one_merging_block_is_the_constant_r():
    """ToMe's ramp spreads r·(1 ± inflection) over the merging blocks; over a single block it is r itself (the
    step would divide by zero)."""
    assert requested_r(TomeSchedule(r=4, inflection=0.5, skip=11), 12) == ([0] * 11 + [4], 11)
    assert requested_r(TomeSchedule(r=4, inflection=0.5, skip=10), 12) == ([0] * 10 + [2, 6], 10)


def test_window_levels_stop_where_the_window_grid_side_turns_odd():
    """Only a 2 x 2 join of windows keeps them spatial: 14 / 2 = 7 windows a side is one level (ViT-B/16 at 224
    with --lgtm-window 2), 20 / 2 = 10 joins once to 5 and stops."""
    assert window_levels(14, 2) == [49]
    assert window_levels(20, 2) == [100, 25]
    assert window_levels(16, 2) == [64, 16, 4]


def test_near_duplicate_tokens_merge_into_the_closer_one_by_distance():
    """A0 has two candidates whose cosines both round to 1 in float32; the distance picks the truly closer B1 (as
    the ONNX graph's ArgMin does), not the lower index."""
    metric = torch.tensor([[[1.0, 0, 0], [1.0, 2e-4, 0], [0, 0, 1.0], [1.0, 1e-4, 0]]])  # A0, B0, A1, B1
    x = torch.tensor([[[0.0], [10.0], [20.0], [30.0]]])
    new_x, sizes, _ = bipartite_merge(x, metric, torch.ones(1, 4, 1), r=1)
    assert new_x.flatten().tolist() == [20.0, 10.0, 15.0] and sizes.flatten().tolist() == [1.0, 1.0, 2.0]
