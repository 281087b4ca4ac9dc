"""Tests added by a mutation audit of the TensorRT lint (vitrt.compiler.trt_lint: __init__, graph, operators, ops,
qdq, fusion, requirements, rules): each pins a behaviour that a one-line mutation could change without the existing
tests (tests/test_trt_lint.py, tests/test_graph_mutations.py) noticing. Every graph is a hand-built ONNX model
(onnx.helper) of a few nodes: milliseconds each."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lint_support import F, F16, matmul_qdq, model, rules_hit
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.trt_lint import RULES, check_trt, lint, qdq_findings
from vitrt.compiler.trt_lint.rules import QDQ_RULES

I64 = TensorProto.INT64


def messages(m: onnx.ModelProto, rule: str) -> list[str]:
    return [f.message for f in lint(m).findings if f.rule == rule]


def const_node(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_const",
                            value=numpy_helper.from_array(np.asarray(value), name))


def attention(between=(), downstream=(), softmax_extra_user=False, t=F16):
    """q, kt, v [1, 2, 4, 4]: MatMul(q, kt) -> ``between`` (op, extra input or None) ... -> Softmax ->
    ``downstream`` ops -> MatMul(·, v). Constants: s (a scale), mask."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["t0"], name="qk")]
    last = "t0"
    for i, (op, other) in enumerate(between):
        attrs = {"to": t} if op == "Cast" else {}
        inputs = [last] if other is None else [last, other]
        if op in ("QuantizeLinear", "DequantizeLinear"):
            inputs = [last, "qs", "qz"]
        nodes.append(helper.make_node(op, inputs, [f"t{i + 1}"], name=f"b{i}_{op.lower()}", **attrs))
        last = f"t{i + 1}"
    nodes.append(helper.make_node("Softmax", [last], ["p0"], name="softmax", axis=-1))
    last = "p0"
    for i, op in enumerate(downstream):
        inputs = [last, "qs", "qz"] if op in ("QuantizeLinear", "DequantizeLinear") else [last]
        attrs = {"to": t} if op == "Cast" else {}
        nodes.append(helper.make_node(op, inputs, [f"p{i + 1}"], name=f"d{i}_{op.lower()}", **attrs))
        last = f"p{i + 1}"
    nodes.append(helper.make_node("MatMul", [last, "v"], ["o"], name="av"))
    outputs = [("o", t, None)]
    if softmax_extra_user:
        nodes.append(helper.make_node("ReduceMax", ["p0"], ["pmax"], name="probs_max", keepdims=0))
        outputs.append(("pmax", t, None))
    np_t = np.float16 if t == F16 else np.float32
    inits = [("s", np_t(0.35)), ("mask", np.zeros((1, 1, 1, 4), np_t)), ("qs", np_t(0.1)), ("qz", np.int8(0))]
    return model(nodes, [("q", t, [1, 2, 4, 4]), ("kt", t, [1, 2, 4, 4]), ("v", t, [1, 2, 4, 4])], outputs, inits,
                 opset=19)


# --- the report, check_trt and the rules' data ----------------------------------------------------------------

def test_every_rules_severity_and_category_is_the_documented_one():
    """Errors are what the parser / builder refuses; placement and fusion findings are warnings (rules.py's doc)."""
    expected = {
        "opset-range": ("error", "operator"), "op-unsupported": ("error", "operator"),
        "input-constant": ("error", "operator"), "attribute-value": ("error", "operator"),
        "topk-k": ("error", "operator"), "output-unsupported": ("error", "operator"),
        "int4-packing": ("error", "operator"), "dropout-training": ("error", "operator"),
        "gathernd-batch-dims": ("error", "operator"),
        "qdq-opset": ("error", "qdq"), "qdq-scale": ("error", "qdq"), "qdq-zero-point": ("error", "qdq"),
        "qdq-types": ("error", "qdq"), "qdq-per-channel": ("error", "qdq"), "qdq-block": ("error", "qdq"),
        "qdq-int4": ("error", "qdq"), "qdq-pairs": ("error", "qdq"), "qdq-weight-axis": ("error", "qdq"),
        "qdq-placement": ("warning", "qdq"),
        "fusion-attention-scale": ("warning", "fusion"), "fusion-attention-cast": ("warning", "fusion"),
        "fusion-int4-activations": ("warning", "fusion"),
    }
    assert {rule.id: (rule.severity, rule.category) for rule in RULES.values()} == expected
    assert "int4-packing" not in QDQ_RULES and "qdq-placement" in QDQ_RULES  # a parser limit, not the Q/DQ form


