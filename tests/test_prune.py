"""Structural pruning (vitrt.transforms.prune): plan, gates, search, planner, the ONNX pass against the pruned
twin, the compile and the ``vitrt prune-plan`` command.

The common recipe: tiny timm ViTs; the expected structure (dims, op counts, weight shapes); ONNX Runtime
against the pruned twin within FP32_TOLERANCE (1e-4, max |logits| difference); the ONNX checker; the plan's
JSON round trip; the pass is stateless and its twin transform never mutates its input.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import DIGITS_LUT, max_abs, tiny_vit
from vitrt.calib.data import synthetic
from vitrt.cli import main
from vitrt.compiler.cost import vit_flops
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import FP32_TOLERANCE, PassContext, PassManager
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.verify import run_onnx, run_torch, verification_inputs
from vitrt.compiler.weights import parameter_state, state_initializers
from vitrt.transforms.base import PlanContext
from vitrt.transforms.prune import planner
from vitrt.transforms.prune.config import PruneConfig
from vitrt.transforms.prune.gates import gated_forward, hessian_importance, magnitude_importance, masks_to_gates, ones_gates
from vitrt.transforms.prune.graph_pass import PrunePass
from vitrt.transforms.prune.plan import BlockPlan, PlanError, PruningPlan, alignment_violations
from vitrt.transforms.prune.search import SearchConfig, revit_dims, revit_plan, search
from vitrt.transforms.prune.twin import apply_plan, prune_twin

BATCH = 2
CLI_MODEL = ["deit_tiny_patch16_224", "--img-size", "32", "--batch", str(BATCH)]  # emb 192, 12 blocks, 5 tokens
# A latency grid around CLI_MODEL's dims at img 32 (no preset has patch 16 with 4 patches).
CLI_GRID = {"emb": [96, 192], "heads": [1, 3], "qk": [32, 64], "v": [32, 64], "tokens": [5], "mlp": [384, 768],
            "patches": [4], "patch": 16, "num_classes": 1000}


def _twin(distilled=False, depth=3):
    return canonicalize(tiny_vit(distilled=distilled, depth=depth))


def _plan(spec, emb=None):
    """Block 0: one head, half the QK dims, 24 V dims, half the MLP; block 1: attention removed;
    block 2: MLP removed, QK/V 16."""
    plan = PruningPlan.keep_all(spec)
    blocks = list(plan.blocks)
    blocks[0] = BlockPlan((1,), tuple(range(0, 32, 2)), tuple(range(8, 32)), tuple(range(0, 256, 2)))
    blocks[1] = BlockPlan((), (), (), tuple(range(32, 64)))
    blocks[2] = BlockPlan((0, 1), tuple(range(16)), tuple(range(3, 19)), ())
    return dataclasses.replace(plan, blocks=tuple(blocks), emb=plan.emb if emb is None else emb).validate()


def _kept(plan):
    kept = {"emb": plan.emb}
    for i, b in enumerate(plan.blocks):
        kept.update({f"blocks.{i}.heads": b.heads, f"blocks.{i}.qk": b.qk, f"blocks.{i}.v": b.v,
                     f"blocks.{i}.mlp": b.mlp})
    return kept


def _prune(twin, plan, batch=BATCH):
    """Lower ``twin``, run PrunePass(plan) through the pass manager with the twin kept in step."""
    view = GraphView.from_onnx(lower(twin, batch=batch))
    return PassManager([PrunePass(plan)], check_properties=True).run(view, PassContext(), twin=twin)


def _state(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FewImages(PlanContext):
    """A PlanContext whose data sources (the real ones) are capped at a few images, to keep fine-tuning fast."""

    def data(self, source, split="train", limit=None, labelled=False):
        return super().data(source, split, limit=min(limit or 48, 48), labelled=labelled)


def _ctx(twin):
    return FewImages(target=TargetConfig(batch=BATCH), teacher=copy.deepcopy(twin))


# --- the graph pass against the twin ------------------------------------------------------------------
@pytest.mark.parametrize("distilled", [False, True])
def test_pruned_onnx_equals_pruned_twin(distilled):
    twin = _twin(distilled)
    plan = _plan(twin.spec, emb=tuple(sorted(tuple(range(0, 64, 2)) + (1, 3))))  # EMB pruned too (34, unaligned)
    result = _prune(twin, plan)
    view, pruned = result.view, result.twin
    spec = view.spec
    assert spec.emb == 34 and pruned.spec == spec
    assert [(b.heads, b.qk, b.v, b.mlp) for b in spec.blocks] == [(1, 16, 24, 128), (0, 0, 0, 32), (2, 16, 16, 0)]
    assert all(b.scale == pytest.approx(32 ** -0.5) for b in spec.blocks)  # original attention scale kept
    model = view.to_onnx()
    onnx.checker.check_model(model)
    counts = GraphView.from_onnx(model).op_counts()
    # block 0: q, k, v, qk, av, proj, fc1, fc2; block 1 (no attention): fc1, fc2; block 2 (no MLP): q, k, v, qk,
    # av, proj; then the head(s).
    assert counts["MatMul"] == 8 + 2 + 6 + (2 if distilled else 1)
    assert counts["Softmax"] == 2 and counts["LayerNormalization"] == 4 + 1
    graph = GraphView.from_onnx(model)
    assert tuple(graph.linear("blocks.0.attn.q").weight.shape) == (34, 16)
    assert tuple(graph.linear("blocks.0.attn.proj").weight.shape) == (24, 34)
    assert not graph.has_node("blocks.1.attn.q") and not graph.has_node("blocks.2.mlp.fc1")
    images = verification_inputs(twin.spec, BATCH, seed=1, count=2)
    assert max_abs(run_onnx(model, images, BATCH), run_torch(pruned, images)) <= FP32_TOLERANCE
    record = result.records[0]
    assert record.changes_function and record.tolerance == FP32_TOLERANCE
    assert alignment_violations(plan) == ["emb 34 is not a multiple of 16"]  # v 24, mlp 32, qk 16 are aligned
    blocks = list(plan.blocks)
    blocks[0] = BlockPlan(blocks[0].heads, blocks[0].qk[:8], blocks[0].v, blocks[0].mlp)  # a multiple of 8, below 16
    assert "block 0: qk 8 per head is not a multiple of 8 >= 16" in alignment_violations(
        dataclasses.replace(plan, blocks=tuple(blocks)))
    assert {k: record.stats[k] for k in ("emb", "alignment_violations", "attention_removed", "mlp_removed")} == \
        {"emb": 34, "alignment_violations": 1, "attention_removed": 1, "mlp_removed": 1}


def test_removal_is_exact_for_emb_keeping_plans():
    """With every EMB channel kept, the pruned model equals the original with the pruned gates at 0 — with biases
    that are not zero (timm initialises them to zero, which would hide a bias gated wrongly: a block keeping one
    of its two heads keeps its projection's bias)."""
    twin = _twin()
    with torch.no_grad():
        for name, param in twin.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    plan = _plan(twin.spec)
    result = _prune(twin, plan)
    images = verification_inputs(twin.spec, BATCH, seed=2, count=2)
    with torch.no_grad():
        gated = gated_forward(twin, masks_to_gates(twin.spec, _kept(plan)), torch.from_numpy(images)).numpy()
        dense = gated_forward(twin, ones_gates(twin.spec), torch.from_numpy(images)).numpy()
    assert max_abs(dense, run_torch(twin, images)) == 0.0  # gates at 1 are the identity
    assert max_abs(gated, run_torch(result.twin, images)) <= FP32_TOLERANCE
    assert max_abs(gated, run_onnx(result.view.to_onnx(), images, BATCH)) <= FP32_TOLERANCE
    assert max_abs(gated, dense) > 1e-2  # the plan did change the function


def test_keep_all_plan_leaves_the_graph_unmodified():
    twin = _twin(depth=2)
    result = _prune(twin, PruningPlan.keep_all(twin.spec))
    assert not result.records[0].modified and not result.changes_function
    assert result.twin is twin  # an unmodified graph keeps the twin as it was


def test_pass_is_stateless_and_apply_to_twin_never_mutates_its_input():
    twin = _twin()
    plan = _plan(twin.spec, emb=tuple(range(0, 64, 2)))
    weighted = plan.with_weights({name: value + 1.0 for name, value in parameter_state(prune_twin(twin, plan)).items()})
    for p in (PrunePass(plan), PrunePass(weighted)):
        attributes = dict(vars(p))
        models = [p.run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext()).view.to_onnx()
                  for _ in range(2)]
        assert vars(p) == attributes and p.plan is attributes["plan"]  # nothing kept between runs
        assert models[0].SerializeToString() == models[1].SerializeToString()
        before, spec = _state(twin), twin.spec
        new = p.apply_to_twin(twin)
        assert new is not twin and twin.spec == spec and _same_state(_state(twin), before)
        assert new.spec == plan.pruned_spec(spec)
    assert _same_state(_state(PrunePass(weighted).apply_to_twin(twin)),
                       {k: torch.from_numpy(np.asarray(v)) for k, v in weighted.weights.items()})
    assert PrunePass(plan).tolerance() == FP32_TOLERANCE


