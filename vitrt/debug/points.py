"""The canonical probe points of a compiled graph, in the order the model computes them.

A point is one intermediate every lowering of a ViT has, found by the canonical *node* names the lowering gives
(never by tensor names, which passes may change) and, on the torch twin, by module path:

    point                      ONNX (node, side, index)                 twin
    patch_embed.input  (qdq)   patch_embed.input.dequantize  out 0      patch_embed.input_quantizer      output
    patch_embed                patch_embed                    out 0     patch_embed                      output
    embed                      first stream LayerNorm         in 0      the same LayerNorm               input
    blocks.i.attn.q.input (qdq) ...q.input.dequantize         out 0     blocks.i.attn.q.input_quantizer  output
    blocks.i.attn.logits       blocks.i.attn.softmax          in 0      softmax inside blocks.i.attn     input
    blocks.i.attn.probs        blocks.i.attn.softmax          out 0     softmax inside blocks.i.attn     output
    blocks.i.attn.out          blocks.i.attn.proj.bias_add    out 0     blocks.i.attn.proj               output
    blocks.i.mlp.hidden        blocks.i.mlp.act.half          out 0     blocks.i.mlp.act                 output
    blocks.i.mlp.out           blocks.i.mlp.fc2.bias_add      out 0     blocks.i.mlp.fc2                 output
    blocks.i.output            next stream LayerNorm          in 0      the same LayerNorm               input
    norm                       norm                           out 0     norm                             output
    logits                     the graph output                         the twin's return value

(``(qdq)``: every Q/DQ'd activation the graph holds — ``<layer>.input`` of each quantized MatMul / Conv and the
attention matmuls' ``qk.input_a`` / ``qk.input_b`` (Kᵀ; the twin's quantizer holds K, which its probe
transposes) / ``av.input_a`` / ``av.input_b``; a twin without quantizers
gives the layer's float input for ``<layer>.input``, so a quantized graph compared with the float twin shows the
error each Q/DQ adds.) The residual stream between
blocks is read where the next LayerNorm takes it (``blocks.{i+1}.norm1``, or ``norm2`` when that block has no
attention, or the final ``norm``): there the twin's value is the plain stream even where token merging carries
sizes as an extra channel between blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from vitrt.compiler.lower import OUTPUT_NAME

KINDS = ("stream", "qdq", "attention", "mlp", "head")


@dataclass(frozen=True)
class Point:
    name: str  # canonical point name, e.g. blocks.3.attn.probs
    kind: str  # one of KINDS
    block: int | None  # the block it belongs to (None: stem / head)
    tensor: str  # the ONNX tensor holding it
    twin: tuple[tuple[str, str], ...]  # alternatives, first present wins: (how, module path) with how = output |
    #                                    output_transposed (last two axes) | input | softmax_input |
    #                                    softmax_output | result


def _attention_quantizer(local: str) -> str:
    from vitrt.transforms.quant.fakequant import ATTENTION_QUANTIZERS

    return {v: k for k, v in ATTENTION_QUANTIZERS.items()}[local]


def qdq_twin_path(key: str) -> str:
    """Scale-table name of an activation -> module path of the twin's quantizer that computes it."""
    layer, _, role = key.rpartition(".")
    if role == "input":
        return f"{layer}.input_quantizer"
    block, _, matmul = layer.rpartition(".")  # blocks.3.attn.qk.input_a -> blocks.3.attn + qk_a_input_quantizer
    return f"{block}.{_attention_quantizer(f'{matmul}.{role}')}"


class _Nodes:
    def __init__(self, model: onnx.ModelProto):
        self.by_name = {n.name: n for n in model.graph.node}

    def out(self, name: str) -> str | None:
        node = self.by_name.get(name)
        return node.output[0] if node is not None else None

    def inp(self, name: str) -> str | None:
        node = self.by_name.get(name)
        return node.input[0] if node is not None else None