def test_the_summary_names_the_first_error_before_any_warning():
    """LintReport.summary: 'first:' is the first error even when a warning was found too."""
    m = attention(between=[("Mul", "s")])  # a fusion warning
    m.graph.node.append(helper.make_node("Unique", ["v"], ["u"], name="uniq"))
    summary = lint(m).summary()
    assert summary.startswith("TensorRT lint: 1 error(s), 1 warning(s); first: [op-unsupported]"), summary


def test_check_trt_with_one_error_mentions_no_more():
    """check_trt's message adds '(and N more ...)' only when there is more than one error."""
    m = model([helper.make_node("Unique", ["x"], ["y"], name="u")], [("x", F, [4])], [("y", F, [4])])
    with pytest.raises(VitrtError) as err:
        check_trt(m)
    assert "at node 'u'" in str(err.value) and "more" not in str(err.value)


def test_the_report_lists_only_the_rules_it_checked():
    """lint(model, rules).to_dict()['rules_checked'] names the rules asked for, not every rule."""
    report = lint(matmul_qdq(), ["opset-range", "qdq-scale"]).to_dict()
    assert report["rules_checked"] == ["opset-range", "qdq-scale"]


def test_qdq_findings_leave_out_the_operator_and_fusion_rules():
    """qdq_findings is the Q/DQ pass's postcondition: a fusion warning or an operator error is not part of it."""
    m = attention(between=[("Mul", "s")])
    m.graph.node.append(helper.make_node("Unique", ["v"], ["u"], name="uniq"))
    assert qdq_findings(m) == [] and rules_hit(m) == {"op-unsupported", "fusion-attention-scale"}


# --- graph view ---------------------------------------------------------------------------------------------------

def test_an_opset_imported_as_ai_onnx_is_the_default_domains():
    """LintGraph.opset reads the default domain under either spelling, '' or 'ai.onnx'."""
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, [2])], [("y", F, [2])])
    m.opset_import[0].domain = "ai.onnx"
    assert "opset-range" not in rules_hit(m)


def test_a_model_without_a_default_domain_opset_is_out_of_range():
    """opset-range: no default-domain opset at all is not in the parser's range (reported as opset None)."""
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, [2])], [("y", F, [2])])
    m.opset_import[0].domain = "custom.domain"
    assert any("opset None" in msg for msg in messages(m, "opset-range"))


def test_constant_node_outputs_are_build_time_constants():
    """input-constant: axes / training_mode from a Constant node are constants; the values are read from it."""
    reduce = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="r")
    m = model([const_node("axes", np.array([1], np.int64)), reduce], [("x", F, [2, 3])], [("y", F, None)], opset=18)
    assert rules_hit(m) == set()
    drop = helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="d")
    on = model([const_node("r", np.float32(0.1)), const_node("t", np.array(True)), drop], [("x", F, [4])],
               [("y", F, [4])])
    assert rules_hit(on) == {"dropout-training"}


def test_a_constant_node_scale_has_its_own_type():
    """LintGraph.elem_type reads a Constant node's tensor type: a DOUBLE scale made by a Constant node is refused."""
    m = matmul_qdq()
    scale = next(t for t in m.graph.initializer if t.name == "s")
    m.graph.initializer.remove(scale)
    m.graph.node.insert(0, const_node("s", np.float64(0.1)))
    assert any("scale type DOUBLE" in msg for msg in messages(m, "qdq-types"))


# --- the parser's per-op restrictions -------------------------------------------------------------------------

def test_reduce_without_an_axes_input_is_not_a_computed_input():
    """A ReduceMean (opset 18) with no axes input at all: nothing to flag, and no crash."""
    m = model([helper.make_node("ReduceMean", ["x"], ["y"], name="r")], [("x", F, [2, 3])], [("y", F, None)],
              opset=18)
    assert rules_hit(m) == set()


