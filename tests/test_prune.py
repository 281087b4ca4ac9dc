"""Structural pruning (issue 4): plan, gates, search, the ONNX pass against the pruned twin, CLI."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest
import torch

from conftest import max_abs, tiny_vit
from vitrt.transforms.prune.gates import gated_forward, hessian_importance, magnitude_importance, masks_to_gates, ones_gates
from vitrt.transforms.prune.plan import BlockPlan, PlanError, PruningPlan, alignment_violations
from vitrt.transforms.prune.search import SearchConfig, revit_dims, revit_plan, search
from vitrt.compiler.cost import vit_flops
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import PassContext, PassManager
from vitrt.compiler.verify import FP32_TOLERANCE, run_onnx, run_torch, verification_inputs
from vitrt.transforms.prune.graph_pass import PrunePass, prune_twin

BATCH = 2


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
    view = GraphView.from_onnx(lower(twin, batch=batch))
    ctx = PassContext(twin=twin)
    out, records = PassManager([PrunePass(plan)]).run(view, ctx)
    return out, ctx.twin, records


@pytest.mark.parametrize("distilled", [False, True])
def test_pruned_onnx_equals_pruned_twin(distilled):
    twin = _twin(distilled)
    plan = _plan(twin.spec, emb=tuple(sorted(tuple(range(0, 64, 2)) + (1, 3))))  # EMB pruned too (34, unaligned)
    view, pruned, records = _prune(twin, plan)
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
    assert records[0].changes_function


def test_removal_is_exact_for_emb_keeping_plans():
    """With every EMB channel kept, the pruned model equals the original with the pruned gates at 0."""
    twin = _twin()
    plan = _plan(twin.spec)
    view, pruned, _ = _prune(twin, plan)
    images = verification_inputs(twin.spec, BATCH, seed=2, count=2)
    with torch.no_grad():
        gated = gated_forward(twin, masks_to_gates(twin.spec, _kept(plan)), torch.from_numpy(images)).numpy()
        dense = gated_forward(twin, ones_gates(twin.spec), torch.from_numpy(images)).numpy()
    assert max_abs(dense, run_torch(twin, images)) == 0.0  # gates at 1 are the identity
    assert max_abs(gated, run_torch(pruned, images)) <= FP32_TOLERANCE
    assert max_abs(gated, run_onnx(view.to_onnx(), images, BATCH)) <= FP32_TOLERANCE
    assert max_abs(gated, dense) > 1e-2  # the plan did change the function


def test_importance_is_squared_gate_gradient():
    """eq. 6: the head score equals (Σ w·∂L/∂w)² over the head's weights, computed independently."""
    from vitrt.calib.data import synthetic

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
    expected = sum(float((layer.weight[rows].detach() ** 2).sum() + (layer.bias[rows].detach() ** 2).sum())
                   for layer in (attn.q, attn.k, attn.v))
    expected += float((attn.proj.weight[:, rows].detach() ** 2).sum())
    assert float(magnitude["blocks.1.heads"][1]) == pytest.approx(expected, rel=1e-4)


def _flops_latency(spec):
    """An analytic latency model: FLOPs (what a LUT would replace with measured milliseconds)."""
    return float(vit_flops(spec))


def _search(twin, target=0.5, method="hessian", seed=0):
    from vitrt.calib.data import synthetic
    from vitrt.transforms.prune.gates import hessian_importance

    data = synthetic(32, 32, seed=seed)
    if method == "hessian":
        importance = lambda kept: hessian_importance(twin, data, kept=kept, batch_size=16, batches=2, seed=seed)  # noqa: E731
    else:
        importance = lambda kept: magnitude_importance(twin, kept)  # noqa: E731
    return search(twin.spec, importance, _flops_latency, SearchConfig(target=target, rounds=3))


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
    view, pruned, _ = _prune(twin, plan)
    images = verification_inputs(twin.spec, BATCH, seed=4)
    assert max_abs(run_onnx(view.to_onnx(), images, BATCH), run_torch(pruned, images)) <= FP32_TOLERANCE


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


