"""Precision typing beyond FP16: BF16 (for TensorRT) and W4A16 (INT4 weight-only with FP16 activations, the trt
form of ``--precision int4w``), on tiny ViTs with the common recipe.

ONNX Runtime's CPU provider has no bf16 arithmetic kernels (checked here, so that the day it has them this file
says so), so bf16 graphs are verified with onnx's reference evaluator against the bf16 torch twin
(:func:`vitrt.compiler.verify.run_onnx`); the FP16 form is covered in tests/test_qdq.py.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from conftest import tiny_vit
from vitrt.compiler.backends.ort import ort_session
from vitrt.compiler.cleanup import CleanupPass
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import PassContext, PassManager
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.verify import VerifyInstrument, computes_in_bfloat16, run_onnx, run_torch, verification_inputs
from vitrt.transforms.base import PlanContext, ReportContext
from vitrt.transforms.precision.stage import TRANSFORM as PRECISION
from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
from vitrt.transforms.precision.plan import BF16_TOLERANCE, FP16_TOLERANCE, PrecisionPlan, plan_for
from vitrt.transforms.prune.graph_pass import PrunePass
from vitrt.transforms.prune.plan import BlockPlan, PruningPlan
from vitrt.transforms.quant import report as quant_report
from vitrt.transforms.quant.fakequant import quantize_twin
from vitrt.transforms.quant.graph_pass import QDQPass
from vitrt.transforms.quant.plan import QuantPlan
from vitrt.transforms.sparsity import planner as sparsity_planner
from vitrt.transforms.sparsity.config import SparsityConfig
from vitrt.transforms.sparsity.graph_pass import SparsityPass
from vitrt.transforms.tome.graph_pass import TokenMergePass
from vitrt.transforms.tome.schedule import TomeSchedule, resolve

BATCH = 2
BF16_T, F16, F32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
BF16 = plan_for("bf16", 17)  # the compile's bf16 plan at the default opset


@pytest.fixture(scope="module")
def twin():
    return canonicalize(tiny_vit(depth=2))


@pytest.fixture(scope="module")
def images(twin):
    """Two batches of N(0, 1) images, as --verify draws them."""
    return verification_inputs(twin.spec, BATCH, seed=1, count=2)


def run_passes(passes, twin, batch=BATCH, images=None):
    """Lower ``twin`` and run ``passes`` under the pass manager (with ``images``: verified after every pass, graph
    properties checked); returns (ONNX model, the passes' twin, the records)."""
    instruments = [VerifyInstrument(images, batch)] if images is not None else []
    result = PassManager(passes, instruments, check_properties=images is not None).run(
        GraphView.from_onnx(lower(twin, batch=batch)), PassContext(), twin=twin)
    return result.view.to_onnx(), result.twin, result.records


def types_of(model) -> dict[str, int]:
    """Element type of every tensor of ``model`` (value infos, inputs, outputs, initializers)."""
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


# --- BF16 ------------------------------------------------------------------------------------------------------

def test_bf16_plan_keeps_what_onnx_cannot_type():
    """ONNX's schemas: Conv takes bf16 from opset 22, TopK from 24, ConstantOfShape from 20; those stay fp32."""
    assert BF16.keep_fp32 == ("LayerNormalization", "Conv", "TopK", "ConstantOfShape")
    assert plan_for("bf16", 21).keep_fp32 == ("LayerNormalization", "Conv", "TopK")
    assert plan_for("fp16", 17) == PrecisionPlan() and plan_for("fp16", 21) == PrecisionPlan()


def test_bf16_typing_structure(twin):
    model, _, records = run_passes([PrecisionTypingPass(BF16)], twin)
    onnx.checker.check_model(model, full_check=True)
    types = types_of(model)
    assert types["images"] == F32 and types["logits"] == F32  # the engine's interface stays fp32
    assert records[0].name == "precision_typing" and records[0].stats["dtype"] == "bf16"
    n_ln = 2 * twin.spec.depth + 1
    assert records[0].stats["casts"] == 2 * (n_ln + 1) + 2  # kept ops (+ the Conv), graph input / output
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Conv"):  # kept in fp32
            assert {types[x] for x in node.input} | {types[node.output[0]]} == {F32}, node.name
        elif node.op_type in ("MatMul", "Erf", "Add", "Mul", "Div", "Softmax"):  # Softmax typed: TensorRT fuses
            assert {types[x] for x in node.input} == {BF16_T}, node.name
    assert types["blocks.0.attn.q.weight.bf16"] == BF16_T and types["blocks.0.norm1.weight"] == F32
    with pytest.raises(VitrtError, match="ONNX opset 17 has no bf16 for Conv; keep them in fp32"):
        run_passes([PrecisionTypingPass(PrecisionPlan("bf16"))], twin)
    assert computes_in_bfloat16(model)
    assert not computes_in_bfloat16(lower(twin, batch=BATCH))


def test_onnx_runtime_cannot_run_the_bf16_graph(twin):
    """Why bf16 needs --backend trt and is verified with the reference evaluator: the CPU provider has no bf16
    kernels for the graph's arithmetic. If this starts to pass, lift the refusal in TargetConfig.validate."""
    model, _, _ = run_passes([PrecisionTypingPass(BF16)], twin)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort_session(model, level="basic")


def test_bf16_graph_equals_bf16_twin_in_the_reference_evaluator(twin, images):
    model, typed, records = run_passes([PrecisionTypingPass(BF16), CleanupPass()], twin,
                                       images=images)
    assert records[0].stats["verify_max_abs_err"] <= BF16_TOLERANCE
    out = run_onnx(model, images, BATCH)
    assert float(np.abs(out - run_torch(typed, images)).max()) <= BF16_TOLERANCE
    assert float(np.abs(out - run_torch(twin, images)).max()) > 1e-4  # it did compute in bf16
    # the bf16 twin is a new module in bf16 with LayerNorm and Softmax in fp32; its input is untouched
    assert typed is not twin and next(twin.parameters()).dtype == torch.float32
    assert typed.model.blocks[0].attn.q.weight.dtype == torch.bfloat16
    assert typed.model.blocks[0].norm1.module.weight.dtype == torch.float32


def test_bf16_on_the_digits_reference_stays_within_tolerance(digits_reference, digits_test):
    """12 blocks: graph (reference evaluator) against the bf16 twin, on N(0, 1) and on real digits images, and the
    predicted digit of each test image unchanged."""
    model, _ = digits_reference
    twin = canonicalize(model)
    onnx_model, typed, _ = run_passes([PrecisionTypingPass(BF16), CleanupPass()], twin, batch=8)
    for images in (verification_inputs(twin.spec, 8, count=1), digits_test.images[:32].numpy()):
        out = run_onnx(onnx_model, images, 8)
        assert float(np.abs(out - run_torch(typed, images)).max()) <= BF16_TOLERANCE
    agree = (out.argmax(1) == run_torch(twin, images).argmax(1)).mean()
    assert agree == 1.0


def test_bf16_composes_with_pruning_token_merging_and_2to4(twin, images):
    """Each stage planned on the twin the stages before it left (as compile() does), then one pass manager with
    --verify's instrument and property checks: every pass against its twin, bf16 within its tolerance."""
    base = canonicalize(tiny_vit(depth=3, patch_size=4))  # 64 patches: room to merge
    prune_plan = PruningPlan.keep_all(base.spec)
    blocks = list(prune_plan.blocks)
    blocks[1] = BlockPlan(blocks[1].heads, blocks[1].qk[:16], blocks[1].v, blocks[1].mlp[:128])
    passes, current = [], base
    for make in (lambda t: PrunePass(PruningPlan(prune_plan.emb, tuple(blocks), prune_plan.original_emb,
                                                 prune_plan.original_blocks).validate()),
                 lambda t: TokenMergePass(resolve(TomeSchedule(r=4, skip=0), t.spec)),
                 lambda t: SparsityPass(sparsity_planner.plan(
                     t, PlanContext(target=TargetConfig(batch=BATCH), teacher=t),
                     SparsityConfig(pattern="2:4", min_weights=256).validate())),
                 lambda t: PrecisionTypingPass(BF16)):
        graph_pass = make(current)
        passes.append(graph_pass)
        current = graph_pass.apply_to_twin(current)
    stack_images = verification_inputs(base.spec, BATCH, count=2)
    model, typed, records = run_passes(passes + [CleanupPass()], base, images=stack_images)
    assert [r.name for r in records] == ["prune", "token_merge", "sparsity_2to4", "precision_typing", "cleanup"]
    assert all("verify_max_abs_err" in r.stats for r in records[:4])
    assert records[3].stats["verify_max_abs_err"] <= BF16_TOLERANCE
    assert computes_in_bfloat16(model)
    assert float(np.abs(run_onnx(model, stack_images, BATCH) - run_torch(current, stack_images)).max()) \
        <= BF16_TOLERANCE


def test_bf16_needs_the_trt_backend_and_is_refused_on_ort_in_one_line(tmp_path):
    import vitrt

    with pytest.raises(VitrtError, match="^precision='bf16' needs backend='trt'") as info:  # worded for the API
        vitrt.compile(tiny_vit(depth=1), tmp_path / "out", precision="bf16", quiet=True)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
    assert TargetConfig(backend="trt", precision="bf16").validate().activation_dtype == "bf16"
    assert PRECISION.enabled(None, TargetConfig(backend="trt", precision="bf16"))
    ctx = PlanContext(target=TargetConfig(backend="trt", precision="bf16"), teacher=None)
    assert PRECISION.plan(None, ctx, None) == BF16


# --- INT4 weight-only: W4A16 for TensorRT, FP32 activations for ONNX Runtime -----------------------------------

def test_activation_dtype_per_precision_and_backend():
    expected = {("fp32", "ort"): "fp32", ("fp16", "ort"): "fp16", ("int8", "trt"): "fp16", ("fp8", "trt"): "fp16",
                ("int8", "ort"): "fp32", ("int4w", "ort"): "fp32", ("int4w", "trt"): "fp16", ("bf16", "trt"): "bf16",
                ("fp16", "trt"): "fp16"}
    for (precision, backend), dtype in expected.items():
        target = TargetConfig(backend=backend, precision=precision)
        assert target.activation_dtype == dtype
        assert PRECISION.enabled(None, target) == (dtype != "fp32"), (precision, backend)


def int4_passes(twin, backend: str):
    """The passes a compile schedules for int4w on ``backend``: Q/DQ, then typing where the target types."""
    target = TargetConfig(backend=backend, precision="int4w")
    _, table = quantize_twin(twin, "int4w")
    passes = [QDQPass(QuantPlan("int4w", table))]
    if PRECISION.enabled(None, target):
        passes.append(PrecisionTypingPass(PRECISION.plan(twin, PlanContext(target=target, teacher=twin), None)))
    return passes, target


def test_int4w_for_trt_is_w4a16(twin, images):
    """Block-wise INT4 weights whose DequantizeLinear has an fp16 scale, so it outputs fp16 straight into fp16
    MatMuls; LayerNorm and Softmax in fp32; ONNX Runtime runs it and it matches the W4A16 twin."""
    passes, target = int4_passes(twin, "trt")
    assert [type(p) for p in passes] == [QDQPass, PrecisionTypingPass] and passes[1].plan.dtype == "fp16"
    model, typed, records = run_passes(passes + [CleanupPass()], twin, images=images)
    onnx.checker.check_model(model, full_check=True)
    types = types_of(model)
    consumers = {i: n for n in model.graph.node for i in n.input}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 6 * twin.spec.depth + 1
    for dq in dqs:
        assert types[dq.input[0]] == onnx.TensorProto.INT4 and types[dq.input[1]] == F16
        assert types[dq.output[0]] == F16
        matmul = consumers[dq.output[0]]
        assert matmul.op_type == "MatMul" and types[matmul.input[0]] == F16 and types[matmul.output[0]] == F16
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):  # LayerNorm kept fp32; Softmax typed (fused attention)
            assert types[node.output[0]] == (F32 if node.op_type == "LayerNormalization" else F16)
    assert records[1].stats["verify_max_abs_err"] <= FP16_TOLERANCE
    assert float(np.abs(run_onnx(model, images, BATCH) - run_torch(typed, images)).max()) <= FP16_TOLERANCE
    section = quant_report.report(passes[0].plan, ReportContext(twin, typed, target)).manifest
    assert section["activations"] == "fp16" and "W4A16" in section["activations_why"]


