"""The Q/DQ pass, the TensorRT-rules lint and FP16 precision typing on a tiny ViT (the common recipe): expected
structure, ONNX Runtime against the pass's own twin transform with the declared per-dtype tolerances, the ONNX
checker, the plans' JSON round trip, stateless passes whose twin transforms never touch their input, 2:4 zeros
kept behind DequantizeLinear, and the fp16 compile verifying."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import tiny_vit
from vitrt.calib.data import synthetic
from vitrt.compiler.backends.ort import disabled_optimizers, ort_session
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import PassContext
from vitrt.compiler.trt_lint import check_trt, qdq_findings
from vitrt.compiler.verify import run_onnx, run_torch
from vitrt.compiler.weights import parameter_state
from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
from vitrt.transforms.precision.plan import FP16_TOLERANCE, PrecisionPlan
from vitrt.transforms.quant.fakequant import quantize_twin
from vitrt.transforms.quant.graph_pass import QDQ_TOLERANCE, QDQPass
from vitrt.transforms.quant.plan import QuantPlan

BATCH = 4
LINEARS_PER_BLOCK = 6  # q, k, v, proj, fc1, fc2


@pytest.fixture(scope="module")
def twin():
    return canonicalize(tiny_vit(depth=2))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).standard_normal((2 * BATCH, 3, 32, 32)).astype(np.float32)


_CACHE: dict = {}


def calibrated_plan(twin, precision: str, quantize_attention: bool = False) -> QuantPlan:
    """What the planner hands the pass after PTQ: the calibrated table in a plan (32 synthetic images)."""
    key = (id(twin), precision, quantize_attention)
    if key not in _CACHE:
        data = None if precision == "int4w" else synthetic(32, 32, seed=3)
        _, table = quantize_twin(twin, precision, data, quantize_attention=quantize_attention)
        _CACHE[key] = QuantPlan(precision, table, quantize_attention)
    return _CACHE[key]


def run_pass(graph_pass, twin, batch=BATCH):
    """Lower ``twin``, run ``graph_pass`` on it: (ONNX model, the pass's twin of ``twin``, the pass's stats)."""
    view = GraphView.from_onnx(lower(twin, batch=batch))
    result = graph_pass.run(view, PassContext())
    assert result.modified
    return result.view.to_onnx(), graph_pass.apply_to_twin(twin), result.stats


def quantized_graph(twin, precision, quantize_attention=False):
    return run_pass(QDQPass(calibrated_plan(twin, precision, quantize_attention)), twin)


def nodes(model, op):
    return [n for n in model.graph.node if n.op_type == op]


def attr(node, name, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def init(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def assert_matches_twin(model, qtwin, images, precision):
    """ONNX Runtime (basic optimisations: the Q/DQ ops run as written) against the fake-quant twin: most images
    agree to fp32 precision; an activation rounding tie broken the other way (x / s in ONNX, x · qmax / amax in
    modelopt) moves one image's logits by less than QDQ_TOLERANCE (see vitrt.transforms.quant.graph_pass)."""
    err = np.abs(run_onnx(model, images, BATCH) - run_torch(qtwin, images)).max(axis=1)
    assert float(np.median(err)) <= 1e-5, err
    assert float(err.max()) <= QDQ_TOLERANCE[precision], err


