"""Fusion rules: graphs TensorRT builds, but without the fused kernel they were meant for (warnings).

The attention pattern TensorRT fuses into one multi-head-attention kernel::

    Q·s ──┐                                     (the scale s on Q or K, before the first MatMul)
          MatMul ─► [Add: mask / log size] ─► Softmax ─► MatMul ─►
    Kᵀ ───┘                                              V ──┘

is found from each Softmax: upstream through element-wise ops to a *batched* MatMul (neither input a weight),
downstream through Cast / Q / DQ to a batched MatMul that takes it as input 0. A constant Mul / Div between the
first MatMul and the Softmax is the scale in the wrong place; a Cast inside the pattern breaks its typing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from vitrt.compiler.trt_lint.graph import LintGraph
from vitrt.compiler.trt_lint.qdq import is_weighted, qdq_nodes

UPSTREAM_OPS = ("Mul", "Div", "Add", "Sub", "Cast", "QuantizeLinear", "DequantizeLinear", "Where")
DOWNSTREAM_OPS = ("Cast", "QuantizeLinear", "DequantizeLinear")
MAX_DEPTH = 8


@dataclass
class Attention:
    bmm1: onnx.NodeProto
    softmax: onnx.NodeProto
    bmm2: onnx.NodeProto
    inside: list = field(default_factory=list)  # nodes between bmm1 and bmm2 other than the Softmax


def _batched_matmul(g: LintGraph, node) -> bool:
    return node is not None and node.op_type == "MatMul" and not is_weighted(g, node) \
        and not any(g.is_constant(i) for i in node.input)


def _upstream(g: LintGraph, name: str, depth: int = 0):
    """(first batched MatMul, nodes passed) reached from tensor ``name`` through element-wise ops, else None."""
    node = g.producers.get(name)
    if node is None or depth > MAX_DEPTH:
        return None
    if _batched_matmul(g, node):
        return node, []
    if node.op_type not in UPSTREAM_OPS:
        return None
    for x in node.input:
        if x and not g.is_constant(x):
            found = _upstream(g, x, depth + 1)
            if found is not None:
                return found[0], [node] + found[1]
    return None


def _downstream(g: LintGraph, name: str):
    passed = []
    for _ in range(MAX_DEPTH):
        users = g.consumers.get(name, [])
        if len(users) != 1:
            return None
        node, index = users[0]
        if _batched_matmul(g, node) and index == 0:
            return node, passed
        if node.op_type not in DOWNSTREAM_OPS:
            return None
        passed.append(node)
        name = node.output[0]
    return None


def attention_patterns(g: LintGraph) -> list[Attention]:
    if "attention" in g.cache:
        return g.cache["attention"]
    found = []
    for softmax in g.nodes:
        if softmax.op_type != "Softmax":
            continue
        up, down = _upstream(g, softmax.input[0]), _downstream(g, softmax.output[0])
        if up is not None and down is not None:
            found.append(Attention(up[0], softmax, down[0], up[1] + down[1]))
    g.cache["attention"] = found
    return found


def fusion_attention_scale(g: LintGraph):
    for att in attention_patterns(g):
        for node in att.inside:
            if node.op_type in ("Mul", "Div") and any(g.is_constant(i) for i in node.input):
                yield node.name, f"{node.op_type} '{node.name}' scales the output of the attention MatMul " \
                                 f"'{att.bmm1.name}'; TensorRT fuses attention only when Q or K is scaled before it " \
                                 "(fold the scale into the Q projection)"


def fusion_attention_cast(g: LintGraph):
    for att in attention_patterns(g):
        for node in att.inside:
            if node.op_type == "Cast":
                yield node.name, f"Cast '{node.name}' inside the attention '{att.bmm1.name}' -> '{att.softmax.name}' " \
                                 f"-> '{att.bmm2.name}'; TensorRT's fused attention takes FP16 / BF16 / INT8 / FP8 " \
                                 "inputs end to end"


def fusion_int4_activations(g: LintGraph):
    for q in qdq_nodes(g):
        if q.qtype != TensorProto.INT4 or q.node.op_type != "DequantizeLinear":
            continue
        if g.elem_type(q.node.input[1]) != TensorProto.FLOAT:
            continue
        for user, index in g.consumers.get(q.node.output[0], []):
            activation = user.input[1 - index] if user.op_type == "MatMul" and len(user.input) == 2 else None
            if activation is not None and g.elem_type(activation) in (TensorProto.FLOAT, None):
                yield q.node.name, f"INT4 weights of {user.op_type} '{user.name}' are dequantized to FP32 and meet " \
                                   "FP32 activations; TensorRT's INT4 kernels are W4A16 (FP16 / BF16 activations)"


CHECKS = {"fusion-attention-scale": fusion_attention_scale, "fusion-attention-cast": fusion_attention_cast,
          "fusion-int4-activations": fusion_int4_activations}