@pytest.mark.parametrize("op, index, attrs", [("ReduceL1", 1, {}), ("ReduceSumSquare", 1, {}), ("Squeeze", 1, {}),
                                              ("CumSum", 1, {}), ("Dropout", 2, {})])
def test_every_listed_build_time_input_must_be_a_constant(op, index, attrs):
    """input-constant covers each op of the parser's list at the listed input index (computed from a graph input)."""
    inputs = ["x"] + [f"c{i}" for i in range(1, index)] + ["computed"]
    inits = [(f"c{i}", np.float32(0.1)) for i in range(1, index)]
    node = helper.make_node(op, inputs, ["y"], name="n", **attrs)
    m = model([node], [("x", F, [2, 3]), ("computed", TensorProto.BOOL if op == "Dropout" else I64, [1])],
              [("y", F, None)], inits, opset=18)
    assert any("(computed) is computed" in msg for msg in messages(m, "input-constant")), lint(m).findings


@pytest.mark.parametrize("op, attrs, ok", [
    ("TopK", {}, True),  # sorted defaults to 1
    ("Resize", {}, True), ("Resize", {"antialias": 1}, False),  # antialias defaults to 0
    ("Resize", {"keep_aspect_ratio_policy": "not_larger"}, False),
    ("MaxPool", {"kernel_shape": [2, 2], "dilations": [1, 2]}, False),  # not all ones
    ("AveragePool", {"kernel_shape": [2, 2], "dilations": [2, 2]}, False),
    ("AveragePool", {"kernel_shape": [2, 2], "dilations": [1, 1]}, True),
])
def test_attribute_defaults_and_values(op, attrs, ok):
    """attribute-value: an absent attribute takes ONNX's default (which the parser supports); set values are checked."""
    if op == "TopK":
        node = helper.make_node("TopK", ["x", "k"], ["y", "i"], name="n")
        m = model([node], [("x", F, [1, 1, 8, 8])], [("y", F, None), ("i", I64, None)], [("k", np.array([2]))], 18)
    elif op == "Resize":
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="n", **attrs)
        m = model([node], [("x", F, [1, 1, 8, 8])], [("y", F, None)],
                  [("scales", np.array([1, 1, 2, 2], np.float32))], 18)
    else:
        node = helper.make_node(op, ["x"], ["y"], name="n", **attrs)
        m = model([node], [("x", F, [1, 1, 8, 8])], [("y", F, None)], opset=18)
    assert ("attribute-value" not in rules_hit(m)) == ok, lint(m).findings


def test_lstm_layout_and_input_forget_default_to_zero():
    """attribute-value: an LSTM without layout / input_forget is supported; layout=1 is refused."""
    def lstm(**attrs):
        node = helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="lstm", hidden_size=2, **attrs)
        return model([node], [("x", F, [3, 1, 4])], [("y", F, None)],
                     [("w", np.zeros((1, 8, 4), np.float32)), ("r", np.zeros((1, 8, 2), np.float32))])
    assert "attribute-value" not in rules_hit(lstm())
    assert any("layout=1" in msg for msg in messages(lstm(layout=1), "attribute-value"))


def test_maxpool_indices_output_is_refused_but_empty_optional_outputs_are_not():
    """output-unsupported: MaxPool's Indices output is unsupported; an omitted output (empty name) is no output."""
    pool = helper.make_node("MaxPool", ["x"], ["y", "idx"], name="p", kernel_shape=[2, 2])
    m = model([pool], [("x", F, [1, 1, 4, 4])], [("y", F, None), ("idx", I64, None)])
    assert any("['idx']" in msg for msg in messages(m, "output-unsupported"))
    ln = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "", ""], name="ln", axis=-1)
    m = model([ln], [("x", F, [2, 4])], [("y", F, [2, 4])], [("g", np.ones(4, np.float32)),
                                                             ("b", np.zeros(4, np.float32))])
    assert rules_hit(m) == set()


