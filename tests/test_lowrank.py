"""Low-rank approximation (vitrt.transforms.lowrank): the common recipe — tiny model, expected structure, ONNX
Runtime vs the twin at the fp32 tolerance, ONNX checker, the plan's round trip, a stateless pass and a twin transform
that never mutates its input — plus: full rank reproduces the dense model (<= 1e-4), the rank rules (energy, budget,
alignment, break-even), composition with pruning and token merging, refusals, fine-tuning on the shared trainer,
cost and latency-table accounting."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from conftest import max_abs, tiny_vit
from vitrt.compiler.cleanup import CleanupPass
from vitrt.compiler.cost import vit_flops, vit_params
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import FP32_TOLERANCE, PassContext, PassManager
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.verify import VerifyInstrument, run_onnx, run_torch, verification_inputs
from vitrt.transforms.base import PlanContext
from vitrt.transforms.lowrank import planner
from vitrt.transforms.lowrank.config import LowRankConfig
from vitrt.transforms.lowrank.graph_pass import LowRankPass
from vitrt.transforms.lowrank.plan import LowRankPlan, LowRankPlanError
from vitrt.transforms.lowrank.twin import LowRankLinear

BATCH = 2
LINEARS = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")


def twin_of(depth=2, **kwargs):
    return canonicalize(tiny_vit(depth=depth, **kwargs))


def plan_lowrank(twin, **options) -> LowRankPlan:
    config = LowRankConfig(**options).validate()
    return planner.plan(twin, PlanContext(target=TargetConfig(batch=BATCH), teacher=twin), config)


def run(twin, plan, *, verify=True):
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    images = verification_inputs(view.spec, BATCH, count=2)
    instruments = [VerifyInstrument(images, BATCH)] if verify else []
    result = PassManager([LowRankPass(plan), CleanupPass()], instruments, check_properties=True).run(view, twin=twin)
    return result, images


def test_full_rank_reproduces_the_dense_model():
    """Every block linear factored at full rank: the graph equals the dense twin within 1e-4 (the factorisation is
    exact up to float rounding), and equals the factored twin at the fp32 tolerance."""
    twin = twin_of()
    ranks = {f"blocks.{i}.{local}": min(twin.spec.linear_dims(f"blocks.{i}.{local}")[1:])
             for i in range(2) for local in LINEARS}
    plan = planner.plan_with_ranks(twin, ranks)
    result, images = run(twin, plan)
    model = result.view.to_onnx()
    onnx.checker.check_model(model)
    assert max_abs(run_onnx(model, images, BATCH), run_torch(twin, images)) <= 1e-4
    assert result.records[0].stats["verify_max_abs_err"] <= FP32_TOLERANCE
    assert result.records[0].stats["factored"] == 12


def test_structure_names_and_spec():
    """fc1 at rank 16: MatMul 'blocks.i.mlp.fc1.u' (U [64, 16]) feeds MatMul 'blocks.i.mlp.fc1' (V [16, 128]) and the
    bias Add; the spec records the ranks and the view's linear lookup finds the second factor."""
    twin = twin_of(mlp_ratio=2.0)
    plan = planner.plan_with_ranks(twin, {"blocks.0.mlp.fc1": 16, "blocks.1.mlp.fc2": 16})
    result, _ = run(twin, plan)
    view = result.view
    assert view.spec.ranks == {"blocks.0.mlp.fc1": 16, "blocks.1.mlp.fc2": 16}
    u, v = view.node("blocks.0.mlp.fc1.u"), view.linear("blocks.0.mlp.fc1")
    assert u.op == "MatMul" and tuple(u.inputs[1].shape) == (64, 16)
    assert tuple(v.weight.shape) == (16, 128) and v.matmul.inputs[0] is u.outputs[0]
    assert tuple(view.linear("blocks.1.mlp.fc2.u").weight.shape) == (128, 16)
    assert view.op_counts()["MatMul"] == GraphView.from_onnx(lower(twin, batch=BATCH)).op_counts()["MatMul"] + 2
    # cost: each factored layer holds r·(K + N) instead of K·N weights
    saved = 2 * (64 * 128 - 16 * (64 + 128))
    assert vit_params(view.spec) == vit_params(twin.spec) - saved
    assert vit_flops(view.spec) == vit_flops(twin.spec) - 2 * 17 * saved


