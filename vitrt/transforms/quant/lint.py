"""TensorRT Q/DQ rules lint: checks a quantized ONNX model against what TensorRT's explicit quantization accepts.

Rules (each violation is one line naming the node):
  symmetric         every zero point is a constant of zeros (or omitted)
  scale             every scale is a constant initializer, finite and > 0
  per-tensor        QuantizeLinear (activations) has a scalar scale
  per-channel axis  a weight DequantizeLinear feeding MatMul B[K, N] has axis 1 and N scales (or, block-wise,
                    axis 0 with block_size 32/64/128 and [K / block, N] scales); a Conv weight: axis 0, O scales
  no output Q/DQ    no QuantizeLinear reads a MatMul / Gemm / Conv output (or its bias Add)
  pairs             every QuantizeLinear feeds only DequantizeLinear nodes with the same scale
  float ops         LayerNormalization, Softmax and Erf (GELU) take no dequantized input
  opset             int8 Q/DQ needs opset >= 13, float8 >= 19, int4 / block_size >= 21
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from vitrt.compiler.errors import VitrtError

LINEAR_OPS = ("MatMul", "Gemm", "Conv")
FLOAT_OPS = ("LayerNormalization", "Softmax", "Erf")
MIN_OPSET_BY_TYPE = {TensorProto.INT8: 13, TensorProto.UINT8: 13, TensorProto.FLOAT8E4M3FN: 19,
                     TensorProto.INT4: 21, TensorProto.UINT4: 21}
BLOCK_SIZES = (32, 64, 128)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def lint_qdq(model: onnx.ModelProto) -> list[str]:
    """All violations of TensorRT's Q/DQ rules in ``model`` (empty when it complies)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    opset = _opset(model)
    problems: list[str] = []

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]).astype(np.float64) if name in inits else None

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} '{node.name}'"
        scale = const(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            problems.append(f"{where}: scale '{node.input[1] if len(node.input) > 1 else ''}' is not a constant "
                            "initializer")
            continue
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            problems.append(f"{where}: scale has non-positive or non-finite values (min {scale.min():g})")
        if len(node.input) > 2 and node.input[2]:
            zp = const(node.input[2])
            if zp is None:
                problems.append(f"{where}: zero point is not a constant initializer")
            elif np.any(zp != 0):
                problems.append(f"{where}: zero point is not 0 (TensorRT quantization is symmetric)")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        qtype = _quantized_type(node, inits, producers)
        if qtype in MIN_OPSET_BY_TYPE and opset < MIN_OPSET_BY_TYPE[qtype]:
            problems.append(f"{where}: {TensorProto.DataType.Name(qtype)} Q/DQ needs opset "
                            f">= {MIN_OPSET_BY_TYPE[qtype]}, model has {opset}")
        if "block_size" in attrs and attrs["block_size"] and opset < 21:
            problems.append(f"{where}: block-wise quantization needs opset >= 21, model has {opset}")
        if node.op_type == "QuantizeLinear":
            if scale.size != 1:
                problems.append(f"{where}: activation scale must be per tensor, has shape {list(scale.shape)}")
            src = producers.get(node.input[0])
            if src is not None and (src.op_type in LINEAR_OPS or _is_bias_add(src, producers)):
                problems.append(f"{where}: quantizes the output of {src.op_type} '{src.name}' (Q/DQ go on MatMul / "
                                "Conv inputs only)")
            for user, _ in consumers.get(node.output[0], []):
                if user.op_type != "DequantizeLinear":
                    problems.append(f"{where}: feeds {user.op_type} '{user.name}', expected a DequantizeLinear")
                elif user.input[1] not in inits or not np.array_equal(const(user.input[1]), scale):
                    problems.append(f"{where}: its DequantizeLinear '{user.name}' uses a different scale")
        else:
            problems += _check_weight_dq(node, where, scale, attrs, inits, consumers)
            for user, _ in consumers.get(node.output[0], []):
                if user.op_type in FLOAT_OPS:
                    problems.append(f"{where}: feeds {user.op_type} '{user.name}', which must stay in float")
    return problems


def _quantized_type(node, inits, producers) -> int | None:
    if node.op_type == "DequantizeLinear":
        name = node.input[0]
        if name in inits:
            return inits[name].data_type
        src = producers.get(name)
        node = src if src is not None and src.op_type == "QuantizeLinear" else None
        if node is None:
            return None
    if len(node.input) > 2 and node.input[2] in inits:
        return inits[node.input[2]].data_type
    return TensorProto.UINT8  # QuantizeLinear without zero point defaults to uint8


def _is_bias_add(node, producers) -> bool:
    return node.op_type == "Add" and any(producers.get(i) is not None and producers[i].op_type in LINEAR_OPS
                                         for i in node.input)


def _check_weight_dq(node, where, scale, attrs, inits, consumers) -> list[str]:
    """A DequantizeLinear of a constant weight: its axis must be the consumer's output channel."""
    if node.input[0] not in inits:
        return []
    weight = inits[node.input[0]]
    shape = list(weight.dims)
    problems = []
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    for user, index in consumers.get(node.output[0], []):
        if user.op_type == "MatMul" and index == 1 and len(shape) == 2:
            k, n = shape
            if block:
                if axis != 0 or block not in BLOCK_SIZES or list(scale.shape) != [k // block, n] or k % block:
                    problems.append(f"{where}: block-wise weight must use axis 0, block_size in {BLOCK_SIZES} and "
                                    f"{[k // max(block, 1), n]} scales; has axis {axis}, block {block}, "
                                    f"scales {list(scale.shape)}")
            elif scale.size != 1 and (axis != 1 or list(scale.shape) != [n]):
                problems.append(f"{where}: per-channel weight of MatMul '{user.name}' must use axis 1 with {n} scales "
                                f"(B[K, N]); has axis {axis} and scales {list(scale.shape)}")
        elif user.op_type == "Conv" and index == 1:
            if scale.size != 1 and (axis != 0 or list(scale.shape) != [shape[0]]):
                problems.append(f"{where}: per-channel weight of Conv '{user.name}' must use axis 0 with {shape[0]} "
                                f"scales; has axis {axis} and scales {list(scale.shape)}")
        elif user.op_type in LINEAR_OPS and index == 0:
            problems.append(f"{where}: a constant feeds input 0 of {user.op_type} '{user.name}'")
    return problems


def check_qdq(model: onnx.ModelProto) -> None:
    """Raise VitrtError with the first violation (and how many there are)."""
    problems = lint_qdq(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VitrtError(f"Q/DQ lint: {problems[0]}{more}")