def test_gathernd_default_batch_dims_is_zero():
    """gathernd-batch-dims: an absent batch_dims is 0, valid for data of rank 2."""
    node = helper.make_node("GatherND", ["x", "i"], ["y"], name="g")
    m = model([node], [("x", F, [5, 4]), ("i", I64, [3, 1])], [("y", F, None)])
    assert "gathernd-batch-dims" not in rules_hit(m)


def test_gathernd_out_of_range_batch_dims_is_one_finding():
    """gathernd-batch-dims: batch_dims out of range is reported once, not again per mismatched batch dim."""
    node = helper.make_node("GatherND", ["x", "i"], ["y"], name="g", batch_dims=3)  # = rank(data): out of range
    m = model([node], [("x", F, [2, 5, 4]), ("i", I64, [3, 6, 4, 1])], [("y", F, None)])
    assert len(messages(m, "gathernd-batch-dims")) == 1


def test_gathernd_with_scalar_indices_is_a_finding_not_a_crash():
    """gathernd-batch-dims: indices of rank 0 have no last dim to read: reported, not an IndexError."""
    node = helper.make_node("GatherND", ["x", "i"], ["y"], name="g")
    m = model([node], [("x", F, [5, 4])], [("y", F, None)], [("i", np.int64(0))])
    assert any("last dim of indices" in msg for msg in messages(m, "gathernd-batch-dims"))

# --- Q/DQ ------------------------------------------------------------------------------------------------------

def test_per_channel_axis_defaults_to_one():
    """A DequantizeLinear without an axis attribute quantizes along axis 1: MatMul B[K, N] per output channel."""
    m = matmul_qdq()
    del next(n for n in m.graph.node if n.name == "wdq").attribute[:]
    assert lint(m).findings == ()


def test_block_wise_qdq_needs_opset_21():
    """qdq-opset: block_size arrived in opset 21, so a block-wise FP8 DequantizeLinear at opset 19 is refused."""
    import ml_dtypes

    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0, block_size=4),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]

    def fp8_block(opset):
        return model(nodes, [("x", F16, [2, 8])], [("y", F16, [2, 4])],
                     [("w", np.ones((8, 4), ml_dtypes.float8_e4m3fn)), ("ws", np.full((2, 4), 0.1, np.float16)),
                      ("wz", np.zeros((2, 4), ml_dtypes.float8_e4m3fn))], opset)
    assert any("block-wise Q/DQ needs opset >= 21" in msg for msg in messages(fp8_block(19), "qdq-opset"))
    assert "qdq-opset" not in rules_hit(fp8_block(21))


def test_qdq_without_a_zero_point_has_no_zero_point_finding():
    """qdq-zero-point applies to a zero point that is given; an FP8 DequantizeLinear without one is fine."""
    import ml_dtypes

    nodes = [helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], name="wdq"),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = model(nodes, [("x", F, [2, 8])], [("y", F, [2, 4])],
              [("w", np.ones((8, 4), ml_dtypes.float8_e4m3fn)), ("ws", np.float32(0.1))], opset=19)
    assert rules_hit(m) == set()


def test_a_quantize_without_a_zero_point_is_itself_the_uint8_finding():
    """qdq-types: a QuantizeLinear without zero point (or output_dtype) makes UINT8: the Q node is refused, with why."""
    m = matmul_qdq()
    for node in m.graph.node[:2]:
        del node.input[2]
    assert any(f.rule == "qdq-types" and f.node == "q" and "without zero point quantizes to UINT8" in f.message
               for f in lint(m).findings)

def test_a_dequantize_reads_its_quantized_type_from_its_input_without_a_zero_point():
    """qdq_nodes: a DequantizeLinear's quantized type is its input's; with no zero point an INT4 weight is still INT4
    (so its block size 32 is refused by qdq-int4)."""
    import ml_dtypes

    nodes = [helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], name="wdq", axis=0, block_size=32),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = model(nodes, [("x", F16, [2, 128])], [("y", F16, [2, 4])],
              [("w", np.ones((128, 4), ml_dtypes.int4)), ("ws", np.full((4, 4), 0.01, np.float16))], 21)
    assert any("INT4 block size 32" in msg for msg in messages(m, "qdq-int4"))


