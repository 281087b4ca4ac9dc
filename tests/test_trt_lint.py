"""The TensorRT lint: every rule catches a graph that violates it, clean graphs pass, and every compile records it.

Each violating graph is the smallest ONNX model that breaks one documented rule (built with onnx.helper, checked
by the rule's own message); the clean graphs are a canonical ViT with its attention scale folded into Q (the form
the lowering emits once issue 11's fold lands) and a hand-built Q/DQ MatMul in TensorRT's placement.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import tiny_vit
from lint_support import F, F16, matmul_qdq, model, rules_hit
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.trt_lint import CHECKS, RULES, check_trt, lint, qdq_findings


def test_every_rule_has_a_check_and_a_source():
    assert set(CHECKS) == set(RULES)
    for rule in RULES.values():
        assert rule.severity in ("error", "warning") and rule.category in ("operator", "qdq", "fusion")
        assert rule.source.document and rule.source.tensorrt and rule.source.url.startswith("https://")


def test_canonical_graph_is_clean_with_the_scale_folded_into_q():
    lowered = lower(canonicalize(tiny_vit(depth=2)), batch=2)
    assert lint(lowered).findings == () and check_trt(lowered).warnings == []
    assert not [n.name for n in lowered.graph.node if n.name.endswith(".attn.scale")]  # no Mul after QKᵀ


def test_clean_qdq_matmul_passes():
    assert lint(matmul_qdq()).findings == ()
    assert qdq_findings(matmul_qdq()) == []


# --- the parser's operator list and per-op restrictions -------------------------------------------------------

def test_opset_range():
    assert "opset-range" in rules_hit(model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])],
                                            [("y", F, [2])], opset=8))
    assert "opset-range" not in rules_hit(model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])],
                                                [("y", F, [2])], opset=21))


@pytest.mark.parametrize("node, expected", [
    (helper.make_node("Unique", ["x"], ["y"], name="u"), "listed as unsupported"),
    (helper.make_node("Swish", ["x"], ["y"], name="s"), "not in the ONNX-TensorRT parser's operator list"),
    (helper.make_node("FastGelu", ["x"], ["y"], name="c", domain="com.microsoft"), "needs a plugin"),
])
def test_op_unsupported(node, expected):
    findings = lint(model([node], [("x", F, [4])], [("y", F, [4])])).findings
    assert any(f.rule == "op-unsupported" and expected in f.message and f.node == node.name for f in findings)


def test_input_constant():
    reduce = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="r")
    computed = model([reduce], [("x", F, [2, 3]), ("axes", TensorProto.INT64, [1])], [("y", F, None)], opset=18)
    assert any(f.rule == "input-constant" and "'axes'" in f.message for f in lint(computed).findings)
    constant = model([reduce], [("x", F, [2, 3])], [("y", F, None)], [("axes", np.array([1]))], opset=18)
    assert "input-constant" not in rules_hit(constant)
    squeeze = helper.make_node("Unsqueeze", ["x", "a"], ["y"], name="u")
    shape = helper.make_node("Shape", ["x"], ["a"], end=1)
    assert "input-constant" in rules_hit(model([shape, squeeze], [("x", F, [1, 3])], [("y", F, None)]))


def topk(k: int, sorted_: int = 1) -> onnx.ModelProto:
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="t", sorted=sorted_)
    return model([node], [("x", F, [1, 5000])], [("v", F, None), ("i", TensorProto.INT64, None)],
                 [("k", np.array([k], np.int64))])


def test_topk_sorted_and_k():
    assert rules_hit(topk(13)) == set()
    assert rules_hit(topk(13, sorted_=0)) == {"attribute-value"}
    assert rules_hit(topk(3840)) == {"topk-k"} and rules_hit(topk(3839)) == set()


def test_attribute_values():
    scatter = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="s", reduction="add")
    m = model([scatter], [("x", F, [4]), ("u", F, [1])], [("y", F, [4])], [("i", np.array([[0]], np.int64))], 18)
    assert any(f.rule == "attribute-value" and "reduction='add'" in f.message for f in lint(m).findings)
    pool = helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2], dilations=[2, 2])
    assert "attribute-value" in rules_hit(model([pool], [("x", F, [1, 1, 8, 8])], [("y", F, None)]))


def test_layernorm_only_output_y():
    ln = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean"], name="ln", axis=-1)
    m = model([ln], [("x", F, [2, 4])], [("y", F, [2, 4]), ("mean", F, None)], [("g", np.ones(4, np.float32)),
                                                                                  ("b", np.zeros(4, np.float32))])
    assert any(f.rule == "output-unsupported" and f.node == "ln" for f in lint(m).findings)


def test_dropout_training_mode():
    drop = helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="d")
    on = model([drop], [("x", F, [4])], [("y", F, [4])], [("r", np.float32(0.1)), ("t", np.array(True))])
    off = model([drop], [("x", F, [4])], [("y", F, [4])], [("r", np.float32(0.1)), ("t", np.array(False))])
    assert rules_hit(on) == {"dropout-training"} and rules_hit(off) == set()


# NvInfer.h, IGatherLayer::setNbElementWiseDims: "must be less than the Rank of the data input" (kND: 0 to rank - 1);
# batch_dims 2 on rank-3 data was refused until the audit of the lint found the boundary off by one
@pytest.mark.parametrize("batch_dims, indices_shape, ok", [(1, [2, 3, 1], True), (3, [2, 5, 4, 1], False),
                                                            (2, [2, 5, 1], True),
                                                            (1, [1, 3, 1], False)])
def test_gathernd_batch_dims(batch_dims, indices_shape, ok):
    node = helper.make_node("GatherND", ["x", "i"], ["y"], name="g", batch_dims=batch_dims)
    m = model([node], [("x", F, [2, 5, 4]), ("i", TensorProto.INT64, indices_shape)], [("y", F, None)])
    assert ("gathernd-batch-dims" not in rules_hit(m)) == ok


# --- Q/DQ --------------------------------------------------------------------------------------------------------

def test_qdq_opset():
    import ml_dtypes

    fp8 = matmul_qdq(act_zp=np.zeros((), ml_dtypes.float8_e4m3fn), opset=17)
    assert any(f.rule == "qdq-opset" and "opset >= 19" in f.message for f in lint(fp8).findings)
    assert "qdq-opset" not in rules_hit(matmul_qdq(act_zp=np.zeros((), ml_dtypes.float8_e4m3fn), opset=19))


@pytest.mark.parametrize("scale, expected", [(np.float32(-0.1), "non-positive"), (np.float32(np.inf), "non-finite"),
                                             (np.full((1, 1, 1), 0.1, np.float32), "rank 3")])
def test_qdq_scale(scale, expected):
    m = matmul_qdq(act_scale=scale, act_zp=np.zeros(np.shape(scale), np.int8))
    assert any(f.rule == "qdq-scale" and expected in f.message for f in lint(m).findings)


def test_qdq_scale_must_be_constant():
    m = matmul_qdq()
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "s"))
    m.graph.input.append(helper.make_tensor_value_info("s", F, []))
    assert any(f.rule == "qdq-scale" and "not a constant" in f.message for f in lint(m).findings)


def test_qdq_zero_point_zero_and_same_shape_as_scale():
    assert any("not 0" in f.message for f in lint(matmul_qdq(act_zp=np.int8(3))).findings)
    mismatched = lint(matmul_qdq(act_zp=np.zeros(1, np.int8))).findings  # scale [] with zero point [1] (issue 11)
    assert {f.rule for f in mismatched} == {"qdq-zero-point"} and len(mismatched) == 2
    assert "shape [1] differs from the scale's []" in mismatched[0].message


def test_qdq_types():
    m = matmul_qdq()
    for node in m.graph.node[:2]:
        del node.input[2]  # no zero point: QuantizeLinear makes UINT8
    assert any(f.rule == "qdq-types" and "UINT8" in f.message for f in lint(m).findings)
    assert any(f.rule == "qdq-types" and "scale type DOUBLE" in f.message
               for f in lint(matmul_qdq(act_scale=np.float64(0.1))).findings)


def test_qdq_per_channel_only_on_constants():
    m = matmul_qdq(act_scale=np.full(8, 0.1, np.float32), act_zp=np.zeros(8, np.int8))
    assert any(f.rule == "qdq-per-channel" and "activations are quantized per tensor" in f.message
               for f in lint(m).findings)
    wrong_count = matmul_qdq(w_scale=np.full(3, 0.01, np.float32))
    assert any(f.rule == "qdq-per-channel" for f in lint(wrong_count).findings)


def test_qdq_weight_axis_is_the_output_channel():
    m = matmul_qdq(w_scale=np.full(8, 0.01, np.float32), axis=0)
    assert any(f.rule == "qdq-weight-axis" and "axis 1" in f.message for f in lint(m).findings)


def int4_matmul(block: int, k: int = 128, axis: int = 0, scale_shape=None):
    import ml_dtypes

    weight = np.ones((k, 4), ml_dtypes.int4)
    scale = np.full(scale_shape or (k // block, 4), 0.01, np.float16)
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=axis, block_size=block),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    return model(nodes, [("x", F16, [2, k])], [("y", F16, [2, 4])],
                 [("w", weight), ("ws", scale), ("wz", np.zeros(scale.shape, ml_dtypes.int4))], 21)


def test_int4_block_sizes():
    assert rules_hit(int4_matmul(64)) == set() and rules_hit(int4_matmul(128)) == set()  # W4A16: clean
    findings = lint(int4_matmul(32)).findings
    assert {f.rule for f in findings} == {"qdq-int4"} and "block size 32" in findings[0].message


def test_block_quantization_shape_and_axis():
    assert "qdq-block" in rules_hit(int4_matmul(64, scale_shape=(1, 4)))
    import ml_dtypes

    weight = np.ones((2, 128, 4), ml_dtypes.int4)  # rank 3, blocked along axis 0: not one of the last two dims
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0, block_size=2),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = model(nodes, [("x", F16, [2, 3, 128])], [("y", F16, None)],
              [("w", weight), ("ws", np.full((1, 128, 4), 0.1, np.float16)),
               ("wz", np.zeros((1, 128, 4), ml_dtypes.int4))], 21)
    assert any(f.rule == "qdq-block" and "last two dims" in f.message for f in lint(m).findings)
    int8_block = matmul_qdq(weight=np.ones((8, 4), np.int8), w_scale=np.full((2, 4), 0.01, np.float32), axis=0, block=4,
                            opset=21)
    assert any(f.rule == "qdq-block" and "INT8" in f.message for f in lint(int8_block).findings)


def test_int4_is_weight_only():
    import ml_dtypes

    m = matmul_qdq(act_zp=np.zeros((), ml_dtypes.int4), opset=21)
    assert any(f.rule == "qdq-int4" and "weights only" in f.message for f in lint(m).findings)


def test_int4_weights_need_an_even_last_dimension(tmp_path):
    """TensorRT's ONNX parser packs INT4 in pairs along the last dimension: a 37-class head is refused, with the fix."""
    import vitrt

    model = tiny_vit(depth=1, num_classes=37, mlp_ratio=2.0)
    with pytest.raises(VitrtError, match=r"int4-packing.*head.*odd last dimension.*quant.exclude head"):
        vitrt.compile(model, tmp_path / "odd", quiet=True, backend="trt", no_build=True, precision="int4w")
    assert not (tmp_path / "odd").exists()
    result = vitrt.compile(model, tmp_path / "ok", quiet=True, backend="trt", no_build=True, precision="int4w",
                           quant_exclude="head")
    assert result.manifest["trt_lint"]["errors"] == [] and "head" not in result.manifest["quantization"]["layers"]
    assert result.manifest["opset"] == 21 and result.manifest["engine_build"]["requires"] == [
        "ONNX opset 21: TensorRT 10.0/10.1's parser documents opsets up to 20, 10.15's up to 24: use a release after "
        "10.1"]
    ort = vitrt.compile(model, tmp_path / "ort", quiet=True, precision="int4w")  # ONNX Runtime packs any width
    assert "head" in ort.manifest["quantization"]["layers"]
    assert [f["rule"] for f in ort.manifest["trt_lint"]["errors"]] == ["int4-packing"]  # recorded, for the record