# --- structure and numerics ------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_placement(twin, images, precision):
    model, qtwin, stats = quantized_graph(twin, precision)
    onnx.checker.check_model(model)
    depth = twin.spec.depth
    n_layers = depth * LINEARS_PER_BLOCK + 2  # + patch_embed Conv + head
    assert len(nodes(model, "QuantizeLinear")) == n_layers
    assert len(nodes(model, "DequantizeLinear")) == 2 * n_layers
    assert stats["opset"] == (17 if precision == "int8" else 19)
    assert stats["activation_qdq"] == stats["weight_dq"] == n_layers
    by_out = {o: n for n in model.graph.node for o in n.output}
    for mm in nodes(model, "MatMul") + nodes(model, "Conv"):
        if mm.name in ("blocks.0.attn.qk", "blocks.0.attn.av", "blocks.1.attn.qk", "blocks.1.attn.av"):
            assert by_out[mm.input[0]].op_type != "DequantizeLinear"  # attention matmuls only on request
            continue
        a, w = by_out[mm.input[0]], by_out[mm.input[1]]
        assert a.op_type == "DequantizeLinear" and by_out[a.input[0]].op_type == "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and attr(w, "axis") == (0 if mm.op_type == "Conv" else 1)
        stored = init(model, w.input[0])
        float_weight = twin.get_submodule(mm.name).weight
        assert stored.shape == tuple(float_weight.shape if mm.op_type == "Conv" else float_weight.T.shape)
        assert init(model, w.input[1]).shape == (stored.shape[0 if mm.op_type == "Conv" else 1],)
        assert not np.any(init(model, w.input[2]).astype(np.float32))  # zero point 0
        assert init(model, a.input[1]).shape == ()  # activation per tensor
    for q in nodes(model, "QuantizeLinear"):  # never on a MatMul / Conv output
        assert by_out.get(q.input[0]) is None or by_out[q.input[0]].op_type not in ("MatMul", "Conv", "Add")
    assert qdq_findings(model) == []
    assert_matches_twin(model, qtwin, images, precision)


def test_int8_weights_are_the_integer_initializers(twin):
    model, qtwin, _ = quantized_graph(twin, "int8")
    stored = init(model, "blocks.1.mlp.fc1.weight")
    assert stored.dtype == np.int8 and stored.shape == (64, 256) and np.abs(stored).max() == 127
    assert not any(t.name == "blocks.1.mlp.fc1.weight" and t.data_type == onnx.TensorProto.FLOAT
                   for t in model.graph.initializer)  # the float weight is gone
    scale = init(model, "blocks.1.mlp.fc1.weight.scale")
    np.testing.assert_allclose(stored * scale, qtwin.blocks[1].mlp.fc1.weight.detach().numpy().T, atol=scale.max())


def test_attention_qdq_only_where_fused_attention_allows(twin, images):
    model, qtwin, stats = quantized_graph(twin, "int8", quantize_attention=True)
    by_out = {o: n for n in model.graph.node for o in n.output}
    for i in range(twin.spec.depth):
        for name in (f"blocks.{i}.attn.qk", f"blocks.{i}.attn.av"):
            mm = next(n for n in model.graph.node if n.name == name)
            assert [by_out[x].op_type for x in mm.input] == ["DequantizeLinear", "DequantizeLinear"]
    assert stats["activation_qdq"] == twin.spec.depth * (LINEARS_PER_BLOCK + 4) + 2
    assert qdq_findings(model) == []
    assert_matches_twin(model, qtwin, images, "int8")
    # head size 48 is not a fused INT8 attention size: no Q/DQ on its matmuls
    wide = canonicalize(tiny_vit(depth=1, embed_dim=96, num_heads=2))
    _, table = quantize_twin(wide, "int8", synthetic(32, 8), quantize_attention=True)
    assert not any(".qk." in k or ".av." in k for k in table.entries)
    model, _, stats = run_pass(QDQPass(QuantPlan("int8", table, quantize_attention=True)), wide)
    assert stats["activation_qdq"] == LINEARS_PER_BLOCK + 2 and qdq_findings(model) == []


def test_int4_weight_only_block_dequantize(twin, images):
    model, qtwin, stats = quantized_graph(twin, "int4w")
    onnx.checker.check_model(model)
    assert stats["opset"] == 21 and model.ir_version <= 13
    assert not nodes(model, "QuantizeLinear")
    dqs = nodes(model, "DequantizeLinear")
    assert len(dqs) == twin.spec.depth * LINEARS_PER_BLOCK + 1  # linears + head; the Conv stays float
    block = calibrated_plan(twin, "int4w").table.entries["head.weight"].block_size
    assert block == 64
    for dq in dqs:
        w = next(t for t in model.graph.initializer if t.name == dq.input[0])
        assert w.data_type == onnx.TensorProto.INT4 and attr(dq, "axis") == 0 and attr(dq, "block_size") == block
    assert qdq_findings(model) == []
    assert_matches_twin(model, qtwin, images, "int4w")
    # ONNX Runtime's full optimisation (the ort backend's session) loads and runs it too (MatMulNBits)
    out = ort_session(model, level="all").run(None, {"images": images[:BATCH]})[0]
    assert np.isfinite(out).all() and out.shape == (BATCH, 10)