def test_an_all_zero_int4_block_keeps_a_normal_fp16_scale(images):
    """A block of zero weights (amax 0) gets the floor range, whose scale is FP16's smallest normal number: typed
    W4A16 it stays a positive scale (a 1e-8 floor became 0 in FP16 and the graph was refused)."""
    from vitrt.compiler.trt_lint import qdq_findings

    zeroed = canonicalize(tiny_vit(depth=2))
    with torch.no_grad():
        zeroed.blocks[0].mlp.fc2.weight[:, :64] = 0  # the first block of K = 64 input channels
    passes, _ = int4_passes(zeroed, "trt")
    amax = passes[0].plan.table.entries["blocks.0.mlp.fc2.weight"].amax
    assert np.float16(amax.min() / 7) == np.float16(2.0 ** -14)
    model, _, records = run_passes(passes + [CleanupPass()], zeroed, images=images)
    assert qdq_findings(model) == [] and records[1].stats["verify_max_abs_err"] <= FP16_TOLERANCE
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and "blocks.0.mlp.fc2" in n.name)
    weights = {t.name: t for t in model.graph.initializer}
    assert onnx.numpy_helper.to_array(weights[dq.input[1]])[0].min() > 0  # the zero block's FP16 scale


def test_int4w_for_ort_keeps_fp32_activations(tmp_path, twin, images):
    passes, _ = int4_passes(twin, "ort")
    assert [type(p) for p in passes] == [QDQPass]
    import vitrt

    result = vitrt.compile(tiny_vit(depth=2), tmp_path / "out", precision="int4w", batch=BATCH, verify=True,
                           quiet=True)
    manifest = result.manifest
    assert [p["name"] for p in manifest["passes"]] == ["qdq", "cleanup"] and "precision" not in manifest
    assert manifest["quantization"]["activations"] == "fp32"
    assert "ONNX Runtime" in manifest["quantization"]["activations_why"]
    model = onnx.load(str(result.onnx_path))
    types = types_of(model)
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        assert types[dq.input[1]] == F32 and types[dq.output[0]] == F32
    assert manifest["verify"]["ok"]
    # the engine that ships is the function that was verified: ONNX Runtime's MatMulNBits fusion keeps the
    # activations fp32 (accuracy level 0), where its default would quantize them to int8
    engine = onnx.load(str(tmp_path / "out" / "model.ort.onnx"))
    fused = [n for n in engine.graph.node if n.op_type == "MatMulNBits"]
    assert fused and all(a.i == 0 for n in fused for a in n.attribute if a.name == "accuracy_level")
    from vitrt.compiler.backends import BuildOptions, get_backend

    runner = get_backend("ort").load(tmp_path / "out" / "model.ort.onnx", BuildOptions())
    graph = ort_session(model, level="basic")  # the graph as --verify runs it
    x = np.asarray(images)[:BATCH]  # one batch of the verification images
    assert abs(runner.infer(x) - graph.run(None, {graph.get_inputs()[0].name: x})[0]).max() <= 1e-4