def test_plan_json_round_trip_and_refusals(tmp_path):
    twin = _twin()
    plan = _plan(twin.spec, emb=tuple(range(48)))
    path = tmp_path / "plan.json"
    plan.save(path)
    assert PruningPlan.load(path) == plan
    data = json.loads(path.read_text())

    def refused(mutate, message):
        bad = json.loads(json.dumps(data))
        mutate(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(PlanError, match=message) as info:
            PruningPlan.load(path)
        assert "\n" not in str(info.value)

    refused(lambda d: d["blocks"].update({"7": d["blocks"]["0"]}), "unknown block '7'")
    refused(lambda d: d["blocks"]["0"].update({"mlp": [0, 300]}), "index 300 is out of range 0..255")
    refused(lambda d: d["blocks"]["2"].update({"qk": [0, 0, 1]}), "index 0 is listed twice")
    refused(lambda d: d.update({"emb": [0, 64]}), "out of range 0..63")
    refused(lambda d: d["blocks"]["1"].update({"qk": [1, 2]}), "removes every head but keeps qk/v")
    refused(lambda d: d["blocks"].pop("2"), "no entry for block 2")
    refused(lambda d: d["dims"].update({"emb": 12}), "'dims' disagree")
    path.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        PruningPlan.load(path)
    other = _twin(depth=2)
    with pytest.raises(PlanError, match="made for 3 blocks, the model has 2"):
        plan.check_matches(other.spec)
    wide = canonicalize(tiny_vit(depth=3, mlp_ratio=2.0))
    with pytest.raises(PlanError, match="heads/qk/v/mlp 2/32/32/256, the model's block 0 has 2/32/32/128"):
        plan.check_matches(wide.spec)


def test_compile_with_plan_cli(tmp_path):
    """vitrt compile MODEL --prune-plan plan.json: verified, manifest + plot written; a bad plan exits 2, one line."""
    import subprocess
    import sys

    from vitrt import compile as vitrt_compile

    model = tiny_vit(depth=3)
    plan = _plan(canonicalize(model).spec, emb=tuple(range(0, 64, 2)))
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path)
    result = vitrt_compile(model, tmp_path / "out", prune_plan=plan_path, verify=True, batch=BATCH, quiet=True)
    manifest = result.manifest
    assert manifest["verify"]["ok"] and manifest["verify"]["reference"] == "torch twin"
    assert manifest["spec_after"]["emb"] == 32
    assert manifest["pruning"]["block_dims"][1] == {"heads": 0, "qk": 0, "v": 0, "mlp": 32}
    assert manifest["params"]["after"] < manifest["params"]["before"]
    assert (result.out / "pruning_dims.png").stat().st_size > 1000
    assert PruningPlan.load(result.out / "pruning_plan.json") == plan
    bad = json.loads(plan_path.read_text())
    bad["blocks"]["0"]["heads"] = [5]
    plan_path.write_text(json.dumps(bad))
    proc = subprocess.run([sys.executable, "-m", "vitrt.cli", "compile", "deit_tiny_patch16_224", "-o",
                           str(tmp_path / "bad"), "--prune-plan", str(plan_path), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "index 5 is out of range 0..1" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_finetuned_weights_are_what_gets_compiled():
    from vitrt.calib.data import synthetic
    from vitrt.transforms.prune.planner import finetune

    twin = _twin()
    plan = _plan(twin.spec, emb=tuple(range(0, 64, 2)))
    student = prune_twin(twin, plan)
    before = [p.clone() for p in student.parameters()]
    report = finetune(student, twin, synthetic(32, 32, seed=5), 1, batch_size=16)
    assert report["epochs"] == 1 and any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    ctx = PassContext(twin=twin)
    out, _ = PassManager([PrunePass(plan, weights_from=student)]).run(view, ctx)
    assert ctx.twin is student
    images = verification_inputs(twin.spec, BATCH, seed=6)
    assert max_abs(run_onnx(out.to_onnx(), images, BATCH), run_torch(student, images)) <= FP32_TOLERANCE


def test_compile_prune_with_a_real_tiny_latency_table(tmp_path):
    """--prune FRACTION --lut LUT end to end: a tiny table timed on ONNX Runtime steers the search."""
    from vitrt import compile as vitrt_compile
    from vitrt.compiler.lut import LatencyTable
    from vitrt.benchmarks.lut_build import TimingOptions, build_table
    from vitrt.compiler.spec import ViTSpec

    lut = tmp_path / "tiny.json"
    build_table(lut, backend="ort", grid="tiny", batch=BATCH, timing=TimingOptions(warmup=1, iterations=2, min_seconds=0.005))
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