def test_qdq_pairs():
    m = matmul_qdq(extra=[helper.make_node("Relu", ["xq"], ["r"], name="relu")])
    assert any(f.rule == "qdq-pairs" and "feeds Relu" in f.message for f in lint(m).findings)
    other_scale = matmul_qdq()
    next(n for n in other_scale.graph.node if n.name == "dq").input[1] = "ws0"
    other_scale.graph.initializer.append(numpy_helper.from_array(np.float32(0.2), "ws0"))
    assert any(f.rule == "qdq-pairs" and "different scale" in f.message for f in lint(other_scale).findings)


def test_qdq_placement():
    m = matmul_qdq(extra=[helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="q_out"),
                          helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["yd"], name="dq_out"),
                          helper.make_node("Softmax", ["yd"], ["p"], name="softmax")])
    messages = [f.message for f in lint(m).findings if f.rule == "qdq-placement"]
    assert any("output of MatMul 'mm'" in m for m in messages) and any("feeds Softmax" in m for m in messages)
    assert all(f.severity == "warning" for f in qdq_findings(m) if f.rule == "qdq-placement")


# --- fusion warnings -------------------------------------------------------------------------------------------

def attention(scale_after: bool = False, cast: bool = False):
    """q, k, v [1, 2, 4, 8] -> (q·s) kᵀ -> softmax -> ·v; optionally the scale after QKᵀ or a Cast pair inside."""
    nodes = [helper.make_node("Mul", ["q", "s"], ["qs"], name="q_scale"),
             helper.make_node("MatMul", ["qs" if not scale_after else "q", "kt"], ["qk"], name="qk")]
    logits = "qk"
    if scale_after:
        nodes.append(helper.make_node("Mul", ["qk", "s"], ["qks"], name="scale_after"))
        logits = "qks"
    if cast:
        nodes.append(helper.make_node("Cast", [logits], ["l32"], name="to_fp32", to=F))
        nodes.append(helper.make_node("Softmax", ["l32"], ["p32"], name="softmax", axis=-1))
        nodes.append(helper.make_node("Cast", ["p32"], ["p"], name="to_fp16", to=F16))
    else:
        nodes.append(helper.make_node("Softmax", [logits], ["p"], name="softmax", axis=-1))
    nodes.append(helper.make_node("MatMul", ["p", "v"], ["o"], name="av"))
    t = F16
    return model(nodes, [("q", t, [1, 2, 4, 8]), ("kt", t, [1, 2, 8, 4]), ("v", t, [1, 2, 4, 8])],
                 [("o", t, [1, 2, 4, 8])], [("s", np.float16(0.35))])