def test_bfloat16_scales_are_a_float_type():
    """qdq-types: scales (and so DequantizeLinear outputs) may be FLOAT, FLOAT16 or BFLOAT16."""
    import ml_dtypes

    m = matmul_qdq(act_scale=np.asarray(0.125, ml_dtypes.bfloat16), opset=19)
    assert "qdq-types" not in rules_hit(m)


def test_a_dequantize_of_an_untyped_tensor_is_not_a_type_error():
    """qdq-types: when the quantized type cannot be inferred (made by a custom op, no zero point) nothing is claimed."""
    nodes = [helper.make_node("Opaque", ["x"], ["xq"], name="opaque", domain="custom"),
             helper.make_node("DequantizeLinear", ["xq", "s"], ["y"], name="dq")]
    m = model(nodes, [("x", F, [2])], [("y", F, None)], [("s", np.float32(0.1))])
    m.opset_import.append(helper.make_opsetid("custom", 1))
    assert "qdq-types" not in rules_hit(m)

def test_a_dequantize_output_type_must_be_float():
    """qdq-types: DequantizeLinear's output_dtype (opset 23) must be FLOAT, FLOAT16 or BFLOAT16."""
    m = matmul_qdq(opset=23)
    next(n for n in m.graph.node if n.name == "dq").attribute.append(
        helper.make_attribute("output_dtype", TensorProto.DOUBLE))
    assert any("output type DOUBLE" in msg for msg in messages(m, "qdq-types"))


def test_a_per_channel_scale_must_be_one_dimensional():
    """qdq-per-channel: a [1, 4] scale for a per-channel weight is refused (one value per element of the axis, 1-D)."""
    m = matmul_qdq(w_scale=np.full((1, 4), 0.01, np.float32))
    assert any("must be 1-D" in msg for msg in messages(m, "qdq-per-channel"))


def test_a_block_scale_must_have_the_inputs_rank():
    """qdq-block: block scales of rank 1 for a rank-2 INT4 weight are refused, even if their first dim matches."""
    import ml_dtypes

    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0, block_size=64),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = model(nodes, [("x", F16, [2, 128])], [("y", F16, [2, 4])],
              [("w", np.ones((128, 4), ml_dtypes.int4)), ("ws", np.full(2, 0.01, np.float16)),
               ("wz", np.zeros(2, ml_dtypes.int4))], 21)
    assert "qdq-block" in rules_hit(m)


def int4_weight(columns: int, quantize: bool = False) -> onnx.ModelProto:
    """x[2, 128] · DQ(INT4 W[128, columns]) (``quantize``: Q(float W) -> DQ instead), blocks of 64 along K, FP16."""
    import ml_dtypes

    scale, zp = np.full((2, columns), 0.01, np.float16), np.zeros((2, columns), ml_dtypes.int4)
    nodes = [helper.make_node("DequantizeLinear", ["wq" if quantize else "w", "ws", "wz"], ["wd"], name="wdq",
                              axis=0, block_size=64),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    weight = np.ones((128, columns), np.float16 if quantize else ml_dtypes.int4)
    if quantize:
        nodes.insert(0, helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="wq", axis=0,
                                         block_size=64))
    return model(nodes, [("x", F16, [2, 128])], [("y", F16, [2, columns])], [("w", weight), ("ws", scale),
                                                                             ("wz", zp)], 21)


def test_an_even_int4_last_dimension_packs_whatever_its_size():
    """int4-packing: only an odd last dimension is refused (6 columns pack in pairs; 5 do not)."""
    assert rules_hit(int4_weight(6)) == set()
    assert rules_hit(int4_weight(5)) == {"int4-packing"}


def test_int4_quantize_of_a_constant_is_not_weight_only_dequantize():
    """qdq-int4: INT4 is a DequantizeLinear of a constant; a QuantizeLinear to INT4 is refused even of a weight."""
    assert any(msg.startswith("QuantizeLinear 'wq': INT4 on a computed tensor")
               for msg in messages(int4_weight(4, quantize=True), "qdq-int4"))


