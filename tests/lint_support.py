"""Hand-built ONNX graphs for the TensorRT lint's tests (tests/test_trt_lint.py, tests/test_graph_mutations.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitrt.compiler.trt_lint import lint

F, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    """A model of ``nodes``; inputs and outputs as (name, elem type, shape), initialisers as (name, array)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
                              [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def rules_hit(m: onnx.ModelProto) -> set[str]:
    """The names of the rules ``m`` breaks."""
    return {f.rule for f in lint(m).findings}


def matmul_qdq(act_scale=np.float32(0.1), act_zp=np.int8(0), w_scale=None, w_zp=None, axis=1, extra=(), opset=17,
               weight=None, block=0):
    """x[2, 8] -> Q -> DQ -> MatMul(·, DQ(W[8, 4])) -> y: TensorRT's placement, per-channel weights on axis 1."""
    weight = np.ones((8, 4), np.int8) if weight is None else weight
    w_scale = np.full(4, 0.01, np.float32) if w_scale is None else w_scale
    w_zp = np.zeros(w_scale.shape, weight.dtype) if w_zp is None else w_zp
    attrs = {"axis": axis} | ({"block_size": block} if block else {})
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", **attrs),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"), *extra]
    inits = [("s", act_scale), ("z", act_zp), ("w", weight), ("ws", w_scale), ("wz", w_zp)]
    return model(nodes, [("x", F, [2, 8])], [("y", F, [2, 4])], inits, opset)
