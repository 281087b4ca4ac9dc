"""A read-only view of an ONNX model for the lint: constants, producers, consumers, inferred types and shapes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


class LintGraph:
    """``model`` with the lookups every check needs. Shapes and types come from ONNX shape inference on a copy
    (the model itself is never changed); where inference cannot say, the lookups answer None."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in self.nodes if n.op_type == "Constant" and n.output}
        self.producers = {out: node for node in self.nodes for out in node.output if out}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.nodes:
            for index, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, index))
        self.graph_outputs = {o.name for o in graph.output}
        self.cache: dict = {}  # per-graph results a family of checks shares
        self._types: dict[str, onnx.TypeProto] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        except Exception:  # noqa: BLE001 - a model inference cannot read still gets every check that needs no shape
            inferred = graph
        for info in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
            self._types[info.name] = info.type

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output (float64 for numeric types), else None."""
        if name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
        elif name in self.constant_nodes:
            attr = self.constant_nodes[name].attribute[0]
            value = np.asarray(onnx.helper.get_attribute_value(attr))
            if isinstance(value.flat[0] if value.size else None, onnx.TensorProto):
                value = numpy_helper.to_array(value.flat[0])
        else:
            return None
        return value if value.dtype == bool else np.asarray(value).astype(np.float64)

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        if name in self.constant_nodes:
            attr = self.constant_nodes[name].attribute[0]
            return attr.t.data_type if attr.type == onnx.AttributeProto.TENSOR else None
        t = self._types.get(name)
        return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type \
            else None

    def shape(self, name: str) -> list[int | None] | None:
        """Dims of ``name`` (None for a symbolic dim), or None when the rank is not known."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        value = self.const(name) if name in self.constant_nodes else None
        if value is not None:
            return list(value.shape)
        t = self._types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]

    def attrs(self, node: onnx.NodeProto) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def producer_op(self, name: str) -> str | None:
        node = self.producers.get(name)
        return node.op_type if node is not None else None


def type_name(elem_type: int | None) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type else "unknown"