def test_energy_rule_alignment_and_break_even():
    twin = twin_of(mlp_ratio=4.0)  # fc1 64 -> 256
    plan = plan_lowrank(twin, energy=0.5, layers="blocks.*.mlp.*", align=8)
    for layer in plan.layers:
        s = np.linalg.svd(twin.get_submodule(layer.name).weight.detach().double().numpy(), compute_uv=False)
        if layer.factored:
            assert layer.rank % 8 == 0 and layer.rank * (layer.k + layer.n) < layer.k * layer.n
            energy = np.cumsum(s ** 2) / np.sum(s ** 2)
            assert energy[layer.rank - 1] >= 0.5 and layer.energy == pytest.approx(energy[layer.rank - 1])
            assert layer.rank == 8 or energy[layer.rank - 9] < 0.5  # the smallest aligned rank that holds it
        else:
            assert layer.reason
    assert plan.factored()
    full = plan_lowrank(twin, energy=1.0, layers="blocks.*.mlp.*")
    assert not full.factored() and all("full rank" in layer.reason for layer in full.layers)
    assert "no layer factored" in full.notes()[0]


def test_budget_rule_fits_the_budget():
    twin = twin_of(mlp_ratio=4.0)
    plan = plan_lowrank(twin, budget=0.5, layers="blocks.*.mlp.*", align=8)
    summary = plan.summary()
    assert summary["params_after"] <= 0.5 * summary["params_before"]
    held = sum(plan.factors[f"{layer.name}.u"].size + plan.factors[f"{layer.name}.weight"].size if layer.factored
               else layer.k * layer.n for layer in plan.layers)  # the weights the factors really hold
    assert plan.factored() and summary["params_after"] == held
    looser = plan_lowrank(twin, budget=0.9, layers="blocks.*.mlp.*", align=8)
    assert looser.summary()["params_after"] >= summary["params_after"]
    with pytest.raises(VitrtError, match="even rank"):
        plan_lowrank(twin, budget=0.01, layers="blocks.*.mlp.*", align=16)


def test_truncated_graph_matches_its_twin_and_approximates_the_dense_model():
    twin = twin_of(mlp_ratio=4.0)
    plan = plan_lowrank(twin, energy=0.5, layers="blocks.*.mlp.*", align=8)  # random weights: a flat spectrum
    assert plan.factored()
    result, images = run(twin, plan)
    factored = LowRankPass(plan).apply_to_twin(twin)
    assert max_abs(run_onnx(result.view.to_onnx(), images, BATCH), run_torch(factored, images)) <= FP32_TOLERANCE
    assert 0 < max_abs(run_torch(factored, images), run_torch(twin, images))  # truncation changes the function


def test_plan_round_trips_and_is_validated(tmp_path):
    twin = twin_of()
    plan = plan_lowrank(twin, energy=0.6, align=8)
    again = LowRankPlan.from_dict(plan.to_dict(), plan.arrays())
    assert again.to_dict() == plan.to_dict() and again.ranks == plan.ranks
    for key, value in plan.factors.items():
        np.testing.assert_array_equal(again.factors[key], value)
    plan.save(tmp_path / "p.json")
    loaded = LowRankPlan.load(tmp_path / "p.json")
    assert loaded.to_dict() == plan.to_dict()
    name = plan.factored()[0].name
    with pytest.raises(LowRankPlanError, match="should be"):
        LowRankPlan.from_dict(plan.to_dict(), {k: v for k, v in plan.arrays().items() if k != f"factor/{name}.u"})
    other = twin_of(embed_dim=32)
    with pytest.raises(LowRankPlanError, match="planned as"):
        LowRankPass(plan).apply_to_twin(other)
    with pytest.raises(VitrtError, match="does not exist"):
        LowRankPlan.load(tmp_path / "missing.json")