@pytest.mark.parametrize("precision", ["int8", "fp8", "int4w"])
def test_scale_and_zero_point_have_identical_shapes(twin, precision):
    """ONNX QuantizeLinear / DequantizeLinear and TensorRT's IQuantizeLayer ("scale and zeroPt should have identical
    dimensions"): per-tensor scales are 0-d, and so are their zero points (not [1])."""
    model, _, _ = quantized_graph(twin, precision, quantize_attention=precision != "int4w")
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    qdq = nodes(model, "QuantizeLinear") + nodes(model, "DequantizeLinear")
    assert qdq and all(len(n.input) == 3 for n in qdq)
    for node in qdq:
        assert shapes[node.input[1]] == shapes[node.input[2]], node.name
    if precision != "int4w":  # weight-only: no activation Q/DQ
        assert shapes["blocks.0.attn.q.input.zero_point"] == ()


def test_int4_block_sizes_are_tensorrts(twin):
    """TensorRT takes INT4 weight-only blocks of 64 or 128 only: 32 is refused in one line naming the valid sizes
    and the layer widths, as is a model whose widths neither divides; a table with block 32 too."""
    from vitrt.transforms.quant.fakequant import int4_table
    from vitrt.transforms.quant.scale_table import INT4_BLOCK_SIZES, table_from_dict

    assert INT4_BLOCK_SIZES == (128, 64)
    assert int4_table(twin, 64).meta["block_size"] == 64
    with pytest.raises(VitrtError, match=r"block size 32 is not supported: TensorRT takes 64 or 128 "
                                         r"\(layer input widths \[64, 256\]\)") as info:
        int4_table(twin, 32)
    assert "\n" not in str(info.value)
    with pytest.raises(VitrtError, match=r"block size 128 does not divide the layer input width\(s\) \[64\]"):
        int4_table(twin, 128)
    narrow = canonicalize(tiny_vit(depth=1, embed_dim=96, num_heads=2))  # widths 96 and 384: 32 would divide
    with pytest.raises(VitrtError, match=r"needs a block size of 64 or 128 .* widths are \[96, 384\]"):
        quantize_twin(narrow, "int4w")
    data = calibrated_plan(twin, "int4w").table.to_dict()
    for entry in data["tensors"].values():
        entry["block_size"] = 32
    with pytest.raises(VitrtError, match="quantization plan: INT4 block size 32 is not supported"):
        table_from_dict(data, twin.spec, "int4w", origin="quantization plan")