# --- importance and search ------------------------------------------------------------------------------
def test_importance_is_squared_gate_gradient():
    """eq. 6: the head score equals (Σ w·∂L/∂w)² over the head's weights, computed independently."""
    twin = _twin()
    data = synthetic(32, 8, seed=3)
    scores = hessian_importance(twin, data, batch_size=8, batches=1)
    twin.zero_grad()
    images = data.images
    with torch.no_grad():
        target = twin(images).argmax(1)
    loss = torch.nn.functional.cross_entropy(twin(images), target)  # KL term is 0 with gradient 0 at g = 1
    loss.backward()
    attn = twin.blocks[1].attn
    rows = slice(32, 64)  # head 1
    total = sum((layer.weight.grad[rows] * layer.weight[rows]).sum() + (layer.bias.grad[rows] * layer.bias[rows]).sum()
                for layer in (attn.q, attn.k, attn.v))
    total = total + (attn.proj.weight.grad[:, rows] * attn.proj.weight[:, rows]).sum()
    assert float(scores["blocks.1.heads"][1]) == pytest.approx(float(total.detach()) ** 2, rel=1e-3)
    magnitude = magnitude_importance(twin)
    s = twin.spec.blocks[1].scale  # the twin's q carries the attention scale; magnitude counts the model's own q
    expected = sum(float(((layer.weight[rows].detach() / f) ** 2).sum() + ((layer.bias[rows].detach() / f) ** 2).sum())
                   for layer, f in ((attn.q, s), (attn.k, 1.0), (attn.v, 1.0)))
    expected += float((attn.proj.weight[:, rows].detach() ** 2).sum())
    assert float(magnitude["blocks.1.heads"][1]) == pytest.approx(expected, rel=1e-4)