def test_typing_passes_are_stateless_and_never_mutate_the_twin(twin, images):
    for graph_pass in (PrecisionTypingPass(BF16), PrecisionTypingPass(PrecisionPlan("fp16"))):
        before = copy.deepcopy(twin.state_dict())
        first, _, _ = run_passes([graph_pass], twin)
        second, _, _ = run_passes([graph_pass], twin)
        assert set(vars(graph_pass)) == {"plan"}
        assert first.SerializeToString() == second.SerializeToString()
        assert all(torch.equal(before[k], v) for k, v in twin.state_dict().items())


def test_the_reference_evaluator_runs_a_token_merged_graph_like_onnx_runtime():
    """The bf16 verification path, checked on an fp32 graph both can run: the reference evaluator (with vitrt's
    spec-conforming GatherElements, see vitrt.compiler.verify.reference_evaluator) against ONNX Runtime."""
    from vitrt.compiler.verify import reference_evaluator

    twin = canonicalize(tiny_vit(depth=3, patch_size=4))
    model, _, _ = run_passes([TokenMergePass(resolve(TomeSchedule(r=4, skip=0, window=2, transition=1), twin.spec))],
                             twin)
    assert {"GatherElements", "TopK", "GatherND"} <= {n.op_type for n in model.graph.node}
    images = verification_inputs(twin.spec, BATCH)
    expected = run_onnx(model, images, BATCH)  # fp32: ONNX Runtime
    out = reference_evaluator(model).run(None, {"images": images})[0]
    assert float(np.abs(out - expected).max()) <= 1e-5