def test_fp8_attention_quantizes_the_softmax_output_with_the_fixed_scale(twin, images):
    """Model Optimizer's FP8 MHA pattern: Q/DQ on the Softmax output feeding ·V with scale 1/448 (amax 1), not
    calibrated; the fake-quant twin uses the same range and the graph matches it; a table with another range for
    it is refused."""
    model, qtwin, _ = quantized_graph(twin, "fp8", quantize_attention=True)
    by_out = {o: n for n in model.graph.node for o in n.output}
    consumers = {i: n for n in model.graph.node for i in n.input}
    for i in range(twin.spec.depth):
        softmax = next(n for n in model.graph.node if n.name == f"blocks.{i}.attn.softmax")
        q = consumers[softmax.output[0]]
        assert q.op_type == "QuantizeLinear" and consumers[q.output[0]].op_type == "DequantizeLinear"
        assert init(model, q.input[1]) == np.float32(1.0 / 448.0)
        zero_point = next(t for t in model.graph.initializer if t.name == q.input[2])
        assert zero_point.data_type == onnx.TensorProto.FLOAT8E4M3FN and tuple(zero_point.dims) == ()
        av = next(n for n in model.graph.node if n.name == f"blocks.{i}.attn.av")
        assert by_out[av.input[0]] is consumers[q.output[0]]
        assert float(qtwin.blocks[i].attn.av_a_input_quantizer.amax) == 1.0
    assert qdq_findings(model) == []
    assert_matches_twin(model, qtwin, images, "fp8")
    int8 = calibrated_plan(twin, "int8", quantize_attention=True).table  # int8 keeps a calibrated range
    assert float(int8.entries["blocks.0.attn.av.input_a"].amax) != 1.0
    from vitrt.transforms.quant.scale_table import table_from_dict

    data = calibrated_plan(twin, "fp8", quantize_attention=True).table.to_dict()
    data["tensors"]["blocks.1.attn.av.input_a"]["amax"] = 0.5
    with pytest.raises(VitrtError, match="'blocks.1.attn.av.input_a' is the Softmax output, whose fp8 range is fixed"):
        table_from_dict(data, twin.spec, "fp8", quantize_attention=True)


def test_fp8_graph_runs_fully_optimised(twin, images):
    model, qtwin, _ = quantized_graph(twin, "fp8")
    assert init(model, "blocks.0.attn.q.weight").dtype.name == "float8_e4m3fn"
    assert disabled_optimizers(model) == ["QDQPropagationTransformer", "QDQSelectorActionTransformer"]
    out = ort_session(model, level="all").run(None, {"images": images[:BATCH]})[0]
    assert np.abs(out - run_torch(qtwin, images[:BATCH])).max() <= QDQ_TOLERANCE["fp8"]


def test_fp8_graph_is_built_and_read_back_quietly(twin, capsys):
    """graphsurgeon prints "[W] Could not convert: FLOAT8E4M3FN ..." (once per process) wherever it meets a float8
    tensor: in the pass and when a later pass re-imports the graph. None of it may reach a --quiet compile."""
    from onnx_graphsurgeon.logger import G_LOGGER

    from vitrt.compiler.cleanup import CleanupPass

    G_LOGGER.once_logged.clear()  # as in a fresh process
    severity = G_LOGGER.severity
    model, _, _ = run_pass(QDQPass(calibrated_plan(twin, "fp8")), twin)
    CleanupPass().run(GraphView.from_onnx(model), PassContext())
    assert capsys.readouterr() == ("", "")
    assert G_LOGGER.severity == severity  # raised only while vitrt builds or imports the graph


def prune_2to4(twin):
    """2:4 along the input dim of every Linear: keep the 2 largest of every 4 (in place)."""
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, torch.nn.Linear):
                w = m.weight.reshape(m.out_features, -1, 4)
                keep = w.abs().topk(2, dim=-1).indices
                m.weight.copy_((w * torch.zeros_like(w).scatter_(-1, keep, 1.0)).reshape_as(m.weight))
    return twin


@pytest.mark.parametrize("precision", ["int8", "int4w"])
def test_2to4_weights_stay_2to4_behind_dequantize(precision):
    twin = prune_2to4(canonicalize(tiny_vit(depth=1)))
    model, _, _ = quantized_graph(twin, precision)
    checked = 0
    for dq in nodes(model, "DequantizeLinear"):
        t = next((t for t in model.graph.initializer if t.name == dq.input[0]), None)
        if t is None or t.name.startswith("patch_embed"):
            continue
        w = numpy_helper.to_array(t).astype(np.float32)  # B[K, N]: the pattern runs along K
        nonzero = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(axis=1)
        assert nonzero.max() <= 2, t.name
        checked += 1
    assert checked == LINEARS_PER_BLOCK + 1