def test_fusion_attention_scale():
    assert rules_hit(attention()) == set()
    findings = lint(attention(scale_after=True)).findings
    assert [(f.rule, f.node) for f in findings] == [("fusion-attention-scale", "scale_after")]
    assert findings[0].severity == "warning" and check_trt(attention(scale_after=True)).warnings == list(findings)


def test_fusion_attention_cast():
    findings = lint(attention(cast=True)).findings
    assert {(f.rule, f.node) for f in findings} == {("fusion-attention-cast", "to_fp32"),
                                                    ("fusion-attention-cast", "to_fp16")}


def test_fusion_int4_with_fp32_activations():
    import ml_dtypes

    k = 128
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0, block_size=64),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = model(nodes, [("x", F, [2, k])], [("y", F, [2, 4])],
              [("w", np.ones((k, 4), ml_dtypes.int4)), ("ws", np.full((2, 4), 0.01, np.float32)),
               ("wz", np.zeros((2, 4), ml_dtypes.int4))], 21)
    assert [(f.rule, f.node) for f in lint(m).findings] == [("fusion-int4-activations", "wdq")]


# --- the report and the compile -----------------------------------------------------------------------------

def test_check_trt_names_the_first_error_in_one_line():
    m = matmul_qdq(act_zp=np.int8(3))
    with pytest.raises(VitrtError, match=r"^TensorRT would not accept the compiled graph: \[qdq-zero-point\] "
                                         r"QuantizeLinear 'q': zero point is not 0 .* at node 'q' \(and 1 more"):
        check_trt(m)
    report = lint(m).to_dict()
    assert len(report["errors"]) == 2 and report["errors"][0]["source"].startswith("NvInfer.h")
    with pytest.raises(VitrtError, match="unknown TensorRT lint rule"):
        lint(m, ["no-such-rule"])


