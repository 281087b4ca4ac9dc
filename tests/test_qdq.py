"""Q/DQ insertion, the TensorRT-rules lint and FP16 precision typing on a tiny ViT: structure, ONNX Runtime
numerics against the fake-quant / fp16 twin, 2:4 zeros kept behind DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests.conftest import tiny_vit
from vitrt.calib.data import synthetic
from vitrt.transforms.quant.fakequant import quantize_twin
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.verify import run_onnx, run_torch
from vitrt.transforms.precision.graph_pass import FP16_TOLERANCE, fp16_twin, type_fp16
from vitrt.transforms.quant.graph_pass import QDQ_TOLERANCE, insert_qdq
from vitrt.transforms.quant.lint import check_qdq, lint_qdq

BATCH = 4
LINEARS_PER_BLOCK = 6  # q, k, v, proj, fc1, fc2


@pytest.fixture(scope="module")
def twin():
    return canonicalize(tiny_vit(depth=2))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).standard_normal((2 * BATCH, 3, 32, 32)).astype(np.float32)


_CACHE: dict = {}


def quantized_graph(twin, precision, quantize_attention=False):
    key = (id(twin), precision, quantize_attention)
    if key not in _CACHE:
        _CACHE[key] = _quantized_graph(twin, precision, quantize_attention)
    model, qtwin, table, stats = _CACHE[key]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, qtwin, table, stats


def _quantized_graph(twin, precision, quantize_attention=False):
    qtwin, table = quantize_twin(twin, precision, synthetic(32, 32, seed=3), quantize_attention=quantize_attention)
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    stats = insert_qdq(view, table, qtwin)
    return view.to_onnx(), qtwin, table, stats


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


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_placement(twin, images, precision):
    model, qtwin, table, stats = quantized_graph(twin, precision)
    onnx.checker.check_model(model)
    depth = twin.spec.depth
    n_layers = depth * LINEARS_PER_BLOCK + 2  # + patch_embed Conv + head
    assert len(nodes(model, "QuantizeLinear")) == n_layers
    assert len(nodes(model, "DequantizeLinear")) == 2 * n_layers
    assert stats["opset"] == (17 if precision == "int8" else 19)
    by_out = {o: n for n in model.graph.node for o in n.output}
    for mm in nodes(model, "MatMul") + nodes(model, "Conv"):
        if mm.name in ("blocks.0.attn.qk", "blocks.0.attn.av", "blocks.1.attn.qk", "blocks.1.attn.av"):
            assert by_out[mm.input[0]].op_type != "DequantizeLinear"  # attention matmuls only on request
            continue
        a, w = by_out[mm.input[0]], by_out[mm.input[1]]
        assert a.op_type == "DequantizeLinear" and by_out[a.input[0]].op_type == "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and attr(w, "axis") == (0 if mm.op_type == "Conv" else 1)
        stored = init(model, w.input[0])
        float_weight = qtwin.get_submodule(mm.name).weight
        assert stored.shape == tuple(float_weight.shape if mm.op_type == "Conv" else float_weight.T.shape)
        assert init(model, w.input[1]).shape == (stored.shape[0 if mm.op_type == "Conv" else 1],)
        assert not np.any(init(model, w.input[2]).astype(np.float32))  # zero point 0
        assert init(model, a.input[1]).shape == ()  # activation per tensor
    for q in nodes(model, "QuantizeLinear"):  # never on a MatMul / Conv output
        assert by_out.get(q.input[0]) is None or by_out[q.input[0]].op_type not in ("MatMul", "Conv", "Add")
    assert lint_qdq(model) == []
    assert_matches_twin(model, qtwin, images, precision)


def test_int8_weights_are_the_integer_initializers(twin):
    model, qtwin, table, _ = quantized_graph(twin, "int8")
    stored = init(model, "blocks.1.mlp.fc1.weight")
    assert stored.dtype == np.int8 and stored.shape == (64, 256) and np.abs(stored).max() == 127
    scale = init(model, "blocks.1.mlp.fc1.weight.scale")
    np.testing.assert_allclose(stored * scale, qtwin.blocks[1].mlp.fc1.weight.detach().numpy().T, atol=scale.max())


def test_attention_qdq_only_where_fused_attention_allows(twin, images):
    model, qtwin, _, stats = quantized_graph(twin, "int8", quantize_attention=True)
    by_out = {o: n for n in model.graph.node for o in n.output}
    for i in range(twin.spec.depth):
        for name in (f"blocks.{i}.attn.qk", f"blocks.{i}.attn.av"):
            mm = next(n for n in model.graph.node if n.name == name)
            assert [by_out[x].op_type for x in mm.input] == ["DequantizeLinear", "DequantizeLinear"]
    assert stats["activation_qdq"] == twin.spec.depth * (LINEARS_PER_BLOCK + 4) + 2
    assert lint_qdq(model) == []
    assert_matches_twin(model, qtwin, images, "int8")
    # head size 48 is not a fused INT8 attention size: no Q/DQ on its matmuls
    wide = canonicalize(tiny_vit(depth=1, embed_dim=96, num_heads=2))
    _, table = quantize_twin(wide, "int8", synthetic(32, 8), quantize_attention=True)
    assert not any(".qk." in k or ".av." in k for k in table.entries)


def test_int4_weight_only_block_dequantize(twin, images):
    model, qtwin, table, stats = quantized_graph(twin, "int4w")
    assert stats["opset"] == 21 and model.ir_version <= 13
    assert not nodes(model, "QuantizeLinear")
    dqs = nodes(model, "DequantizeLinear")
    assert len(dqs) == twin.spec.depth * LINEARS_PER_BLOCK + 1  # linears + head; the Conv stays float
    block = table.entries["head.weight"].block_size
    assert block == 64
    for dq in dqs:
        w = next(t for t in model.graph.initializer if t.name == dq.input[0])
        assert w.data_type == onnx.TensorProto.INT4 and attr(dq, "axis") == 0 and attr(dq, "block_size") == block
    assert lint_qdq(model) == []
    assert_matches_twin(model, qtwin, images, "int4w")
    # ONNX Runtime's full optimisation (the ort backend) loads and runs it too (MatMulNBits)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": images[:BATCH]})[0]
    assert np.isfinite(out).all() and out.shape == (BATCH, 10)


def test_fp8_graph_runs_fully_optimised(twin, images, tmp_path):
    import onnxruntime as ort

    from vitrt.compiler.backends.ort import disabled_optimizers

    model, qtwin, _, _ = quantized_graph(twin, "fp8")
    assert init(model, "blocks.0.attn.q.weight").dtype.name == "float8_e4m3fn"
    path = tmp_path / "fp8.onnx"
    onnx.save(model, str(path))
    assert disabled_optimizers(path) == ["QDQPropagationTransformer", "QDQSelectorActionTransformer"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=disabled_optimizers(path))
    out = session.run(None, {"images": images[:BATCH]})[0]
    assert np.abs(out - run_torch(qtwin, images[:BATCH])).max() <= QDQ_TOLERANCE["fp8"]


@pytest.mark.parametrize("precision", ["int8", "int4w"])
def test_2to4_weights_stay_2to4_behind_dequantize(precision):
    twin = canonicalize(tiny_vit(depth=1))
    with torch.no_grad():  # 2:4 along the input dim: keep the 2 largest of every 4
        for m in twin.modules():
            if isinstance(m, torch.nn.Linear):
                w = m.weight.reshape(m.out_features, -1, 4)
                keep = w.abs().topk(2, dim=-1).indices
                m.weight.copy_((w * torch.zeros_like(w).scatter_(-1, keep, 1.0)).reshape_as(m.weight))
    model, _, _, _ = quantized_graph(twin, precision)
    for dq in nodes(model, "DequantizeLinear"):
        t = next((t for t in model.graph.initializer if t.name == dq.input[0]), None)
        if t is None or t.name.startswith("patch_embed"):
            continue
        w = numpy_helper.to_array(t).astype(np.float32)  # B[K, N]: the pattern runs along K
        nonzero = (w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(axis=1)
        assert nonzero.max() <= 2, t.name


def test_lint_catches_violations(twin):
    model, _, _, _ = quantized_graph(twin, "int8")
    assert lint_qdq(model) == []

    def broken(edit):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        edit(m)
        return lint_qdq(m)

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

    fp8, _, _, _ = quantized_graph(twin, "fp8")
    fp8.opset_import[0].version = 17
    assert any("opset >= 19" in p for p in lint_qdq(fp8))
    from vitrt.compiler.errors import VitrtError

    with pytest.raises(VitrtError, match="Q/DQ lint"):
        check_qdq(fp8)


def test_fp16_typing_structure_and_numerics(twin, images):
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    stats = type_fp16(view)
    model = view.to_onnx()
    onnx.checker.check_model(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types["images"] == f32 and types["logits"] == f32
    n_ln, n_sm = 2 * twin.spec.depth + 1, twin.spec.depth
    assert stats["casts"] == 2 * n_ln + 2 * n_sm + 2  # around each kept op, plus graph input / output
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert all(types.get(x, inits.get(x)) == f32 for x in node.input)
            assert types[node.output[0]] == f32
        elif node.op_type in ("MatMul", "Conv", "Erf"):
            assert all(types.get(x, inits.get(x)) == f16 for x in node.input), node.name
    out = run_onnx(model, images, BATCH)
    err = float(np.abs(out - run_torch(fp16_twin(twin), images)).max())
    assert err <= FP16_TOLERANCE
    assert float(np.abs(out - run_torch(twin, images)).max()) <= FP16_TOLERANCE


def test_compile_2to4_then_int8_weights_stay_2to4(tmp_path):
    """The composition: the 2:4 pass (issue 6) masks, calibration sees the masked twin, the int8 initializers
    behind their DequantizeLinear keep the pattern along K, so TensorRT can still pick sparse INT8 kernels."""
    from vitrt.pipeline.driver import compile

    result = compile(tiny_vit(depth=1), tmp_path / "out", sparsity="2:4", sparse_min_weights=0, precision="int8",
                     calib_images=8, batch=BATCH, verify=True, quiet=True)
    manifest = result.manifest
    assert [p["name"] for p in manifest["passes"]][:2] == ["sparsity_2to4", "qdq"]
    assert manifest["verify"]["ok"]
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
