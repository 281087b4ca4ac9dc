"""Precision typing: the float graph becomes FP16 (weights and activations), with FP32 kept where configured.

    images(fp32) ─► Cast(fp16) ─► ... MatMul / Add / Erf / Conv in fp16 ...
        ─► Cast(fp32) ─► LayerNormalization ─► Cast(fp16) ─►        (kept ops: LayerNormalization, Softmax)
        ... ─► Cast(fp32) ─► logits(fp32)

TensorRT 11 is strongly typed: the graph's tensor types are the precision the engine runs in, so this pass is
how an FP16 engine is asked for. Kept-FP32 ops keep their own weights (LayerNorm scale / bias) in FP32.
ONNX Runtime's CPU provider has FP16 kernels for every op this graph uses (MatMul, Gemm, Conv, Add, Mul, Div,
Erf, Softmax, LayerNormalization, Transpose, Reshape, Concat, Gather, Expand), so the typed graph runs as is.

Nodes whose attributes fix a float32 output (``Cast(to=FLOAT)``, ``ConstantOfShape`` with a float32 value — the
token-merge subgraph has both) are retyped too, so every stage composes with fp16.

The twin transform (:func:`vitrt.transforms.precision.twin.fp16_twin`) runs the torch twin in FP16 with the same
ops kept in FP32.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, Pass, PassContext, PassResult
from vitrt.transforms.precision.plan import DEFAULT_KEEP_FP32, FP16_TOLERANCE, PrecisionPlan
from vitrt.transforms.precision.twin import fp16_twin


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

    original_nodes = list(graph.nodes)
    # Attributes that fix a float32 output: retype them like the tensors they produce.
    for node in original_nodes:
        if node.op == "Cast" and node.attrs.get("to") == TensorProto.FLOAT and node.op not in keep:
            node.attrs["to"] = TensorProto.FLOAT16
        elif node.op == "ConstantOfShape" and isinstance(node.attrs.get("value"), gs.Constant) \
                and np.dtype(node.attrs["value"].dtype) == f32:
            value = node.attrs["value"]
            node.attrs["value"] = gs.Constant(value.name + ".fp16", value.values.astype(np.float16))
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


class Fp16Pass(Pass):
    name = "precision_fp16"
    changes_function = True
    preserves = frozenset({CANONICAL})
    run_after = ("qdq",)

    def __init__(self, plan: PrecisionPlan):
        self.plan = plan

    def tolerance(self) -> float:
        return FP16_TOLERANCE

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        return PassResult(view, True, type_fp16(view, self.plan.keep_fp32))

    def apply_to_twin(self, twin):
        return fp16_twin(twin, self.plan.keep_fp32)