def test_int4_packing_applies_to_weights_only():
    """int4-packing is about INT4 weights (DQ of a constant); an INT4 activation is qdq-int4's error alone."""
    import ml_dtypes

    m = matmul_qdq(act_zp=np.zeros((), ml_dtypes.int4), opset=21)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7  # x [2, 7]
    assert "int4-packing" not in rules_hit(m) and "qdq-int4" in rules_hit(m)


def test_a_zero_point_of_another_shape_breaks_the_pair():
    """qdq-pairs: Q with a scalar zero point and DQ with a [1] one (both 0) are not the same zero point."""
    m = matmul_qdq()
    next(n for n in m.graph.node if n.name == "dq").input[2] = "z1"
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int8), "z1"))
    assert any("different scale or zero point" in msg for msg in messages(m, "qdq-pairs"))


def test_the_weight_axis_rule_reads_only_the_second_matmul_input():
    """qdq-weight-axis: 'MatMul B[K, N] along axis 1' is about input 1; a per-channel constant A[M, K] on input 0,
    quantized along its rows M (its output channels), is not held to axis 1."""
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0),
             helper.make_node("MatMul", ["wd", "x"], ["y"], name="mm")]
    m = model(nodes, [("x", F, [8, 2])], [("y", F, [4, 2])],
              [("w", np.ones((4, 8), np.int8)), ("ws", np.full(4, 0.01, np.float32)), ("wz", np.zeros(4, np.int8))])
    assert "qdq-weight-axis" not in rules_hit(m)