def _flops_latency(spec):
    """An analytic latency model: FLOPs (what a LUT would replace with measured milliseconds)."""
    return float(vit_flops(spec))


def _search(twin, target=0.5, method="hessian", seed=0):
    data = synthetic(32, 32, seed=seed)
    if method == "hessian":
        importance = lambda kept: hessian_importance(twin, data, kept=kept, batch_size=16, batches=2, seed=seed)  # noqa: E731
    else:
        importance = lambda kept: magnitude_importance(twin, kept)  # noqa: E731
    return search(twin.spec, importance, _flops_latency, SearchConfig(target=target, rounds=3))


def test_search_rescores_importance_on_the_way_and_stops_at_the_target():
    """Importance is scored again as the model shrinks (NViT's iterative pruning: ``rounds`` times on the way), and
    the search stops at the first structure at or under the target."""
    twin = _twin()
    calls = []

    def importance(kept):
        calls.append(1)
        return magnitude_importance(twin, kept)

    result = search(twin.spec, importance, _flops_latency, SearchConfig(target=0.5, rounds=3))
    assert 2 <= len(calls) <= 3 + 1
    at_target = search(twin.spec, lambda kept: magnitude_importance(twin, kept), _flops_latency,
                       SearchConfig(target=result.predicted_ms / result.dense_ms, rounds=3))
    assert at_target.steps == result.steps  # a target met exactly stops there, not one removal later


