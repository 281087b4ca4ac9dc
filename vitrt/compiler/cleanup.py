"""Cleanup: fold constants, remove dead nodes, toposort and infer every shape (function-preserving)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from vitrt.compiler.graph import GraphView, import_graph
from vitrt.compiler.pass_manager import CANONICAL, SHAPES_INFERRED, TOPOSORTED, Pass, PassContext, PassResult


BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


class CleanupPass(Pass):
    name = "cleanup"
    requires = frozenset()
    ensures = frozenset({SHAPES_INFERRED, TOPOSORTED})
    preserves = frozenset({CANONICAL})

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        graph = view.graph
        nodes_before = len(graph.nodes)
        # Folding goes through ONNX Runtime for anything beyond trivial shape arithmetic; it evaluates
        # constant subgraphs (e.g. reshape targets computed from shapes, masks built by other passes). Its CPU
        # provider has no bfloat16 kernels, so bf16 nodes stay unfolded (TensorRT folds them when it builds).
        graph.fold_constants(error_ok=False, should_exclude_node=_touches_bfloat16) \
            .cleanup(remove_unused_graph_inputs=False).toposort()
        model = gs.export_onnx(graph)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        new_graph = import_graph(model)
        unknown = [t.name for t in new_graph.tensors().values()
                   if isinstance(t, gs.Variable) and (t.shape is None or any(not isinstance(d, int) for d in t.shape))
                   and not _is_dynamic_batch(t)]
        stats = {"nodes_removed": nodes_before - len(new_graph.nodes), "tensors_without_static_shape": len(unknown)}
        modified = nodes_before != len(new_graph.nodes)
        return PassResult(GraphView(new_graph, view.spec), modified, stats)


def _touches_bfloat16(node: gs.Node) -> bool:
    """Whether ``node`` reads or writes a bfloat16 tensor (graphsurgeon keeps the type as the numpy dtype vitrt set
    or, for an imported graph, as ONNX's enum)."""
    return any(t.dtype is not None and (t.dtype == BFLOAT16 or t.dtype == onnx.TensorProto.BFLOAT16)
               for t in list(node.inputs) + list(node.outputs))


def _is_dynamic_batch(tensor: gs.Variable) -> bool:
    """A tensor whose only symbolic dim is the leading batch dim (dynamic-batch models)."""
    shape = tensor.shape
    return bool(shape) and isinstance(shape[0], str) and all(isinstance(d, int) for d in shape[1:])
