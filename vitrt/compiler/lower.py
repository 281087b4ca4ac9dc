"""Lowering: torch twin -> canonical ONNX, emitted node by node with onnx-graphsurgeon.

vitrt emits the graph itself instead of tracing it, so the structure is exactly the canonical one on every
torch version: stable node names from module paths, separate Q/K/V MatMuls with weights stored as
B[K, N] (the layout TensorRT checks 2:4 along), explicit per-head Reshape/Transpose, and the attention scale
already inside the q projection (the twin's ``q`` is Q·s, see :mod:`vitrt.compiler.twin`), so the score path
is MatMul(Q·s, Kᵀ) -> Softmax -> MatMul(·V) with nothing between QKᵀ and Softmax — the pattern TensorRT fuses
into its fused multi-head attention (token merging later puts its log(size) Add there: the fused pattern is
MatMul -> optional Add -> Softmax -> MatMul). One block::

    x ─► LayerNormalization(norm1) ─┬─► MatMul(attn.q)+Add ─► Reshape/Transpose ─► MatMul(attn.qk)   (q: W·s, b·s)
    │                               ├─► MatMul(attn.k)+Add ─► Reshape/Transpose ───┘      │
    │                               └─► MatMul(attn.v)+Add ─► Reshape/Transpose ─┐   Softmax(attn.softmax)
    │                                                                           └─► MatMul(attn.av)
    │           Add(residual1) ◄─ MatMul(attn.proj)+Add ◄─ Transpose/Reshape(merge_heads) ◄─┘
    └──────────────► │
                     ├─► LayerNormalization(norm2) ─► MatMul(mlp.fc1)+Add ─► GELU(erf) ─► MatMul(mlp.fc2)+Add
                     └──────────────────────────────────────────────────────────────► Add(residual2) ─► x'

Weight initializers are named ``<node>.weight`` / ``<node>.bias`` (e.g. ``blocks.3.attn.q.weight``); their values
and layouts come from :mod:`vitrt.compiler.weights`, the one place that maps twin parameters to initializers.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from vitrt.compiler.spec import ViTSpec
from vitrt.compiler.twin import CanonicalViT
from vitrt.compiler.weights import twin_initializers

DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def ir_version_for(opset: int) -> int:
    """The lowest IR version that supports ``opset`` (onnxruntime 1.31 loads IR <= 13)."""
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)], ignore_unknown=True)


class GraphEmitter:
    """A thin builder over ``gs.Graph``: named constants, single-output nodes, and the canonical layers whose
    initializer values it takes from ``weights`` (initializer name -> array, see :mod:`vitrt.compiler.weights`)."""

    def __init__(self, graph: gs.Graph, weights: dict[str, np.ndarray] | None = None):
        self.graph = graph
        self.weights = weights or {}

    def weight(self, name: str) -> gs.Constant:
        return gs.Constant(name, self.weights[name])

    def const(self, name: str, value) -> gs.Constant:
        return gs.Constant(name, np.array(value, order="C"))  # np.ascontiguousarray would make 0-d arrays 1-d

    def ints(self, name: str, values) -> gs.Constant:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def node(self, op: str, name: str, inputs, attrs=None, dtype=np.float32) -> gs.Variable:
        out = gs.Variable(f"{name}.out", dtype=dtype)
        self.graph.nodes.append(gs.Node(op=op, name=name, attrs=attrs or {}, inputs=list(inputs), outputs=[out]))
        return out

    def linear(self, x, name: str) -> gs.Variable:
        """``MatMul(x, W[K, N])`` named ``name`` followed by the bias ``Add`` (``name.bias_add``)."""
        y = self.node("MatMul", name, [x, self.weight(f"{name}.weight")])
        return self.node("Add", f"{name}.bias_add", [y, self.weight(f"{name}.bias")])

    def layer_norm(self, x, name: str, eps: float) -> gs.Variable:
        return self.node("LayerNormalization", name, [x, self.weight(f"{name}.weight"), self.weight(f"{name}.bias")],
                         {"axis": -1, "epsilon": float(eps)})

    def gelu(self, x, name: str) -> gs.Variable:
        """Exact GELU as x * 0.5 * (1 + erf(x / sqrt 2)); ONNX Runtime and TensorRT fuse this pattern."""
        scaled = self.node("Div", f"{name}.div", [x, self.const(f"{name}.sqrt2", np.array(math.sqrt(2.0), np.float32))])
        erf = self.node("Erf", f"{name}.erf", [scaled])
        one_plus = self.node("Add", f"{name}.add", [erf, self.const(f"{name}.one", np.array(1.0, np.float32))])
        y = self.node("Mul", f"{name}.mul", [x, one_plus])
        return self.node("Mul", f"{name}.half", [y, self.const(f"{name}.half_c", np.array(0.5, np.float32))])


def emit_attention(e: GraphEmitter, x, name: str, attn, tokens: int) -> gs.Variable:
    heads, qk, v_dim = attn.heads, attn.qk_dim, attn.v_dim
    q = e.node("Reshape", f"{name}.q.split_heads", [e.linear(x, f"{name}.q"), e.ints(f"{name}.q.shape", [-1, tokens, heads, qk])])
    q = e.node("Transpose", f"{name}.q.transpose", [q], {"perm": [0, 2, 1, 3]})
    k = e.node("Reshape", f"{name}.k.split_heads", [e.linear(x, f"{name}.k"), e.ints(f"{name}.k.shape", [-1, tokens, heads, qk])])
    k = e.node("Transpose", f"{name}.k.transpose", [k], {"perm": [0, 2, 3, 1]})
    v = e.node("Reshape", f"{name}.v.split_heads", [e.linear(x, f"{name}.v"), e.ints(f"{name}.v.shape", [-1, tokens, heads, v_dim])])
    v = e.node("Transpose", f"{name}.v.transpose", [v], {"perm": [0, 2, 1, 3]})
    logits = e.node("MatMul", f"{name}.qk", [q, k])  # q carries the scale: no Mul before the Softmax
    probs = e.node("Softmax", f"{name}.softmax", [logits], {"axis": -1})
    out = e.node("MatMul", f"{name}.av", [probs, v])
    out = e.node("Transpose", f"{name}.merge_heads.transpose", [out], {"perm": [0, 2, 1, 3]})
    out = e.node("Reshape", f"{name}.merge_heads", [out, e.ints(f"{name}.merge_heads.shape", [-1, tokens, heads * v_dim])])
    return e.linear(out, f"{name}.proj")


def emit_block(e: GraphEmitter, x, index: int, block) -> gs.Variable:
    name = f"blocks.{index}"
    if block.attn is not None:
        h = e.layer_norm(x, f"{name}.norm1", block.norm1.eps)
        x = e.node("Add", f"{name}.residual1", [x, emit_attention(e, h, f"{name}.attn", block.attn, block.spec.tokens)])
    if block.mlp is not None:
        h = e.layer_norm(x, f"{name}.norm2", block.norm2.eps)
        h = e.gelu(e.linear(h, f"{name}.mlp.fc1"), f"{name}.mlp.act")
        x = e.node("Add", f"{name}.residual2", [x, e.linear(h, f"{name}.mlp.fc2")])
    return x


def emit_stem(e: GraphEmitter, images, spec: ViTSpec, batch: int | None) -> gs.Variable:
    x = e.node("Conv", "patch_embed", [images, e.weight("patch_embed.weight"), e.weight("patch_embed.bias")],
               {"kernel_shape": [spec.patch, spec.patch], "strides": [spec.patch, spec.patch]})
    x = e.node("Reshape", "patch_embed.flatten", [x, e.ints("patch_embed.flatten.shape", [-1, spec.emb, spec.num_patches])])
    x = e.node("Transpose", "patch_embed.transpose", [x], {"perm": [0, 2, 1]})
    prefix = e.weight("prefix_tokens.weight")
    if batch is None:  # dynamic batch: take it from the input's shape at run time
        shape = e.node("Shape", "prefix_tokens.batch_shape", [images], {"start": 0, "end": 1}, dtype=np.int64)
        expand_to = e.node("Concat", "prefix_tokens.expand_shape", [shape, e.ints("prefix_tokens.ones", [1, 1])], {"axis": 0}, dtype=np.int64)
    else:
        expand_to = e.ints("prefix_tokens.expand_shape", [batch, 1, 1])
    prefix = e.node("Expand", "prefix_tokens", [prefix, expand_to])
    x = e.node("Concat", "prefix_tokens.concat", [prefix, x], {"axis": 1})
    return e.node("Add", "pos_embed", [x, e.weight("pos_embed.weight")])


def emit_head(e: GraphEmitter, x, spec: ViTSpec) -> gs.Variable:
    x = e.layer_norm(x, "norm", spec.norm_eps)
    cls = e.node("Gather", "head.select", [x, e.ints("head.index", 0)], {"axis": 1})
    logits = e.linear(cls, "head")
    if spec.distilled:
        dist = e.node("Gather", "head_dist.select", [x, e.ints("head_dist.index", 1)], {"axis": 1})
        logits = e.node("Add", "head.average.sum", [logits, e.linear(dist, "head_dist")])
        logits = e.node("Mul", "head.average", [logits, e.const("head.average.half", np.array(0.5, np.float32))])
    return logits


def lower(twin: CanonicalViT, *, batch: int | None = 1, opset: int = DEFAULT_OPSET, name: str = "vit") -> onnx.ModelProto:
    """Emit the canonical ONNX of ``twin``; ``batch=None`` gives a dynamic batch dimension.

    The returned model carries its ViTSpec in metadata_props, opset ``opset`` and the lowest IR version
    for that opset; it passes the ONNX checker and full shape inference.
    """
    spec: ViTSpec = twin.spec
    graph = gs.Graph(name=name, opset=opset)
    e = GraphEmitter(graph, twin_initializers(twin))
    batch_dim = "batch" if batch is None else batch
    images = gs.Variable(INPUT_NAME, dtype=np.float32, shape=(batch_dim, spec.in_chans, spec.img, spec.img))
    graph.inputs = [images]
    x = emit_stem(e, images, spec, batch)
    for index, block in enumerate(twin.blocks):
        x = emit_block(e, x, index, block)
    logits = emit_head(e, x, spec)
    # Rename the final tensor to the public output name.
    logits.name, logits.shape = OUTPUT_NAME, (batch_dim, spec.num_classes)
    graph.outputs = [logits]
    return finalize(graph, spec)


def model_opset(model: onnx.ModelProto, default=None):
    """The default-domain opset ``model`` imports (``default`` when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default)


def finalize(graph: gs.Graph, spec: ViTSpec) -> onnx.ModelProto:
    """Export a gs graph to ONNX with the spec attached, IR version set, and shapes inferred."""
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    opset = model_opset(model)
    model.ir_version = ir_version_for(opset)
    model.producer_name = "vitrt"
    spec.attach(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model)
    return model