def test_eta_weighs_the_latency_a_removal_saves_against_its_importance():
    """NViT eq. 7: a unit's score is its importance less eta times the latency it saves. At eta 0 the least
    important unit goes (here 16 MLP channels); at a large eta the one that saves the most (16 EMB channels)."""
    twin = _twin()
    one_step = [search(twin.spec, lambda kept: magnitude_importance(twin, kept), _flops_latency,
                       SearchConfig(target=0.999, eta=eta, rounds=1)) for eta in (0.0, 1e3)]
    assert [r.steps for r in one_step] == [1, 1]
    assert one_step[0].removed["mlp"] == 1 and one_step[1].removed["emb"] == 1
    assert one_step[1].predicted_ms < one_step[0].predicted_ms


def test_search_meets_target_and_alignment_and_is_deterministic():
    twin = _twin()
    result = _search(twin)
    plan = result.plan
    assert result.predicted_ms <= 0.5 * result.dense_ms
    assert _flops_latency(plan.pruned_spec(twin.spec)) == result.predicted_ms
    assert alignment_violations(plan) == []
    for b in plan.pruned_spec(twin.spec).blocks:
        assert b.heads == 0 or (b.qk % 8 == 0 and b.qk >= 16 and b.v % 8 == 0 and b.v >= 16)
        assert b.mlp % 16 == 0
    assert len(plan.emb) % 16 == 0
    again = _search(twin).plan
    assert again.to_json() == plan.to_json()  # bit-identical from the same inputs and seed
    pruned = _prune(twin, plan)
    images = verification_inputs(twin.spec, BATCH, seed=4)
    assert max_abs(run_onnx(pruned.view.to_onnx(), images, BATCH), run_torch(pruned.twin, images)) <= FP32_TOLERANCE


def test_search_fixes_unaligned_dims_first():
    twin = canonicalize(tiny_vit(depth=2, embed_dim=72, num_heads=3, mlp_ratio=3.0))  # qk 24, mlp 216, emb 72
    plan = _search(twin, target=0.9, method="magnitude").plan
    assert alignment_violations(plan) == []


def test_revit_dims_follow_table6():
    from vitrt.compiler.models import load_timm_model

    spec = canonicalize(load_timm_model("deit_small_patch16_224")).spec
    dims = revit_dims(spec)
    assert dims[0] == {"heads": 4, "qk": 16, "v": 64, "mlp": 1152}  # ε = 1: 384/100 -> 4, 384/20 -> 16, 384·3
    assert dims[5] == {"heads": 6, "qk": 40, "v": 64, "mlp": 1536}  # ε = 2, capped at DeiT-S's own dims
    assert [d["qk"] for d in dims] == [16] * 3 + [40] * 6 + [16] * 3
    twin = _twin(depth=4)
    scores = magnitude_importance(twin)
    plan = revit_plan(twin.spec, scores)
    assert [len(b.mlp) for b in plan.blocks] == [192, 256, 256, 192]
    head = int(torch.argmax(scores["blocks.0.heads"]))
    assert plan.blocks[0].heads == (head,)  # importance chooses the survivor