def test_lint_never_modifies_the_model():
    m = attention(scale_after=True)
    before = m.SerializeToString()
    lint(m)
    assert m.SerializeToString() == before


def test_compile_records_the_lint_in_the_manifest(tmp_path, capsys):
    import vitrt

    # int4w for ort keeps FP32 activations (faster on ONNX Runtime's CPU provider): TensorRT would want W4A16
    result = vitrt.compile(tiny_vit(depth=1, img_size=64), tmp_path / "out", name="tiny", batch=2, precision="int4w")
    section = result.manifest["trt_lint"]
    assert section["errors"] == [] and {w["rule"] for w in section["warnings"]} == {"fusion-int4-activations"}
    assert set(section["rules_checked"]) == set(RULES)
    assert f"TensorRT lint: 0 error(s), {len(section['warnings'])} warning(s)" in capsys.readouterr().err
    trt = vitrt.compile(tiny_vit(depth=1, img_size=64), tmp_path / "trt", name="tiny", batch=2, precision="int4w",
                        backend="trt", no_build=True)  # the same for TensorRT: W4A16, nothing to warn about
    assert trt.manifest["trt_lint"]["warnings"] == []


def test_cli_lint_trt(tmp_path, capsys):
    import json

    from vitrt.cli import main

    path = tmp_path / "model.onnx"
    onnx.save(attention(scale_after=True), str(path))
    assert main(["lint-trt", str(path), "--json", str(tmp_path / "lint.json")]) == 0  # warnings only
    out = capsys.readouterr().out
    assert "warning: [fusion-attention-scale] scale_after:" in out and "0 error(s), 1 warning(s)" in out
    assert json.loads((tmp_path / "lint.json").read_text())["warnings"][0]["node"] == "scale_after"
    assert main(["lint-trt", str(path), "--strict"]) == 1
    onnx.save(matmul_qdq(act_zp=np.int8(3)), str(tmp_path / "bad.onnx"))
    assert main(["lint-trt", str(tmp_path / "bad.onnx")]) == 1
    assert "error: [qdq-zero-point] q: QuantizeLinear 'q': zero point is not 0" in capsys.readouterr().out
    (tmp_path / "junk.onnx").write_text("not a model")
    assert main(["lint-trt", str(tmp_path / "junk.onnx")]) == 2
    assert capsys.readouterr().err.startswith("vitrt: error: cannot read")
    (tmp_path / "empty.onnx").write_bytes(b"")  # protobuf parses it as an empty model: not "a rule broken" (exit 1)
    assert main(["lint-trt", str(tmp_path / "empty.onnx")]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err
    assert main(["lint-trt", "--rules"]) == 0 and "source: NvInfer.h" in capsys.readouterr().out


# --- issue 11's done criterion: no error and no fusion warning on any supported model or stack ------------------
# The stacks compile for TensorRT (--backend trt --no-build: the graph TensorRT would build, without TensorRT here).
MODELS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "deit_tiny_patch16_224",
          "deit_small_patch16_224", "deit_base_patch16_224", "deit_tiny_distilled_patch16_224",
          "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224"]