def test_lint_catches_violations(twin):
    model, _, _ = quantized_graph(twin, "int8")
    assert qdq_findings(model) == []

    def broken(edit):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        edit(m)
        return [str(f) for f in qdq_findings(m)]

    def set_init(m, name, value):
        t = next(t for t in m.graph.initializer if t.name == name)
        t.CopyFrom(numpy_helper.from_array(value, name))

    assert any("zero point" in p for p in broken(
        lambda m: set_init(m, "blocks.0.attn.q.input.zero_point", np.array(3, np.int8))))
    assert any("non-positive" in p for p in broken(
        lambda m: set_init(m, "blocks.0.mlp.fc2.input.scale", np.array(-0.1, np.float32))))
    assert any("per tensor" in p for p in broken(
        lambda m: set_init(m, "head.input.scale", np.ones(2, np.float32))))

    def wrong_axis(m):
        dq = next(n for n in m.graph.node if n.name == "blocks.1.attn.v.weight.dequantize")
        next(a for a in dq.attribute if a.name == "axis").i = 0
    assert any("axis 1" in p for p in broken(wrong_axis))

    def output_qdq(m):  # move head's input Q onto the MatMul output of blocks.1.mlp.fc2
        q = next(n for n in m.graph.node if n.name == "head.input.quantize")
        q.input[0] = "blocks.1.mlp.fc2.out"
    assert any("output of MatMul" in p for p in broken(output_qdq))

    fp8, _, _ = quantized_graph(twin, "fp8")
    fp8.opset_import[0].version = 17
    assert any("opset >= 19" in str(p) for p in qdq_findings(fp8))
    with pytest.raises(VitrtError, match="TensorRT would not accept"):
        check_trt(fp8)


# --- the plan, the pass contract and the twin transform ----------------------------------------------------

def perturbed_weights(twin, seed=0) -> dict[str, np.ndarray]:
    """A parameter state unlike ``twin``'s (what QAT hands the plan): every Linear / Conv weight and bias moved."""
    rng = np.random.default_rng(seed)
    return {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in parameter_state(twin).items() if k.endswith((".weight", ".bias")) and "norm" not in k}


def json_round_trip(plan):
    """Through JSON text (the dict) and numpy arrays beside it, as a plan is stored."""
    return json.loads(json.dumps(plan.to_dict())), {k: np.array(v) for k, v in plan.arrays().items()}


@pytest.mark.parametrize("precision, qat_weights", [("int8", False), ("int8", True), ("fp8", False),
                                                    ("int4w", False)])
def test_quant_plan_json_round_trip(twin, images, precision, qat_weights):
    plan = calibrated_plan(twin, precision, quantize_attention=precision == "int8")
    if qat_weights:
        plan = QuantPlan(plan.precision, plan.table, plan.quantize_attention, perturbed_weights(twin),
                         {"qat": {"epochs": 1}})
    data, arrays = json_round_trip(plan)
    loaded = QuantPlan.from_dict(data, arrays, twin.spec)
    assert (loaded.precision, loaded.quantize_attention, dict(loaded.info)) == \
        (plan.precision, plan.quantize_attention, dict(plan.info))
    assert list(loaded.table.entries) == list(plan.table.entries)
    for name, entry in plan.table.entries.items():
        np.testing.assert_array_equal(loaded.table.entries[name].amax, entry.amax)
    assert set(loaded.weights or {}) == set(plan.weights or {})
    # the loaded plan rewrites the graph and the twin exactly like the original
    a, twin_a, _ = run_pass(QDQPass(plan), twin)
    b, twin_b, _ = run_pass(QDQPass(loaded), twin)
    assert a.SerializeToString() == b.SerializeToString()
    np.testing.assert_array_equal(run_torch(twin_a, images), run_torch(twin_b, images))


def test_quant_plan_refuses_what_it_cannot_be(twin):
    plan = calibrated_plan(twin, "int8")
    data, arrays = json_round_trip(plan)
    with pytest.raises(VitrtError, match="format"):
        QuantPlan.from_dict({**data, "format": 99}, arrays, twin.spec)
    with pytest.raises(VitrtError, match="scale table is for 'int8'"):
        QuantPlan("fp8", plan.table)
    with pytest.raises(VitrtError, match="no entry for tensor") as info:  # a table of another model
        QuantPlan.from_dict(data, arrays, canonicalize(tiny_vit(depth=3)).spec)
    assert "\n" not in str(info.value)


