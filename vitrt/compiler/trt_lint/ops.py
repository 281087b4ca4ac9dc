"""Operator rules: the parser's operator list and per-op restrictions (data in :mod:`.operators`).

Each check takes a :class:`LintGraph` and yields ``(node name, message)`` for every violation of its rule.
"""

from __future__ import annotations

import numpy as np

from vitrt.compiler.trt_lint import operators as ops
from vitrt.compiler.trt_lint.graph import LintGraph


def opset_range(g: LintGraph):
    lo, hi = ops.OPSET_RANGE
    if g.opset is None or not lo <= g.opset <= hi:
        yield "", f"default-domain opset {g.opset} is outside the parser's range {lo}..{hi}"


def op_unsupported(g: LintGraph):
    for node in g.nodes:
        if node.domain not in ("", "ai.onnx"):
            yield node.name, f"{node.domain}::{node.op_type} is a custom-domain op: TensorRT needs a plugin for it"
        elif node.op_type in ops.UNSUPPORTED:
            yield node.name, f"{node.op_type} is listed as unsupported by the ONNX-TensorRT parser"
        elif node.op_type not in ops.SUPPORTED:
            yield node.name, f"{node.op_type} is not in the ONNX-TensorRT parser's operator list"


def input_constant(g: LintGraph):
    for node in g.nodes:
        for index, name, wording in ops.CONSTANT_INPUTS.get(node.op_type, ()):
            if len(node.input) > index and node.input[index] and not g.is_constant(node.input[index]):
                yield node.name, f"{node.op_type} input '{name}' ({node.input[index]}) is computed, not a constant: " \
                                 f"{wording}"


def attribute_value(g: LintGraph):
    for node in g.nodes:
        attrs = g.attrs(node)
        for attr, (default, allowed, wording) in ops.ATTRIBUTE_VALUES.get(node.op_type, {}).items():
            value = attrs.get(attr, default)
            value = value.decode() if isinstance(value, bytes) else value
            if value != allowed:
                yield node.name, f"{node.op_type} {attr}={value!r}: {wording}"
        if node.op_type in ops.ALL_ONES_ATTRIBUTES:
            attr, wording = ops.ALL_ONES_ATTRIBUTES[node.op_type]
            if any(v != 1 for v in attrs.get(attr, [])):
                yield node.name, f"{node.op_type} {attr}={list(attrs[attr])}: {wording}"


def topk_k(g: LintGraph):
    for node in g.nodes:
        if node.op_type != "TopK":
            continue
        k = g.const(node.input[1]) if len(node.input) > 1 else np.asarray(g.attrs(node).get("k", 1))  # TopK-1: k
        if k is not None and int(np.max(k)) >= ops.TOPK_MAX_K:
            yield node.name, f"TopK K={int(np.max(k))}: K must be less than {ops.TOPK_MAX_K}"


def output_unsupported(g: LintGraph):
    for node in g.nodes:
        if node.op_type in ops.OUTPUTS:
            count, wording = ops.OUTPUTS[node.op_type]
            extra = [name for name in node.output[count:] if name]
            if extra:
                yield node.name, f"{node.op_type} declares output(s) {extra}: {wording}"


def dropout_training(g: LintGraph):
    for node in g.nodes:
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            value = g.const(node.input[2])
            if value is not None and bool(np.any(value)):
                yield node.name, "Dropout training_mode is True: it must evaluate to False"


def gathernd_batch_dims(g: LintGraph):
    for node in g.nodes:
        if node.op_type != "GatherND":
            continue
        b = int(g.attrs(node).get("batch_dims", 0))
        data, indices = g.shape(node.input[0]), g.shape(node.input[1])
        if b < 0 or (data is not None and b >= len(data)):
            yield node.name, f"GatherND batch_dims={b} must satisfy 0 <= batch_dims < rank(data) " \
                             f"(rank {None if data is None else len(data)})"
            continue
        if data is not None and indices is not None:
            for axis in range(b):
                if data[axis] is not None and indices[axis] is not None and data[axis] != indices[axis]:
                    yield node.name, f"GatherND batch dim {axis}: data has {data[axis]}, indices {indices[axis]} " \
                                     "(TensorRT does not broadcast across batch dims)"
        if indices is not None and (not indices or indices[-1] is None):
            yield node.name, "GatherND: the last dim of indices must be a build-time constant"


CHECKS = {
    "opset-range": opset_range, "op-unsupported": op_unsupported, "input-constant": input_constant,
    "attribute-value": attribute_value, "topk-k": topk_k, "output-unsupported": output_unsupported,
    "dropout-training": dropout_training, "gathernd-batch-dims": gathernd_batch_dims,
}