def test_pass_is_stateless_and_the_twin_transform_never_mutates_its_input():
    twin = twin_of()
    before = copy.deepcopy(twin.state_dict())
    plan = plan_lowrank(twin, energy=0.6, align=8)
    pass_ = LowRankPass(plan)
    a = pass_.run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext()).view.to_onnx()
    b = pass_.run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext()).view.to_onnx()
    assert a.SerializeToString() == b.SerializeToString()
    factored = pass_.apply_to_twin(twin)
    assert factored is not twin and not twin.spec.ranks
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in before.items())
    assert isinstance(factored.get_submodule(plan.factored()[0].name), LowRankLinear)


def test_compile_with_pruning_and_token_merging(tmp_path):
    """Low rank after a pruned, merged twin: one compile, verified; the manifest's params count the factors."""
    from vitrt import compile as vitrt_compile
    from vitrt.transforms.prune.plan import PruningPlan

    model = tiny_vit(depth=3, patch_size=4, mlp_ratio=4.0)
    twin = canonicalize(model)
    keep = PruningPlan.keep_all(twin.spec)
    plan = PruningPlan(keep.emb[:48], tuple(b.__class__(b.heads, b.qk, b.v, b.mlp[:128]) for b in keep.blocks),
                       keep.original_emb, keep.original_blocks)
    plan.save(tmp_path / "prune.json")
    result = vitrt_compile(model, tmp_path / "out", prune_plan=tmp_path / "prune.json", tome="4", lowrank=0.7,
                           lowrank_align=8, verify=True, batch=BATCH, quiet=True)
    m = result.manifest
    assert m["verify"]["ok"] and m["lowrank"]["factored"] > 0
    assert [p["name"] for p in m["passes"]][:3] == ["prune", "token_merge", "lowrank"]
    assert m["spec_after"]["extra"]["lowrank"]["ranks"] == m["lowrank"]["ranks"]
    assert m["params"]["after"] < vit_params(plan.pruned_spec(twin.spec))
    assert (result.out / "lowrank_plan.json").is_file() and (result.out / "lowrank_plan.npz").is_file()
    again = vitrt_compile(model, tmp_path / "again", prune_plan=tmp_path / "prune.json", tome="4",
                          lowrank_plan=result.out / "lowrank_plan.json", batch=BATCH, quiet=True)
    assert (again.out / "model.onnx").read_bytes() == (result.out / "model.onnx").read_bytes()