STACKS = {
    "dense": {}, "tome": {"tome": "2"}, "tome+lgtm": {"tome": "2", "lgtm_window": 2},
    "int8": {"precision": "int8", "calib_data": "synthetic"},
    "int8+attention": {"precision": "int8", "calib_data": "synthetic", "quantize_attention": True},
    "fp8": {"precision": "fp8", "calib_data": "synthetic"},
    "fp8+attention": {"precision": "fp8", "calib_data": "synthetic", "quantize_attention": True},
    "fp16": {"precision": "fp16"}, "bf16": {"precision": "bf16"}, "int4w": {"precision": "int4w"},
    "2:4": {"sparsity": "2:4"}, "dynamic-batch": {"dynamic_batch": True},
    "fp16+tome+2:4+dynamic": {"precision": "fp16", "tome": "2", "sparsity": "2:4", "dynamic_batch": True},
}


def assert_trt_clean(model: onnx.ModelProto) -> None:
    report = lint(model)
    assert report.errors == [] and [f for f in report.warnings if f.rule.startswith("fusion-")] == [], \
        report.summary()


FAST_MODELS = ("vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
               "vit_small_patch16_224")  # the rest (small, base: 20 s each to create and lower) under -m slow


@pytest.mark.parametrize("name", [n if n in FAST_MODELS else pytest.param(n, marks=pytest.mark.slow) for n in MODELS])
def test_every_supported_model_lowers_trt_clean(name):
    from vitrt.compiler.models import load_timm_model

    torch.manual_seed(0)
    assert_trt_clean(lower(canonicalize(load_timm_model(name, img_size=32)), batch=1))


