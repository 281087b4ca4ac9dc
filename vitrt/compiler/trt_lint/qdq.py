"""Q/DQ rules: what TensorRT's explicit quantization accepts (NvInfer.h IQuantizeLayer / IDequantizeLayer, the
quantization guide) and where vitrt places Q/DQ for it. The Q/DQ pass runs these as its postcondition.

Each check takes a :class:`LintGraph` and yields ``(node name, message)`` for every violation of its rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from vitrt.compiler.trt_lint.graph import LintGraph, type_name

QUANTIZED_TYPES = frozenset({TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}
                            | ({TensorProto.FLOAT4E2M1} if hasattr(TensorProto, "FLOAT4E2M1") else set()))
BLOCK_TYPES = QUANTIZED_TYPES - {TensorProto.INT8}  # NvInfer.h: block quantization for INT4, FP8 and FP4
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
INT4_BLOCK_SIZES = (64, 128)
MIN_OPSET = {TensorProto.FLOAT8E4M3FN: 19, TensorProto.INT4: 21, TensorProto.UINT4: 21}
WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")
FLOAT_ONLY_OPS = ("LayerNormalization", "Softmax", "Erf")


@dataclass
class QdqNode:
    node: onnx.NodeProto
    scale: np.ndarray | None  # None: not a constant
    zero_point: np.ndarray | None  # None: absent or not a constant (see has_zero_point)
    has_zero_point: bool
    qtype: int | None  # the quantized type (INT8, FLOAT8E4M3FN, INT4, ...)
    block: int  # block_size (0: not block-wise)
    axis: int | None  # normalised quantization axis (None when the input rank is unknown)
    input_shape: list | None
    input_constant: bool  # DQ of an initializer / Q of a constant

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and self.scale.size > 1 and not self.block

    @property
    def where(self) -> str:
        return f"{self.node.op_type} '{self.node.name}'"


def qdq_nodes(g: LintGraph) -> list[QdqNode]:
    """Every QuantizeLinear / DequantizeLinear with its constants read once (cached on ``g``)."""
    if "qdq" in g.cache:
        return g.cache["qdq"]
    out = []
    for node in g.nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        attrs = g.attrs(node)
        zp_name = node.input[2] if len(node.input) > 2 else ""
        shape = g.shape(node.input[0])
        axis = int(attrs.get("axis", 1))
        if shape is not None and axis < 0:
            axis += len(shape)
        if node.op_type == "DequantizeLinear":
            qtype = g.elem_type(node.input[0]) or (g.elem_type(zp_name) if zp_name else None)
        else:
            qtype = g.elem_type(zp_name) if zp_name else int(attrs.get("output_dtype", 0)) or TensorProto.UINT8
        out.append(QdqNode(node, g.const(node.input[1]) if len(node.input) > 1 else None,
                           g.const(zp_name) if zp_name else None, bool(zp_name), qtype,
                           int(attrs.get("block_size", 0)), axis if shape is not None else None, shape,
                           g.is_constant(node.input[0])))
    g.cache["qdq"] = out
    return out


def qdq_opset(g: LintGraph):
    for q in qdq_nodes(g):
        need = max(MIN_OPSET.get(q.qtype, 10), 13 if q.per_channel else 10, 21 if q.block else 10)
        if g.opset is not None and g.opset < need:
            form = "block-wise" if q.block else type_name(q.qtype) + (" per-axis" if q.per_channel else "")
            yield q.node.name, f"{q.where}: {form} Q/DQ needs opset >= {need}, the model has {g.opset}"


def qdq_scale(g: LintGraph):
    for q in qdq_nodes(g):
        if q.scale is None:
            yield q.node.name, f"{q.where}: scale '{q.node.input[1] if len(q.node.input) > 1 else ''}' is not a constant"
            continue
        if not np.all(np.isfinite(q.scale)) or np.any(q.scale <= 0):
            yield q.node.name, f"{q.where}: scale has non-positive or non-finite values (min {q.scale.min():g})"
        if q.scale.ndim > 2:
            yield q.node.name, f"{q.where}: scale has rank {q.scale.ndim}, TensorRT takes rank <= 2"


def qdq_zero_point(g: LintGraph):
    for q in qdq_nodes(g):
        if not q.has_zero_point:
            continue
        if q.zero_point is None:
            yield q.node.name, f"{q.where}: zero point '{q.node.input[2]}' is not a constant"
        elif np.any(q.zero_point != 0):
            yield q.node.name, f"{q.where}: zero point is not 0 (TensorRT quantization is symmetric)"
        elif q.scale is not None and list(q.zero_point.shape) != list(q.scale.shape):
            yield q.node.name, f"{q.where}: zero point shape {list(q.zero_point.shape)} differs from the scale's " \
                               f"{list(q.scale.shape)} (they must have identical dimensions)"


def qdq_types(g: LintGraph):
    for q in qdq_nodes(g):
        if q.qtype is not None and q.qtype not in QUANTIZED_TYPES:
            hint = " (a QuantizeLinear without zero point quantizes to UINT8)" if q.qtype == TensorProto.UINT8 else ""
            yield q.node.name, f"{q.where}: quantized type {type_name(q.qtype)} is not INT8, FLOAT8E4M3FN or INT4{hint}"
        scale_type = g.elem_type(q.node.input[1]) if len(q.node.input) > 1 else None
        out_type = int(g.attrs(q.node).get("output_dtype", 0)) if q.node.op_type == "DequantizeLinear" else 0
        if scale_type is not None and scale_type not in FLOAT_TYPES:
            yield q.node.name, f"{q.where}: scale type {type_name(scale_type)} is not FLOAT, FLOAT16 or BFLOAT16"
        if out_type and out_type not in FLOAT_TYPES:
            yield q.node.name, f"{q.where}: output type {type_name(out_type)} is not FLOAT, FLOAT16 or BFLOAT16"
        if q.node.op_type == "QuantizeLinear":
            in_type = g.elem_type(q.node.input[0])
            if in_type is not None and in_type not in FLOAT_TYPES:
                yield q.node.name, f"{q.where}: input type {type_name(in_type)} is not FLOAT, FLOAT16 or BFLOAT16"


def qdq_per_channel(g: LintGraph):
    for q in qdq_nodes(g):
        if not q.per_channel:
            continue
        if not q.input_constant:
            yield q.node.name, f"{q.where}: per-channel scale {list(q.scale.shape)} on a computed tensor; " \
                               "activations are quantized per tensor (per-channel only for weights)"
        elif q.scale.ndim != 1 or (q.axis is not None and (not 0 <= q.axis < len(q.input_shape) or
                                                            q.input_shape[q.axis] not in (None, q.scale.size))):
            yield q.node.name, f"{q.where}: per-channel scale {list(q.scale.shape)} must be 1-D with one value per " \
                               f"element of axis {q.axis} (input {q.input_shape})"


def qdq_block(g: LintGraph):
    for q in qdq_nodes(g):
        if not q.block:
            continue
        if q.qtype not in BLOCK_TYPES:
            yield q.node.name, f"{q.where}: block quantization of {type_name(q.qtype)}; TensorRT blocks only INT4, " \
                               "FP8 and FP4"
        shape = q.input_shape
        if shape is None or q.scale is None:
            continue
        rank = len(shape)
        if q.axis not in (rank - 1, rank - 2):
            yield q.node.name, f"{q.where}: blocks along axis {q.axis} of a rank-{rank} input; TensorRT blocks along " \
                               "one of the last two dims"
            continue
        dim = shape[q.axis]
        expected = [d if i != q.axis else (None if dim is None else dim // q.block) for i, d in enumerate(shape)]
        if (dim is not None and dim % q.block) or q.scale.ndim != rank or any(
                e is not None and e != s for e, s in zip(expected, q.scale.shape)):
            yield q.node.name, f"{q.where}: block {q.block} along axis {q.axis} of {shape} needs scales {expected} " \
                               f"(the block dividing the dim), has {list(q.scale.shape)}"


def qdq_int4(g: LintGraph):
    for q in qdq_nodes(g):
        if q.qtype != TensorProto.INT4:
            continue
        if q.node.op_type == "QuantizeLinear" or not q.input_constant:
            yield q.node.name, f"{q.where}: INT4 on a computed tensor; TensorRT supports INT4 for weights only " \
                               "(a DequantizeLinear of a constant)"
        elif q.block not in INT4_BLOCK_SIZES:
            yield q.node.name, f"{q.where}: INT4 block size {q.block or 'none (per tensor / per channel)'}; TensorRT " \
                               f"needs per-block scales with block size in {set(INT4_BLOCK_SIZES)}"


def int4_packing(g: LintGraph):
    for q in qdq_nodes(g):
        if q.qtype == TensorProto.INT4 and q.input_constant and q.input_shape and \
                isinstance(q.input_shape[-1], int) and q.input_shape[-1] % 2:
            yield q.node.name, f"{q.where}: INT4 weight {q.input_shape} has an odd last dimension; TensorRT's ONNX " \
                               "parser packs INT4 in pairs along it: keep this layer float (--quant-exclude " \
                               f"{q.node.name.rsplit('.weight', 1)[0]})"


def qdq_pairs(g: LintGraph):
    for q in qdq_nodes(g):
        if q.node.op_type != "QuantizeLinear":
            continue
        for user, _ in g.consumers.get(q.node.output[0], []):
            if user.op_type != "DequantizeLinear":
                yield q.node.name, f"{q.where}: feeds {user.op_type} '{user.name}', expected a DequantizeLinear"
                continue
            scale = g.const(user.input[1]) if len(user.input) > 1 else None
            zp = g.const(user.input[2]) if len(user.input) > 2 and user.input[2] else None
            if scale is None or q.scale is None or not np.array_equal(scale, q.scale) or \
                    (zp is None) != (q.zero_point is None) or (zp is not None and not np.array_equal(zp, q.zero_point)):
                yield q.node.name, f"{q.where}: its DequantizeLinear '{user.name}' uses a different scale or zero point"
        if q.node.output[0] in g.graph_outputs:
            yield q.node.name, f"{q.where}: its quantized output is a graph output; TensorRT runs quantized types only " \
                               "between Q and DQ"


def qdq_weight_axis(g: LintGraph):
    for q in qdq_nodes(g):
        if q.node.op_type != "DequantizeLinear" or not q.per_channel or not q.input_constant or q.axis is None:
            continue
        for user, index in g.consumers.get(q.node.output[0], []):
            expected = {"MatMul": 1, "Conv": 0}.get(user.op_type) if index == 1 else None
            if expected is not None and len(q.input_shape) >= 2 and q.axis != expected:
                yield q.node.name, f"{q.where}: per-channel weight of {user.op_type} '{user.name}' must be quantized " \
                                   f"along its output channels (axis {expected}), has axis {q.axis}"


def is_weighted(g: LintGraph, node) -> bool:
    """A MatMul / Gemm / Conv with a constant (or dequantized constant) weight; batched attention MatMuls are not."""
    if node is None or node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
        return False
    weight = node.input[1]
    dq = g.producers.get(weight)
    return g.is_constant(weight) or (dq is not None and dq.op_type == "DequantizeLinear"
                                     and g.is_constant(dq.input[0]))


def qdq_placement(g: LintGraph):
    for q in qdq_nodes(g):
        if q.node.op_type == "QuantizeLinear":
            src = g.producers.get(q.node.input[0])
            bias_of = next((g.producers.get(i) for i in src.input if is_weighted(g, g.producers.get(i))), None) \
                if src is not None and src.op_type == "Add" else None
            if is_weighted(g, src) or bias_of is not None:
                layer = bias_of if bias_of is not None else src
                yield q.node.name, f"{q.where}: quantizes the output of {layer.op_type} '{layer.name}' (Q/DQ go on " \
                                   "the inputs of weighted ops)"
        else:
            for user, _ in g.consumers.get(q.node.output[0], []):
                if user.op_type in FLOAT_ONLY_OPS:
                    yield q.node.name, f"{q.where}: feeds {user.op_type} '{user.name}', which stays in float"


CHECKS = {
    "qdq-opset": qdq_opset, "qdq-scale": qdq_scale, "qdq-zero-point": qdq_zero_point, "qdq-types": qdq_types,
    "qdq-per-channel": qdq_per_channel, "qdq-block": qdq_block, "qdq-int4": qdq_int4, "int4-packing": int4_packing,
    "qdq-pairs": qdq_pairs,
    "qdq-weight-axis": qdq_weight_axis, "qdq-placement": qdq_placement,
}