# --- the plan as data -----------------------------------------------------------------------------------
def test_plan_json_round_trip_and_refusals(tmp_path):
    twin = _twin()
    plan = _plan(twin.spec, emb=tuple(range(48)))
    path = tmp_path / "plan.json"
    plan.save(path)
    assert PruningPlan.load(path) == plan and PruningPlan.load(path).weights is None
    assert PruningPlan.from_dict(json.loads(plan.to_json())) == plan
    data = json.loads(path.read_text())
    assert PruningPlan.from_dict({**data, "format": 1}) == plan  # indices only: still valid after the scale fold

    def refused(mutate, message):
        bad = json.loads(json.dumps(data))
        mutate(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(PlanError, match=message) as info:
            PruningPlan.load(path)
        assert "\n" not in str(info.value)

    refused(lambda d: d.pop("format"), "has no 'format': it is not a vitrt pruning plan; make one with vitrt "
                                       "prune-plan")
    refused(lambda d: d.update(format=9), "format 9 is not supported")
    refused(lambda d: d["blocks"].update({"7": d["blocks"]["0"]}), "unknown block '7'")
    refused(lambda d: d["blocks"]["0"].update({"mlp": [0, 300]}), "index 300 is out of range 0..255")
    refused(lambda d: d["blocks"]["2"].update({"qk": [0, 0, 1]}), "index 0 is listed twice")
    refused(lambda d: d.update({"emb": [0, 64]}), "out of range 0..63")
    refused(lambda d: d["blocks"]["1"].update({"qk": [1, 2]}), "removes every head but keeps qk/v")
    refused(lambda d: d["blocks"].pop("2"), "no entry for block 2")
    refused(lambda d: d["dims"].update({"emb": 12}), "'dims' disagree")
    refused(lambda d: d.update({"format": 3}), "format 3 is not supported")
    refused(lambda d: d.update({"format": 1, "weights_file": "plan.npz"}), "before vitrt folded the attention scale")
    refused(lambda d: d.update({"weights_file": "missing.npz"}), "cannot read the pruning plan's fine-tuned weights")
    refused(lambda d: d.update({"weights_file": "../elsewhere.npz"}), "must name a .npz file beside the plan")
    path.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        PruningPlan.load(path)
    other = _twin(depth=2)
    with pytest.raises(PlanError, match="made for 3 blocks, the model has 2"):
        plan.check_matches(other.spec)
    wide = canonicalize(tiny_vit(depth=3, mlp_ratio=2.0))
    with pytest.raises(PlanError, match="heads/qk/v/mlp 2/32/32/256, the model's block 0 has 2/32/32/128"):
        plan.check_matches(wide.spec)


def test_fine_tuned_plan_weights_round_trip_beside_the_json(tmp_path):
    twin = _twin()
    plan = _plan(twin.spec, emb=tuple(range(0, 64, 2)))
    weights = {name: value * 2.0 for name, value in parameter_state(prune_twin(twin, plan)).items()}
    path = tmp_path / "plan.json"
    plan.with_weights(weights).save(path)
    assert json.loads(path.read_text())["weights_file"] == "plan.npz"
    loaded = PruningPlan.load(path)
    assert loaded == plan and loaded.weights.keys() == weights.keys()
    assert all(np.array_equal(loaded.weights[k], weights[k]) for k in weights)
    plan.save(path)  # the same path without weights: the stale .npz must not come back with it
    assert not (tmp_path / "plan.npz").exists() and PruningPlan.load(path).weights is None


# --- the planner -----------------------------------------------------------------------------------------
def test_fine_tuned_plan_weights_reach_graph_and_twin(tmp_path):
    """planner.plan with --finetune-epochs 1 (synthetic data, a few images): the plan carries the fine-tuned
    weights; the pass writes them into the ONNX and the twin transform loads them; the input twin is untouched."""
    twin = _twin()
    plan = _plan(twin.spec, emb=tuple(range(0, 64, 2)))
    plan.save(tmp_path / "plan.json")
    before = _state(twin)
    tuned = planner.plan(twin, _ctx(twin), PruneConfig(plan=tmp_path / "plan.json", finetune_epochs=1))
    assert _same_state(_state(twin), before)  # the planner never modifies the twin it plans on
    assert tuned == plan and tuned.meta["finetune"]["epochs"] == 1 and tuned.meta["source"] == str(tmp_path / "plan.json")
    sliced = parameter_state(prune_twin(twin, plan))
    assert tuned.weights.keys() == sliced.keys()
    assert any(not np.array_equal(tuned.weights[k], sliced[k]) for k in sliced)  # fine-tuning changed weights
    result = _prune(twin, tuned)
    assert _same_state(_state(result.twin), {k: torch.from_numpy(v) for k, v in tuned.weights.items()})
    graph = result.view.graph.tensors()
    for name, value in state_initializers(tuned.weights).items():
        assert np.array_equal(graph[name].values, value), name
    images = verification_inputs(twin.spec, BATCH, seed=6)
    assert max_abs(run_onnx(result.view.to_onnx(), images, BATCH), run_torch(result.twin, images)) <= FP32_TOLERANCE
    # The plan written to OUT keeps its weights: compiling it again gives the same twin.
    tuned.save(tmp_path / "tuned.json")
    again = planner.plan(twin, _ctx(twin), PruneConfig(plan=tmp_path / "tuned.json"))
    assert _same_state(_state(apply_plan(twin, again)), _state(result.twin))


def test_planner_revit_and_report_fields():
    twin = _twin(depth=4)
    plan = planner.plan(twin, _ctx(twin), PruneConfig(revit=True, importance="magnitude"))
    assert plan.meta["source"] == "revit" and plan.weights is None
    assert plan == revit_plan(twin.spec, magnitude_importance(twin))
    fields = planner.report_fields(plan)
    assert fields["source"] == "revit" and fields["block_dims"] == plan.block_dims()
    assert fields["params"]["after"] < fields["params"]["before"] and "predicted_ms" not in fields  # no LUT


# --- the compile ------------------------------------------------------------------------------------------
def test_compile_with_plan(tmp_path, capsys):
    """vitrt.compile(MODEL, prune_plan=...): verified, manifest + plot written; a bad plan exits 2, one line."""
    from vitrt import compile as vitrt_compile

    model = tiny_vit(depth=3)
    plan = _plan(canonicalize(model).spec, emb=tuple(range(0, 64, 2)))
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path)
    before = _state(model)
    result = vitrt_compile(model, tmp_path / "out", prune_plan=plan_path, verify=True, batch=BATCH, quiet=True)
    assert _same_state(_state(model), before)
    manifest = result.manifest
    assert manifest["verify"]["ok"] and manifest["verify"]["reference"] == "torch twin"
    assert manifest["spec_after"]["emb"] == 32
    assert manifest["pruning"]["block_dims"][1] == {"heads": 0, "qk": 0, "v": 0, "mlp": 32}
    assert manifest["pruning"]["source"] == str(plan_path)
    assert manifest["params"]["after"] < manifest["params"]["before"]
    assert (result.out / "pruning_dims.png").stat().st_size > 1000
    assert PruningPlan.load(result.out / "pruning_plan.json") == plan
    bad = json.loads(plan_path.read_text())
    bad["blocks"]["0"]["heads"] = [5]
    plan_path.write_text(json.dumps(bad))
    capsys.readouterr()
    assert main(["compile", *CLI_MODEL, "-o", str(tmp_path / "bad"), "--prune-plan", str(plan_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "index 5 is out of range 0..1" in err
    assert not (tmp_path / "bad").exists()


def _timing():
    from vitrt.compiler.timing import Timing

    return Timing(warmup=1, iterations=2, min_seconds=0.005)


def test_compile_prune_with_a_real_tiny_latency_table(tmp_path):
    """--prune FRACTION --lut LUT end to end: a tiny table timed on ONNX Runtime steers the search."""
    from vitrt import compile as vitrt_compile
    from vitrt.benchmarks.lut_build import build_table
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.spec import ViTSpec

    lut = tmp_path / "tiny.json"
    build_table(lut, backend="ort", grid="tiny", batch=BATCH, timing=_timing())
    model = tiny_vit(depth=2, mlp_ratio=2.0)  # emb 64, 2 heads of 32, MLP 128: inside the tiny grid
    result = vitrt_compile(model, tmp_path / "out", prune=0.6, lut=lut, prune_samples=16, batch=BATCH, verify=True,
                           quiet=True)
    m = result.manifest
    pruning = m["pruning"]
    table = LatencyTable.load(lut)
    after = ViTSpec.from_dict(m["spec_after"])
    assert pruning["predicted_ms"] == pytest.approx(table.model_ms(after))
    assert pruning["predicted_ms"] <= 0.6 * pruning["dense_predicted_ms"] + 1e-9
    assert pruning["dense_predicted_ms"] == pytest.approx(table.model_ms(ViTSpec.from_dict(m["spec_before"])))
    assert pruning["alignment_violations"] == [] and m["verify"]["ok"]
    assert pruning["meta"]["importance"] == "hessian" and pruning["source"] == "search"
    # a hand-made plan (no search, no prediction of its own) is priced by the same table
    twin = canonicalize(model)
    halved = PruningPlan.keep_all(twin.spec)
    halved = dataclasses.replace(halved, blocks=(dataclasses.replace(halved.blocks[0], mlp=tuple(range(64))),
                                                 *halved.blocks[1:])).validate()
    halved.save(tmp_path / "halved.json")
    given = vitrt_compile(model, tmp_path / "given", prune_plan=tmp_path / "halved.json", lut=lut, batch=BATCH,
                          quiet=True, bench=True, bench_iters=2).manifest
    assert given["pruning"]["predicted_ms"] == pytest.approx(table.model_ms(ViTSpec.from_dict(given["spec_after"])))
    assert given["pruning"]["dense_predicted_ms"] == pytest.approx(pruning["dense_predicted_ms"])
    # The price is the table's at the plan's own dimensions. Whether half the MLP is cheaper is the machine's
    # business: two iterations per point on a shared 2-core CPU can time MLP 64 above MLP 128.
    assert [b["mlp"] for b in given["spec_after"]["blocks"]] == [64, 128]


# --- vitrt prune-plan --------------------------------------------------------------------------------------
def _compile_plan(plan_path, out, capsys) -> dict:
    """``vitrt compile CLI_MODEL --prune-plan PLAN --verify``; the manifest it wrote."""
    capsys.readouterr()
    assert main(["compile", *CLI_MODEL, "-o", str(out), "--prune-plan", str(plan_path), "--verify", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verify"]["ok"] and manifest["verify"]["max_abs_err"] <= FP32_TOLERANCE
    return manifest


def test_prune_plan_cli_revit(tmp_path, capsys):
    plan_path = tmp_path / "revit.json"
    assert main(["prune-plan", *CLI_MODEL, "--revit", "--importance", "magnitude", "-o", str(plan_path),
                 "--quiet"]) == 0
    assert f"-> {plan_path}" in capsys.readouterr().out
    plan = PruningPlan.load(plan_path)
    assert plan.meta["source"] == "revit" and alignment_violations(plan) == []
    manifest = _compile_plan(plan_path, tmp_path / "out", capsys)
    assert manifest["pruning"]["block_dims"] == plan.block_dims() and manifest["spec_after"]["emb"] == 192
    # An existing plan is kept unless --force; a missing -o and a missing mode are refused; all one line, exit 2.
    for argv, message in ((["--revit", "-o", str(plan_path)], "exists: pass --force"),
                          (["--revit"], "no output file: pass -o PLAN"),
                          (["-o", str(tmp_path / "none.json")], "needs --prune FRACTION (with --lut LUT) or --revit"),
                          (["--lut", str(DIGITS_LUT), "-o", str(tmp_path / "none.json")],  # not "--lut needs --bench"
                           "needs --prune FRACTION (with --lut LUT) or --revit")):
        assert main(["prune-plan", *CLI_MODEL, *argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "none.json").exists()


def test_prune_plan_cli_search_with_a_tiny_table(tmp_path, capsys):
    from vitrt.benchmarks.lut_build import build_table

    lut = tmp_path / "lut.json"
    build_table(lut, backend="ort", grid=CLI_GRID, batch=BATCH, timing=_timing())
    plan_path = tmp_path / "search.json"
    assert main(["prune-plan", *CLI_MODEL, "--prune", "0.9", "--lut", str(lut), "--prune-samples", "8",
                 "-o", str(plan_path), "--quiet"]) == 0
    plan = PruningPlan.load(plan_path)
    assert plan.meta["source"] == "search" and plan.meta["predicted_ms"] <= 0.9 * plan.meta["dense_predicted_ms"]
    assert alignment_violations(plan) == []
    manifest = _compile_plan(plan_path, tmp_path / "out", capsys)
    assert manifest["pruning"]["block_dims"] == plan.block_dims()
    assert manifest["params"]["after"] < manifest["params"]["before"]


# --- the benchmarks -----------------------------------------------------------------------------------------
def recorded_benchmark_commands() -> list[list[str]]:
    """Every ``python -m vitrt.benchmarks.pruning_*`` command recorded in benchmarks/results/pruning.md."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "pruning.md").read_text()
    text = text.replace("\\\n", " ")
    return [shlex.split(line)[2:] for line in re.findall(r"^python -m vitrt\.benchmarks\.pruning_\w+ .*$", text,
                                                         flags=re.M)]


@pytest.mark.parametrize("argv", recorded_benchmark_commands(), ids=lambda argv: argv[0])
def test_recorded_benchmark_commands_parse_into_their_configs(argv):
    import argparse
    import importlib

    from vitrt.compiler.options import add_arguments, from_args

    config_names = {"vitrt.benchmarks.pruning_speed": "PruningSpeedConfig",
                    "vitrt.benchmarks.pruning_digits": "PruningDigitsConfig"}
    config_cls = getattr(importlib.import_module(argv[0]), config_names[argv[0]])
    parser = argparse.ArgumentParser()
    add_arguments(parser, config_cls)
    config = from_args(config_cls, parser.parse_args(argv[1:])).validate()
    assert config.lut.name.startswith("lut_ort_") and config.target == 0.5 and config.batch == 8
    assert config.out is not None


def test_benchmark_without_a_table_is_refused_with_one_line(capsys):
    from vitrt.benchmarks import pruning_digits, pruning_speed

    for module in (pruning_speed, pruning_digits):
        assert module.main([]) == 2
        err = capsys.readouterr().err
        assert "pass --lut LUT" in err and err.strip().count("\n") == 0


def test_a_bias_gate_is_one_minus_the_product_of_its_branch_gates():
    """The output projection's bias survives while any head does: multiplier 1 − Π(1 − g) (½, ½ → ¾)."""
    from vitrt.transforms.prune.gates import gate_multipliers

    spec = canonicalize(tiny_vit()).spec
    gates = ones_gates(spec)
    gates["blocks.0.heads"] = torch.tensor([0.5, 0.5])
    gates["blocks.0.mlp"] = torch.full((256,), 0.5)
    multipliers = gate_multipliers(spec, gates)
    assert torch.allclose(multipliers["blocks.0.attn.proj.bias"], torch.full((64,), 0.75))
    assert torch.allclose(multipliers["blocks.0.mlp.fc2.bias"], torch.ones(64))  # 1 − ½²⁵⁶


def test_importance_reads_exactly_the_batches_asked_for():
    from vitrt.calib.digits import ImageSet

    twin = canonicalize(tiny_vit())
    data = ImageSet(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 10)
    sizes = []
    hook = twin.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    hessian_importance(twin, data, batch_size=8, batches=2)
    hook.remove()
    assert sizes == [8, 8]


def test_pruning_units_stop_at_the_sixteen_channel_floor():
    """EMB and per-head QK / V shrink in aligned units down to 16 channels, not below: emb 32 removes 16 at a time,
    heads of 24 remove 8 (24 → 16)."""
    from vitrt.transforms.prune.search import _State

    narrow = _State(canonicalize(tiny_vit(embed_dim=32, num_heads=1)).spec)
    assert narrow.unit_size(None, "emb") == 16
    odd = _State(canonicalize(tiny_vit(embed_dim=72, num_heads=3, mlp_ratio=3.0)).spec)
    assert odd.unit_size(0, "qk") == odd.unit_size(0, "v") == 8


def test_removing_the_last_head_costs_its_dimensions_importance():
    """A block's last head takes its QK and V dimensions with it: their importance counts, so an important last
    head is not removed for free even when its own gate scores nothing."""
    from vitrt.transforms.prune.gates import gate_sizes

    spec = canonicalize(tiny_vit(num_heads=1, depth=1)).spec

    def importance(kept):
        scores = {key: torch.ones(n) for key, n in gate_sizes(spec).items()}
        scores["blocks.0.heads"] = torch.zeros(1)
        scores["blocks.0.qk"] = torch.full((64,), 10.0)
        scores["blocks.0.v"] = torch.full((64,), 10.0)
        return scores
    result = search(spec, importance, _flops_latency, SearchConfig(target=0.999, eta=0.0, rounds=1))
    assert result.removed["heads"] == 0 and result.steps == 1