def _stream_norm(nodes: _Nodes, index: int, depth: int) -> str:
    """The LayerNorm that reads the residual stream entering block ``index`` (``norm`` after the last block)."""
    for i in range(index, depth):
        for local in ("norm1", "norm2"):
            if f"blocks.{i}.{local}" in nodes.by_name:
                return f"blocks.{i}.{local}"
    return "norm"


def layer_input_point(model: onnx.ModelProto, point: Point) -> Point | None:
    """For a Q/DQ'd ``<layer>.input`` point of another graph: the same layer's (float) input in ``model``, which has
    no Q/DQ there — so a quantized graph compared with a float one shows the error each Q/DQ adds."""
    layer, _, role = point.name.rpartition(".")
    tensor = _Nodes(model).inp(layer) if point.kind == "qdq" and role == "input" else None
    return Point(point.name, point.kind, point.block, tensor, point.twin) if tensor is not None else None


def graph_points(model: onnx.ModelProto, spec) -> list[Point]:
    """Every probe point ``model`` (a canonical graph for ``spec``) holds, in computation order."""
    nodes = _Nodes(model)
    points: list[Point] = []

    def add(name, kind, block, tensor, *twin):
        if tensor is not None:
            points.append(Point(name, kind, block, tensor, twin))

    def qdq(key, block):  # a twin without the quantizer (the float twin) has the layer's float input there
        layer, _, role = key.rpartition(".")
        plain = (("input", layer),) if role == "input" else ()
        # QKᵀ's second operand: the graph holds Kᵀ (what the MatMul takes), the twin's quantizer K
        how = "output_transposed" if key.endswith("attn.qk.input_b") else "output"
        add(key, "qdq", block, nodes.out(f"{key}.dequantize"), (how, qdq_twin_path(key)), *plain)

    qdq("patch_embed.input", None)
    add("patch_embed", "stream", None, nodes.out("patch_embed"), ("output", "patch_embed"))
    first = _stream_norm(nodes, 0, spec.depth)
    add("embed", "stream", None, nodes.inp(first), ("input", first))
    for i in range(spec.depth):
        b = f"blocks.{i}"
        if f"{b}.attn.softmax" in nodes.by_name:
            for layer in ("q", "k", "v"):
                qdq(f"{b}.attn.{layer}.input", i)
            for key in ("qk.input_a", "qk.input_b", "av.input_b"):
                qdq(f"{b}.attn.{key}", i)
            add(f"{b}.attn.logits", "attention", i, nodes.inp(f"{b}.attn.softmax"), ("softmax_input", f"{b}.attn"))
            add(f"{b}.attn.probs", "attention", i, nodes.out(f"{b}.attn.softmax"), ("softmax_output", f"{b}.attn"))
            qdq(f"{b}.attn.av.input_a", i)
            qdq(f"{b}.attn.proj.input", i)
            add(f"{b}.attn.out", "attention", i, nodes.out(f"{b}.attn.proj.bias_add"), ("output", f"{b}.attn.proj"))
        if f"{b}.mlp.fc1" in nodes.by_name:
            qdq(f"{b}.mlp.fc1.input", i)
            add(f"{b}.mlp.hidden", "mlp", i, nodes.out(f"{b}.mlp.act.half"), ("output", f"{b}.mlp.act"))
            qdq(f"{b}.mlp.fc2.input", i)
            add(f"{b}.mlp.out", "mlp", i, nodes.out(f"{b}.mlp.fc2.bias_add"), ("output", f"{b}.mlp.fc2"))
        following = _stream_norm(nodes, i + 1, spec.depth)
        add(f"{b}.output", "stream", i, nodes.inp(following), ("input", following))
    add("norm", "head", None, nodes.out("norm"), ("output", "norm"))
    qdq("head.input", None)
    if spec.distilled:
        qdq("head_dist.input", None)
    outputs = [o.name for o in model.graph.output]
    add("logits", "head", None, OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0], ("result", ""))
    return points
