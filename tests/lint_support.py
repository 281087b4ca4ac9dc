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