def test_qdq_on_the_output_of_a_plain_weighted_matmul_is_a_placement_warning():
    """qdq-placement: a MatMul with a float constant weight is a weighted op, so Q/DQ on its output is misplaced."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="q"),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["yd"], name="dq")]
    m = model(nodes, [("x", F, [2, 8])], [("yd", F, [2, 4])],
              [("w", np.ones((8, 4), np.float32)), ("s", np.float32(0.1)), ("z", np.int8(0))])
    assert any("output of MatMul 'mm'" in msg for msg in messages(m, "qdq-placement"))


def test_a_dequantized_input_to_layernorm_is_a_placement_warning():
    """qdq-placement: LayerNormalization stays in float, so a DequantizeLinear feeding it is warned about."""
    m = matmul_qdq(extra=[helper.make_node("LayerNormalization", ["xd", "g", "b"], ["n"], name="ln", axis=-1)])
    m.graph.initializer.extend([numpy_helper.from_array(np.ones(8, np.float32), "g"),
                                numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    assert any("feeds LayerNormalization 'ln'" in msg for msg in messages(m, "qdq-placement"))


# --- fusion ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("between, downstream", [
    ([("Div", "s")], ()),  # the scale as a division
    ([("Mul", "s"), ("Sub", "mask")], ()),  # a mask subtracted
    ([("Mul", "s"), ("QuantizeLinear", None), ("DequantizeLinear", None)], ()),  # Q/DQ before the Softmax
    ([("Mul", "s")], ("QuantizeLinear", "DequantizeLinear")),  # Q/DQ after the Softmax (INT8 attention)
    ([("Mul", "s"), ("Add", "mask"), ("Add", "mask"), ("Add", "mask")], ()),  # a longer element-wise chain
])
def test_the_scale_after_the_attention_matmul_is_found_through_the_pattern(between, downstream):
    """fusion-attention-scale: the pattern runs through Div / Sub / Q / DQ upstream and Q / DQ downstream."""
    scale = next(f"b{i}_{op.lower()}" for i, (op, _) in enumerate(between) if op in ("Mul", "Div"))
    findings = [(f.rule, f.node) for f in lint(attention(between, downstream)).findings
                if f.rule.startswith("fusion-")]
    assert findings == [("fusion-attention-scale", scale)]


def test_a_softmax_after_a_weighted_matmul_is_not_attention():
    """The first attention MatMul is batched: a MatMul with a dequantized constant weight does not start the pattern."""
    m = attention([("Mul", "s")])
    w = [helper.make_node("DequantizeLinear", ["wq", "qs", "qz"], ["w"], name="wdq")]
    m.graph.node.insert(0, w[0])
    next(n for n in m.graph.node if n.name == "qk").input[1] = "w"
    m.graph.input.remove(next(i for i in m.graph.input if i.name == "kt"))
    m.graph.initializer.append(numpy_helper.from_array(np.ones((4, 4), np.int8), "wq"))
    assert "fusion-attention-scale" not in rules_hit(m)


def test_probabilities_used_twice_are_not_the_attention_pattern():
    """The Softmax output feeds the second MatMul alone in the fused pattern; used elsewhere too, nothing is fused."""
    assert "fusion-attention-scale" in rules_hit(attention([("Mul", "s")]))
    assert "fusion-attention-scale" not in rules_hit(attention([("Mul", "s")], softmax_extra_user=True))


# --- requirements ------------------------------------------------------------------------------------------------

def test_fp8_activations_alone_need_an_fp8_gpu():
    """tensorrt_requirements: FP8 Q/DQ on activations only (FP8 zero points, float weights) still needs CC >= 8.9."""
    import ml_dtypes

    from vitrt.compiler.backends.base import BuildOptions
    from vitrt.compiler.trt_lint.requirements import tensorrt_requirements

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    m = model(nodes, [("x", F, [2, 8])], [("y", F, [2, 4])],
              [("s", np.float32(0.1)), ("z", np.zeros((), ml_dtypes.float8_e4m3fn)),
               ("w", np.ones((8, 4), np.float32))], opset=19)
    needs = tensorrt_requirements(m, BuildOptions())
    assert len(needs) == 1 and "compute capability >= 8.9" in needs[0]


def test_sparse_weights_need_ampere():
    """tensorrt_requirements: --sparsity 2:4 (sparse_weights) needs compute capability >= 8.0."""
    from vitrt.compiler.backends.base import BuildOptions
    from vitrt.compiler.trt_lint.requirements import tensorrt_requirements

    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", F, [2])], [("y", F, [2])])
    assert tensorrt_requirements(m, BuildOptions()) == []
    needs = tensorrt_requirements(m, BuildOptions(sparse_weights=True))
    assert len(needs) == 1 and "compute capability >= 8.0" in needs[0]


# --- defects found by this audit (fixed with these tests) -------------------------------------------------------

def test_topk_k_given_as_an_attribute_is_held_to_the_limit():
    """Opset 9 is in the parser's range, and TopK-1 (opsets 1-9) carries K as the attribute `k` (the parser reads it
    for opset < 10: onnxOpImporters.cpp TopK). topk-k only reads an input K, so K = 5000 at opset 9 passes."""
    node = helper.make_node("TopK", ["x"], ["v", "i"], name="t", k=5000)
    m = model([node], [("x", F, [1, 6000])], [("v", F, None), ("i", I64, None)], opset=9)
    assert "topk-k" in rules_hit(m)


def test_fp8_qdq_by_output_dtype_needs_an_fp8_gpu():
    """tensorrt_requirements promises 'an FP8-capable GPU for FP8 Q/DQ'; a QuantizeLinear that makes FP8 through its
    output_dtype attribute (opset 21, no zero point: valid ONNX that ONNX Runtime runs) is not recognised."""
    from vitrt.compiler.backends.base import BuildOptions
    from vitrt.compiler.trt_lint.requirements import tensorrt_requirements

    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["xq"], name="q", output_dtype=TensorProto.FLOAT8E4M3FN),
             helper.make_node("DequantizeLinear", ["xq", "s"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    m = model(nodes, [("x", F, [2, 8])], [("y", F, [2, 4])],
              [("s", np.float32(0.1)), ("w", np.ones((8, 4), np.float32))], opset=21)
    assert lint(m).findings == ()  # the lint itself reads the FP8 output_dtype: a clean FP8 Q/DQ
    assert any("compute capability >= 8.9" in need for need in tensorrt_requirements(m, BuildOptions()))


def test_a_per_channel_axis_outside_the_weights_rank_is_a_finding_not_a_crash():
    """qdq_nodes normalises only negative axes; a per-channel DequantizeLinear with axis 2 on a rank-2 weight makes
    qdq-per-channel index input_shape[2] and raise IndexError (vitrt lint-trt prints a traceback)."""
    findings = lint(matmul_qdq(axis=2)).findings
    assert any(f.rule == "qdq-per-channel" for f in findings)
