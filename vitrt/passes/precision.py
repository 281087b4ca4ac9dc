"""Precision typing: the float graph becomes FP16 (weights and activations), with FP32 kept where configured.

    images(fp32) ─► Cast(fp16) ─► ... MatMul / Add / Erf / Conv in fp16 ...
        ─► Cast(fp32) ─► LayerNormalization ─► Cast(fp16) ─►        (kept ops: LayerNormalization, Softmax)
        ... ─► Cast(fp32) ─► logits(fp32)

TensorRT 11 is strongly typed: the graph's tensor types are the precision the engine runs in, so this pass is
how an FP16 engine is asked for. Kept-FP32 ops keep their own weights (LayerNorm scale / bias) in FP32.
ONNX Runtime's CPU provider has FP16 kernels for every op this graph uses (MatMul, Gemm, Conv, Add, Mul, Div,
Erf, Softmax, LayerNormalization, Transpose, Reshape, Concat, Gather, Expand), so the typed graph runs as is.

The twin transform (:func:`fp16_twin`) runs the torch twin in FP16 with the same ops kept in FP32.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx_graphsurgeon as gs
from torch import nn

from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, Pass, PassContext, PassResult
from vitrt.compiler.twin import CanonicalAttention, CanonicalViT

DEFAULT_KEEP_FP32 = ("LayerNormalization", "Softmax")
# Logits tolerance of the FP16 graph (ONNX Runtime) against the FP16 torch twin: both round every tensor to
# fp16 (unit roundoff 4.9e-4) but accumulate in different orders; over 12 blocks that is a few fp16 ulps of
# logits of magnitude ~10.
FP16_TOLERANCE = 5e-2


def type_fp16(view: GraphView, keep_fp32=DEFAULT_KEEP_FP32) -> dict:
    """Retype ``view``'s float32 tensors to float16 in place, with Casts around the ``keep_fp32`` ops."""
    graph = view.graph
    keep = set(keep_fp32)
    f32, f16 = np.dtype(np.float32), np.dtype(np.float16)
    boundary = set()
    casts = 0

    def cast(name: str, x, to, dtype, shape) -> gs.Variable:
        nonlocal casts
        out = gs.Variable(name, dtype=dtype, shape=shape)
        graph.nodes.append(gs.Node("Cast", name, attrs={"to": to}, inputs=[x], outputs=[out]))
        boundary.add(out.name)
        casts += 1
        return out

    from onnx import TensorProto

    original_nodes = list(graph.nodes)
    # Constants: fp16 except the kept ops' own parameters (a shared constant gets an fp32 copy for those).
    converted: dict[str, gs.Constant] = {}
    for node in original_nodes:
        for i, t in enumerate(node.inputs):
            if not isinstance(t, gs.Constant) or np.dtype(t.dtype) != f32:
                continue
            if node.op in keep:
                continue
            if t.name not in converted:
                converted[t.name] = gs.Constant(t.name + ".fp16", t.values.astype(np.float16))
            node.inputs[i] = converted[t.name]
    # Kept ops: cast their variable inputs to fp32 and their outputs back to fp16.
    for node in original_nodes:
        if node.op not in keep:
            continue
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Variable):
                node.inputs[i] = cast(f"{node.name}.to_fp32_{i}", t, TensorProto.FLOAT, f32, t.shape)
        for j, out in enumerate(list(node.outputs)):
            inner = gs.Variable(f"{out.name}.fp32", dtype=f32, shape=out.shape)
            boundary.add(inner.name)
            node.outputs[j] = inner
            graph.nodes.append(gs.Node("Cast", f"{node.name}.to_fp16_{j}", attrs={"to": TensorProto.FLOAT16},
                                       inputs=[inner], outputs=[out]))
            out.dtype = f16
            casts += 1
    # Graph input and output stay fp32 (the engine's interface does not change).
    for inp in graph.inputs:
        if np.dtype(inp.dtype) == f32:
            users = [(n, i) for n in graph.nodes for i, t in enumerate(n.inputs) if t is inp]
            half = cast(f"{inp.name}.to_fp16", inp, TensorProto.FLOAT16, f16, inp.shape)
            for n, i in users:
                n.inputs[i] = half
    for k, out in enumerate(list(graph.outputs)):
        if np.dtype(out.dtype) == f32:
            producer = out.inputs[0]
            half = gs.Variable(f"{out.name}.fp16", dtype=f16, shape=out.shape)
            producer.outputs[producer.outputs.index(out)] = half
            graph.nodes.append(gs.Node("Cast", f"{out.name}.to_fp32", attrs={"to": TensorProto.FLOAT},
                                       inputs=[half], outputs=[out]))
            casts += 1
    # Every other float32 activation is now fp16.
    io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t.name not in io and t.name not in boundary \
                and t.dtype is not None and np.dtype(t.dtype) == f32:
            t.dtype = f16
    graph.toposort()
    view.refresh()
    return {"casts": casts, "constants_fp16": len(converted), "kept_fp32": sorted(keep)}


class _Fp32LayerNorm(nn.Module):
    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm.float()

    def forward(self, x):
        return self.norm(x.float()).to(x.dtype)


class _MixedAttention(CanonicalAttention):
    """CanonicalAttention with the softmax computed in fp32 (the kept op), everything else in the input dtype."""

    def attention_probs(self, logits):
        return logits.float().softmax(dim=-1) if self.softmax_fp32 else logits.softmax(dim=-1)


class Fp16Twin(nn.Module):
    """The twin in fp16 with the kept ops in fp32; fp32 in, fp32 out (like the typed graph)."""

    def __init__(self, twin: CanonicalViT, keep_fp32=DEFAULT_KEEP_FP32):
        super().__init__()
        model = copy.deepcopy(twin).eval().half()
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.LayerNorm) and "LayerNormalization" in keep_fp32:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, _Fp32LayerNorm(module))
            if isinstance(module, CanonicalAttention):
                module.__class__ = _MixedAttention
                module.softmax_fp32 = "Softmax" in keep_fp32
        self.model, self.spec = model, twin.spec

    def forward(self, images):
        return self.model(images.half()).float()


def fp16_twin(twin: CanonicalViT, keep_fp32=DEFAULT_KEEP_FP32) -> Fp16Twin:
    return Fp16Twin(twin, keep_fp32)


class Fp16Pass(Pass):
    name = "precision_fp16"
    changes_function = True
    preserves = frozenset({CANONICAL})
    run_after = ("qdq",)
    verify_tolerance = FP16_TOLERANCE

    def __init__(self, keep_fp32=DEFAULT_KEEP_FP32):
        self.keep_fp32 = tuple(keep_fp32)

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        stats = type_fp16(view, self.keep_fp32)
        ctx.manifest["precision"] = {"activations": "fp16", "weights": "fp16", "kept_fp32": list(self.keep_fp32),
                                     "graph_io": "fp32"}
        return PassResult(view, True, stats)

    def apply_to_twin(self, twin, ctx: PassContext):
        return fp16_twin(twin, self.keep_fp32)