@pytest.mark.parametrize("options, message", [
    ({"lowrank": 0.9, "precision": "int8"}, "at precision fp32"),
    ({"lowrank": 0.9, "sparsity": "2:4"}, "not masked"),
    ({"lowrank": 0.9, "lowrank_budget": 0.5}, "alternatives"),
    ({"lowrank": 1.5}, "fraction in"),
    ({"lowrank_finetune_epochs": 1}, "add lowrank"),
    ({"lowrank": 0.9, "lowrank_layers": "blocks.*.nothing"}, "matches no linear layer"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, options, message):
    from vitrt import compile as vitrt_compile

    with pytest.raises(VitrtError, match=message) as info:
        vitrt_compile(tiny_vit(), tmp_path / "out", batch=BATCH, quiet=True, **options)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_finetuning_trains_the_factors_on_the_shared_trainer():
    twin = twin_of(mlp_ratio=4.0)
    plan = plan_lowrank(twin, energy=0.5, layers="blocks.*.mlp.*", align=8, finetune_epochs=2, data="synthetic")
    record = plan.meta["finetune"]
    assert record["epochs"] == 2 and len(record["loss_per_epoch"]) == 2
    assert record["loss_per_epoch"][1] < record["loss_per_epoch"][0]
    untuned = plan_lowrank(twin, energy=0.5, layers="blocks.*.mlp.*", align=8)
    name = plan.factored()[0].name
    assert not np.array_equal(plan.factors[f"{name}.u"], untuned.factors[f"{name}.u"])
    result, images = run(twin, plan)  # the fine-tuned factors and weights reach the graph
    assert max_abs(run_onnx(result.view.to_onnx(), images, BATCH),
                   run_torch(LowRankPass(plan).apply_to_twin(twin), images)) <= FP32_TOLERANCE


def test_latency_table_prices_factored_layers(tmp_path):
    """model_ms adds lowrank(t, k, r, n) - linear(t, k, n) per factored layer; a table without those parts refuses."""
    from vitrt.benchmarks.lut_build import build_table
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.timing import Timing

    grid = {"emb": [64], "heads": [2], "qk": [32], "v": [32], "tokens": [17], "mlp": [128], "patches": [16],
            "patch": 8, "num_classes": 10, "features": [64, 128], "rank": [16, 32]}
    table = build_table(tmp_path / "t.json", grid=grid, batch=1, timing=Timing(warmup=1, iterations=2))
    twin = twin_of(mlp_ratio=2.0)
    plan = planner.plan_with_ranks(twin, {"blocks.0.mlp.fc1": 16})
    spec = plan.apply_to_spec(twin.spec)
    parts = table.tables["fp32/dense"]
    delta = parts["lowrank"].ms[0, 0, 0, 1] - parts["linear"].ms[0, 0, 1]  # tokens 17, k 64, rank 16, n 128
    assert table.model_ms(spec) == pytest.approx(table.model_ms(twin.spec) + delta, rel=1e-9)
    del table.tables["fp32/dense"]["lowrank"]
    with pytest.raises(VitrtError, match="no linear / lowrank"):
        table.model_ms(spec)
    assert LatencyTable.load(tmp_path / "t.json").tables["fp32/dense"].keys() >= {"linear", "lowrank"}


def test_a_rank_at_the_break_even_point_stays_dense():
    """rank · (k + n) == k · n saves no parameters and adds a MatMul: the layer is left dense."""
    from vitrt.transforms.lowrank.planner import choose

    even = choose("x", 16, 16, np.ones(16), energy=0.5, align=8)  # rank 8: 8 · 32 == 16 · 16
    assert even.rank == 0 and "saves nothing" in even.reason
    assert choose("x", 16, 16, np.ones(16), energy=0.25, align=4).rank == 4  # 4 · 32 < 256: factored


def test_a_low_rank_plan_applies_to_dense_layers_only():
    """A factored twin is refused by any low-rank plan (the earlier factorisation would be lost from the spec)."""
    from vitrt.transforms.lowrank.twin import factor_twin

    twin = twin_of()
    plan = planner.plan_with_ranks(twin, {"blocks.0.mlp.fc1": 16})
    factored = factor_twin(twin, plan)
    with pytest.raises(LowRankPlanError, match="already factored"):
        plan.check_matches(factored.spec)
    with pytest.raises(LowRankPlanError, match="already factored"):
        factor_twin(factored, planner.plan_with_ranks(twin, {"blocks.1.mlp.fc1": 16}))


def test_layer_patterns_skip_an_mlp_that_pruning_removed():
    """After a block lost its whole MLP, blocks.*.mlp.* plans the other blocks' MLPs, and a pattern naming only the
    removed one matches nothing."""
    import dataclasses

    spec = twin_of(depth=3).spec
    blocks = list(spec.blocks)
    blocks[1] = dataclasses.replace(blocks[1], mlp=0)
    pruned = spec.replace(blocks=tuple(blocks))
    assert planner.candidate_layers(pruned, "blocks.*.mlp.*") == [
        "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.2.mlp.fc1", "blocks.2.mlp.fc2"]
    with pytest.raises(VitrtError, match="'blocks.1.mlp.\\*' matches no linear layer"):
        planner.candidate_layers(pruned, "blocks.1.mlp.*")