@pytest.mark.parametrize("stack", list(STACKS))
def test_every_stack_compiles_trt_clean(stack, tmp_path):
    import vitrt

    result = vitrt.compile(tiny_vit(depth=2, img_size=64), tmp_path / "out", name="tiny", batch=2, quiet=True,
                           backend="trt", no_build=True, **STACKS[stack])
    assert result.manifest["trt_lint"]["warnings"] == [] and result.manifest["trt_lint"]["errors"] == []
    assert_trt_clean(onnx.load(str(result.onnx_path)))


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_graphs_for_tensorrt_carry_fp16_between_the_quantized_layers(precision, tmp_path):
    """A strongly typed engine runs each layer in its graph's type: Q/DQ around FP16 activations (FP16 scales, so
    opset >= 19) with LayerNorm in FP32, as Model Optimizer's high_precision_dtype default; ONNX Runtime keeps FP32."""
    import vitrt

    result = vitrt.compile(tiny_vit(depth=2, img_size=64), tmp_path / "out", name="tiny", batch=2, quiet=True,
                           backend="trt", no_build=True, verify=True, precision=precision, calib_data="synthetic",
                           quantize_attention=True)
    model = onnx.load(str(result.onnx_path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    section = result.manifest["quantization"]
    assert opset == section["opset"] == result.manifest["opset"] >= 19 and section["activations"] == "fp16"
    needs = result.manifest["engine_build"].get("requires", [])
    assert any("compute capability >= 8.9" in n for n in needs) == (precision == "fp8")
    assert any("per-channel scaling for FP8 GEMMs" in n for n in needs) == (precision == "fp8")
    assert "strongly typed" in section["activations_why"] and result.manifest["verify"]["ok"]
    types = {t.name: t.data_type for t in model.graph.initializer}
    scales = [types[n.input[1]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and set(scales) == {onnx.TensorProto.FLOAT16}
    produced = {o: n for n in model.graph.node for o in n.output}
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(produced[n.input[0]].op_type == "Cast" for n in norms)  # LayerNorm kept in FP32
    assert_trt_clean(model)
    ort = vitrt.compile(tiny_vit(depth=2, img_size=64), tmp_path / "ort", name="tiny", batch=2, quiet=True,
                        precision=precision, calib_data="synthetic")
    assert ort.manifest["quantization"]["activations"] == "fp32"


def test_pruned_model_with_removed_attention_is_trt_clean(tmp_path):
    import dataclasses

    import vitrt
    from vitrt.compiler.twin import CanonicalViT

    spec = canonicalize(tiny_vit(depth=2)).spec
    spec = spec.with_blocks([dataclasses.replace(spec.blocks[0], heads=0), spec.blocks[1]])
    result = vitrt.compile(CanonicalViT(spec).eval(), tmp_path / "out", name="pruned", batch=2, quiet=True,
                           backend="trt", no_build=True)
    assert result.manifest["spec_after"]["blocks"][0]["heads"] == 0
    assert_trt_clean(onnx.load(str(result.onnx_path)))