def test_qdq_pass_writes_the_plans_qat_weights(twin, images):
    """QAT-trained weights travel in the plan: the graph quantizes them (not the lowered ones) and the pass's twin
    holds them, so ONNX and twin still agree."""
    weights = perturbed_weights(twin)
    base = calibrated_plan(twin, "int8")
    plan = QuantPlan("int8", base.table, weights=weights)
    model, qtwin, _ = run_pass(QDQPass(plan), twin)
    scale = init(model, "blocks.0.mlp.fc2.weight.scale")
    expected = np.clip(np.round(weights["blocks.0.mlp.fc2.weight"].T / scale), -127, 127)
    assert np.abs(init(model, "blocks.0.mlp.fc2.weight").astype(np.float32) - expected).max() <= 1  # ties aside
    np.testing.assert_array_equal(init(model, "head.bias"), weights["head.bias"])
    np.testing.assert_array_equal(qtwin.head.bias.detach().numpy(), weights["head.bias"])
    assert_matches_twin(model, qtwin, images, "int8")
    plain, _, _ = run_pass(QDQPass(base), twin)
    assert not np.array_equal(init(plain, "head.bias"), weights["head.bias"])


def state_of(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("make_pass", [
    lambda twin: QDQPass(calibrated_plan(twin, "int8", quantize_attention=True)),
    lambda twin: QDQPass(QuantPlan("int8", calibrated_plan(twin, "int8").table, weights=perturbed_weights(twin))),
    lambda twin: QDQPass(calibrated_plan(twin, "int4w")),
    lambda twin: PrecisionTypingPass(PrecisionPlan()),
], ids=["int8-attention", "int8-qat-weights", "int4w", "fp16"])
def test_pass_is_stateless_and_never_mutates_the_twin(twin, images, make_pass):
    original = copy.deepcopy(twin)
    before, classes = state_of(twin), [type(m) for m in twin.modules()]
    graph_pass = make_pass(twin)
    assert set(vars(graph_pass)) == {"plan"}  # constructed with its plan, nothing else
    first_twin = graph_pass.apply_to_twin(twin)  # before run(): nothing depends on a previous run
    first, _, _ = run_pass(graph_pass, twin)
    second, second_twin, _ = run_pass(graph_pass, twin)
    assert set(vars(graph_pass)) == {"plan"}
    assert first.SerializeToString() == second.SerializeToString()
    np.testing.assert_array_equal(run_torch(first_twin, images), run_torch(second_twin, images))
    assert first_twin is not twin and second_twin is not first_twin
    # the input twin: same modules, same classes, bit-identical state, same function
    assert [type(m) for m in twin.modules()] == classes
    after = state_of(twin)
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    np.testing.assert_array_equal(run_torch(twin, images), run_torch(original, images))


def test_declared_tolerances():
    plan = calibrated_plan(canonicalize(tiny_vit(depth=1)), "int4w")
    assert QDQPass(plan).tolerance() == QDQ_TOLERANCE["int4w"] == 1e-4
    assert QDQ_TOLERANCE["int8"] == QDQ_TOLERANCE["fp8"] == 0.25
    assert PrecisionTypingPass(PrecisionPlan()).tolerance() == FP16_TOLERANCE == 5e-2


def test_2to4_then_int8_compile_keeps_the_pattern(tmp_path):
    """The composition: the 2:4 pass masks, calibration sees the masked twin, the int8 initializers behind their
    DequantizeLinear keep the pattern along K, so TensorRT can still pick sparse INT8 kernels."""
    from vitrt.pipeline.driver import compile

    result = compile(tiny_vit(depth=1), tmp_path / "out", sparsity="2:4", sparse_min_weights=0, precision="int8",
                     calib_images=8, batch=BATCH, verify=True, quiet=True)
    manifest = result.manifest
    assert [p["name"] for p in manifest["passes"]][:2] == ["sparsity_2to4", "qdq"]
    assert manifest["verify"]["ok"] and manifest["verify"]["tolerance"] == QDQ_TOLERANCE["int8"]
    model = onnx.load(str(result.onnx_path))
    checked = 0
    for dq in nodes(model, "DequantizeLinear"):
        t = next((t for t in model.graph.initializer if t.name == dq.input[0]), None)
        if t is None or not t.name.startswith("blocks."):
            continue
        w = numpy_helper.to_array(t)
        assert w.dtype == np.int8
        assert (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(axis=1).max() <= 2, t.name
        checked += 1
    assert checked == LINEARS_PER_BLOCK


# --- FP16 precision typing ---------------------------------------------------------------------------------

def test_fp16_typing_structure_and_numerics(twin, images):
    model, half, stats = run_pass(PrecisionTypingPass(PrecisionPlan()), twin)
    onnx.checker.check_model(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types["images"] == f32 and types["logits"] == f32
    n_ln = 2 * twin.spec.depth + 1
    assert stats["casts"] == 2 * n_ln + 2  # around each kept op, plus graph input / output
    assert stats["kept_fp32"] == ["LayerNormalization"]  # Softmax typed: no Cast inside the attention
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            assert all(types.get(x, inits.get(x)) == f32 for x in node.input)
            assert types[node.output[0]] == f32
        elif node.op_type in ("MatMul", "Conv", "Erf", "Softmax"):
            assert all(types.get(x, inits.get(x)) == f16 for x in node.input), node.name
    out = run_onnx(model, images, BATCH)
    assert float(np.abs(out - run_torch(half, images)).max()) <= FP16_TOLERANCE
    assert float(np.abs(out - run_torch(twin, images)).max()) <= FP16_TOLERANCE
    assert float(np.abs(out - run_torch(twin, images)).max()) > 1e-6  # it did compute in fp16


def test_precision_plan_json_round_trip_and_refusal():
    for plan in (PrecisionPlan(), PrecisionPlan(keep_fp32=("Softmax",))):
        assert PrecisionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert PrecisionPlan.from_dict(PrecisionPlan("bf16").to_dict()) == PrecisionPlan("bf16")
    with pytest.raises(VitrtError, match="'int8' is not supported"):
        PrecisionPlan("int8")
    with pytest.raises(VitrtError, match="not supported"):
        PrecisionPlan.from_dict({"dtype": "fp8"})


def test_fp16_compile_verifies(tmp_path):
    import vitrt

    result = vitrt.compile(tiny_vit(depth=2), tmp_path / "out", precision="fp16", batch=2, verify=True, quiet=True)
    manifest = result.manifest
    assert [p["name"] for p in manifest["passes"]][0] == "precision_typing"
    verify = manifest["verify"]
    assert verify["ok"] and verify["reference"] == "torch twin" and verify["tolerance"] == FP16_TOLERANCE
    assert manifest["precision"] == PrecisionPlan().report()
    assert isinstance(result.plans["precision"], PrecisionPlan)
    model = onnx.load(str(result.onnx_path))
    onnx.checker.check_model(model)
    assert {t.data_type for t in model.graph.initializer if t.name.endswith("attn.q.weight.fp16")} == \
        {onnx.TensorProto.FLOAT16}


def test_fused_attention_takes_qdq_only_at_head_sizes_16_32_64():
    """TensorRT's fused attention quantizes its matmuls for head sizes 16 / 32 / 64 of Q·K *and* V: a pruned V of
    24 per head keeps them float even where Q·K is 32."""
    import dataclasses

    from vitrt.transforms.quant.scale_table import fused_attention_ok

    spec = canonicalize(tiny_vit(depth=1)).spec  # 2 heads of 32, 17 tokens
    assert fused_attention_ok(spec, 0, "int8")
    for change in ({"v": 24}, {"qk": 24}, {"heads": 0}):
        assert not fused_attention_ok(spec.with_blocks([dataclasses.replace(spec.blocks[0], **change)]), 0, "int8")
