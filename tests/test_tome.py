"""Static token merging (issue 5): schedule, torch twin, graph pass, CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import max_abs, tiny_vit
from vitrt.transforms.tome.twin import apply_plan, bipartite_merge, trace_sources
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import PassContext
from vitrt.compiler.verify import FP32_TOLERANCE, run_onnx, run_torch
from vitrt.compiler.cleanup import CleanupPass
from vitrt.transforms.tome.graph_pass import MergeRequest, TokenMergePass, rewrite
from vitrt.transforms.tome.schedule import TomeSchedule, parse_per_block, parse_r, quadtree_order, resolve
from vitrt.transforms.tome.solve import solve_flops
from vitrt.compiler.cost import vit_flops

SCHEDULES = {
    "tome": TomeSchedule(r=4, skip=0),
    "dfe": TomeSchedule(r=5, skip=1),
    "dfe_lgtm": TomeSchedule(r=4, skip=1, window=2, transition=2),
    "capped": TomeSchedule(r=40, skip=0),  # every block merges half its tokens: no A token is kept
}


def small_twin(distilled=False, depth=4):
    """img 32, patch 4: an 8x8 grid (64 patches), enough tokens for windows of 4x4 and 2x2."""
    return canonicalize(tiny_vit(distilled=distilled, depth=depth, patch_size=4))


def merged(twin, schedule, batch=2):
    view = GraphView.from_onnx(lower(twin, batch=batch))
    plan = resolve(schedule, view.spec)
    return rewrite(view, plan), apply_plan(copy.deepcopy(twin), plan), plan


# --- schedule -----------------------------------------------------------------------------------------------
def test_parse_and_json_round_trip():
    assert parse_r("13") == (13, 0.0) and parse_r("16,0.5") == (16, 0.5)
    assert parse_per_block("0,2,3") == (0, 2, 3)
    for bad in ("x", "1,2,3"):
        with pytest.raises(VitrtError):
            parse_r(bad)
    with pytest.raises(VitrtError, match="comma-separated"):
        parse_per_block("1,a")
    s = TomeSchedule(r=8, inflection=-0.5, skip=2, window=4, transition=1)
    assert TomeSchedule.from_json(s.to_json()) == s
    assert TomeSchedule.from_json(TomeSchedule(per_block=(0, 1)).to_json()).per_block == (0, 1)
    with pytest.raises(VitrtError, match="unknown field"):
        TomeSchedule.from_dict({"r": 1, "depth": 3})


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
    with pytest.raises(VitrtError) as info:
        resolve(TomeSchedule(per_block=(0, 20, 30, 0)), spec)  # block 2 has 44 mergeable tokens: at most 22
    message = str(info.value)
    assert "\n" not in message and message.startswith("block 2:")
    with pytest.raises(VitrtError, match="lists 3 values"):
        resolve(TomeSchedule(per_block=(1, 1, 1)), spec)
    with pytest.raises(VitrtError, match="does not divide"):
        resolve(TomeSchedule(r=2, window=3), spec)
    with pytest.raises(VitrtError, match="at most 2 local"):
        resolve(TomeSchedule(r=2, window=2, transition=3), spec)


def test_lgtm_windows_grow_and_are_contiguous():
    spec = small_twin(depth=6).spec
    plan = resolve(TomeSchedule(r=8, skip=1, window=2, transition=2), spec)
    assert [b.windows for b in plan.blocks] == [1, 16, 4, 1, 1, 1]
    assert [b.per_window for b in plan.blocks] == [0, 1, 2, 8, 8, 8]  # ceil(r / windows), the paper's rule
    order = quadtree_order(8, 2)
    assert sorted(order) == list(range(64))
    first = {(p // 8 // 2, p % 8 // 2) for p in order[:4]}
    quad = {(p // 8 // 4, p % 8 // 4) for p in order[:16]}
    assert len(first) == 1 and len(quad) == 1  # a window, and 2x2 windows, are contiguous


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
    assert max_abs(run_onnx(view.to_onnx(), images, 2), run_torch(merged_twin, images)) <= FP32_TOLERANCE


# --- the graph pass against the twin -------------------------------------------------------------------------
def test_r0_changes_nothing():
    twin = small_twin(depth=2)
    view = GraphView.from_onnx(lower(twin, batch=2))
    before = onnx.load_from_string(view.to_onnx().SerializeToString())
    p = TokenMergePass(MergeRequest(schedule=TomeSchedule(r=0)))
    ctx = PassContext(twin=twin)
    result = p.run(view, ctx)
    assert not result.modified and result.view is view
    assert result.view.to_onnx().graph == before.graph
    assert ctx.manifest["token_merge"]["tokens_out"] == [65, 65]


@pytest.mark.parametrize("distilled", [False, True])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_onnx_equals_twin_tiny(name, distilled):
    twin = small_twin(distilled=distilled)
    view, merged_twin, plan = merged(twin, SCHEDULES[name])
    images = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model = view.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    assert max_abs(run_onnx(model, images, 2), run_torch(merged_twin, images)) <= FP32_TOLERANCE
    assert max_abs(run_torch(merged_twin, images), run_torch(twin, images)) > 1e-4  # merging changed the function
    assert [b.tokens for b in view.spec.blocks] == plan.tokens
    assert view.spec.blocks[-1].out_tokens == plan.tokens_out[-1]
    assert view.spec.prefix_tokens == 2 if distilled else 1


def test_structure_static_no_scatter():
    twin = small_twin(depth=4)
    view, _, plan = merged(twin, SCHEDULES["dfe_lgtm"])
    view = CleanupPass().run(view, PassContext()).view
    model = view.to_onnx()
    ops = {n.op_type for n in model.graph.node}
    assert not any(op.startswith("Scatter") for op in ops)
    assert {"TopK", "GatherND", "MatMul", "Equal"} <= ops
    for node in model.graph.node:
        if node.op_type == "TopK":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["sorted"] == 1
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    k_values = [int(init[n.input[1]][0]) for n in model.graph.node if n.op_type == "TopK"]
    assert k_values and max(k_values) < 3840
    for vi in list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), vi.name
    merges = [n for n in model.graph.node if n.name.endswith(".tome.edges")]
    assert len(merges) == sum(1 for b in plan.blocks if b.merges)
    # later blocks' reshapes carry their smaller token counts
    shape = init[next(n.input[1] for n in model.graph.node if n.name == "blocks.3.attn.q.split_heads")]
    assert shape[1] == plan.tokens[3]


def test_onnx_equals_twin_digits(digits_reference, digits_test):
    model, _ = digits_reference
    twin = canonicalize(model)
    images = digits_test.images[:32].numpy()
    for schedule in (TomeSchedule(r=3, skip=0), TomeSchedule(r=4), TomeSchedule(r=4, window=2, transition=2)):
        view, merged_twin, plan = merged(twin, schedule, batch=8)
        assert max_abs(run_onnx(view.to_onnx(), images, 8), run_torch(merged_twin, images)) <= FP32_TOLERANCE
    sources = trace_sources(merged_twin, torch.from_numpy(images[:2]))
    assert sources.shape == (2, 64) and len(torch.unique(sources[0])) == plan.tokens_out[-1] - 1


def test_flops_solver():
    spec = small_twin(depth=12).spec
    plan = solve_flops(spec, 0.6)
    fraction = vit_flops(plan.apply_to_spec(spec)) / vit_flops(spec)
    assert fraction <= 0.6
    r = plan.schedule.r
    looser = resolve(TomeSchedule(r=r - 1), spec)
    assert vit_flops(looser.apply_to_spec(spec)) / vit_flops(spec) > 0.6
    with pytest.raises(VitrtError, match="keeps"):
        solve_flops(spec, 0.01)


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
    assert main(args + ["--force", "--dfe-skip", "1"]) == 2
    assert "at most one of" in capsys.readouterr().err


def test_latency_solver_uses_the_table_token_axis():
    from pathlib import Path

    from vitrt.compiler.spec import BlockSpec, ViTSpec
    from vitrt.transforms.tome.solve import solve_latency

    table_path = Path(__file__).resolve().parents[1] / "benchmarks/results/lut_ort_coarse_b8_wall.json"
    if not table_path.exists():
        pytest.skip("no latency table in this checkout")
    from vitrt.compiler.lut import LatencyTable

    block = BlockSpec(heads=6, qk=64, v=64, mlp=1536, tokens=197, scale=0.125)
    spec = ViTSpec(emb=384, patch=16, img=224, in_chans=3, prefix_tokens=1, num_classes=1000, blocks=(block,) * 12)
    table = LatencyTable.load(table_path)
    plan = solve_latency(spec, 0.7, table_path)
    dense = table.model_ms(spec, clamp=True)
    assert table.model_ms(plan.apply_to_spec(spec), clamp=True) / dense <= 0.7
    looser = resolve(TomeSchedule(r=plan.schedule.r - 1), spec)
    assert table.model_ms(looser.apply_to_spec(spec), clamp=True) / dense > 0.7
    with pytest.raises(VitrtError, match="needs --tome-lut"):
        solve_latency(spec, 0.7, None)
