"""Canonical lowering: structure, names, metadata, and equivalence with timm and the twin (fp32, 1e-4)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vitrt.benchmarks.lowering import SUPPORTED_MODELS, lowering_errors
from vitrt.benchmarks.lut_build import block_model
from vitrt.compiler.graph import BLOCK_LINEARS, GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize, load_timm_model
from vitrt.compiler.spec import ViTSpec
from vitrt.compiler.verify import FP32_TOLERANCE, run_onnx, verification_inputs

from conftest import max_abs, score_path, tiny_vit



@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_every_supported_model_lowers_exactly(name):
    errors = lowering_errors(name, batch=2)
    assert errors["twin_vs_timm"] <= FP32_TOLERANCE
    assert errors["onnx_vs_timm"] <= FP32_TOLERANCE
    assert errors["onnx_vs_twin"] <= FP32_TOLERANCE
    assert errors["logit_scale"] > 0.1  # a non-degenerate output, so the comparison means something


def test_every_block_projection_is_addressable():
    view = GraphView.from_onnx(lower(canonicalize(tiny_vit(distilled=True, depth=3)), batch=2))
    assert len(view.weight_linears()) == 6 * 3 + 2


def test_canonical_structure_names_and_metadata():
    model = lower(canonicalize(tiny_vit(distilled=True)), batch=4)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version <= 13
    names = {n.name: n for n in model.graph.node}
    for i in range(2):
        for local in BLOCK_LINEARS:
            node = names[f"blocks.{i}.{local}"]
            assert node.op_type == "MatMul" and node.input[1] == f"blocks.{i}.{local}.weight"
        for local in ("norm1", "norm2"):
            assert names[f"blocks.{i}.{local}"].op_type == "LayerNormalization"
        assert names[f"blocks.{i}.attn.softmax"].op_type == "Softmax"
    for name, op in [("patch_embed", "Conv"), ("norm", "LayerNormalization"), ("head", "MatMul"), ("head_dist", "MatMul")]:
        assert names[name].op_type == op
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert weights["blocks.0.attn.q.weight"] == (64, 64)  # B[K, N]: K = emb in, N = heads * qk out
    assert weights["blocks.0.mlp.fc1.weight"] == (64, 256) and weights["blocks.0.mlp.fc2.weight"] == (256, 64)
    assert ViTSpec.from_onnx(model).distilled
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 3, 32, 32]


def with_random_biases(model, seed=0):
    """``model`` with every bias and LayerNorm parameter drawn at random: timm initialises biases to zero, and a
    lowering that drops or misscales a bias would then pass against it (a trained checkpoint has them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or ".norm" in name:
                param.copy_(param + 0.5 * torch.randn(param.shape, generator=generator))
    return model


def test_attention_scale_is_folded_into_q_so_the_score_path_has_no_mul():
    """TensorRT fuses MatMul -> (Add) -> Softmax -> MatMul only with the scale applied before QKᵀ."""
    timm_model = with_random_biases(tiny_vit(depth=2))
    model = lower(canonicalize(timm_model), batch=2)
    for i in range(2):
        assert score_path(model.graph, i) == ["MatMul", "Softmax"]
    assert not any(n.op_type == "Mul" and ".attn." in n.name for n in model.graph.node)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    attn = timm_model.blocks[0].attn
    scale = ViTSpec.from_onnx(model).blocks[0].scale
    assert scale == pytest.approx(32 ** -0.5)  # the spec records the folded scale
    with torch.no_grad():
        q_weight, q_bias = attn.qkv.weight[:64].T.numpy(), attn.qkv.bias[:64].numpy()
        k_weight = attn.qkv.weight[64:128].T.numpy()
    np.testing.assert_allclose(weights["blocks.0.attn.q.weight"], q_weight * scale, rtol=1e-6)
    np.testing.assert_allclose(weights["blocks.0.attn.q.bias"], q_bias * scale, rtol=1e-6)
    np.testing.assert_array_equal(weights["blocks.0.attn.k.weight"], k_weight)  # K is not scaled
    # The latency table's block subgraphs come from emit_block too.
    lut_block, _ = block_model(batch=1, emb=64, tokens=17, heads=2, qk=32, v=32)
    assert score_path(lut_block.graph, 0) == ["MatMul", "Softmax"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = timm_model(images).numpy()
    assert max_abs(run_onnx(model, images.numpy(), 2), want) <= FP32_TOLERANCE  # every bias lowered as timm uses it


def test_dynamic_batch_runs_any_batch():
    twin = canonicalize(tiny_vit())
    model = lower(twin, batch=None)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        images = verification_inputs(twin.spec, batch=batch)
        with torch.no_grad():
            expected = twin(torch.from_numpy(images)).numpy()
        assert max_abs(session.run(None, {"images": images})[0], expected) <= FP32_TOLERANCE


def test_other_image_size_and_layer_scale():
    timm_model = load_timm_model("deit_tiny_patch16_224", img_size=160)
    twin = canonicalize(timm_model)
    assert twin.spec.img == 160 and twin.spec.tokens == 101
    images = verification_inputs(twin.spec, batch=1)
    with torch.no_grad():
        assert max_abs(run_onnx(lower(twin), images, 1), timm_model(torch.from_numpy(images)).numpy()) <= FP32_TOLERANCE
    scaled = tiny_vit(init_values=0.1)  # LayerScale is folded into proj / fc2
    with torch.no_grad():
        scaled.blocks[0].ls1.gamma.uniform_(0.5, 2.0)
        images = verification_inputs(canonicalize(scaled).spec, batch=2)
        expected = scaled(torch.from_numpy(images)).numpy()
    assert max_abs(run_onnx(lower(canonicalize(scaled), batch=2), images, 2), expected) <= FP32_TOLERANCE
