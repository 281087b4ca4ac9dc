"""Precision typing: the float graph becomes FP16 or BF16 (weights and activations), with FP32 kept where configured.

    images(fp32) ─► Cast(fp16|bf16) ─► ... MatMul / Add / Erf / Conv in fp16|bf16 ...
        ─► Cast(fp32) ─► LayerNormalization ─► Cast(fp16|bf16) ─►        (kept ops: LayerNormalization, Softmax)
        ... ─► Cast(fp32) ─► logits(fp32)

TensorRT 11 is strongly typed: the graph's tensor types are the precision the engine runs in, so this pass is
how an FP16 or BF16 engine is asked for. Kept-FP32 ops keep their own weights (LayerNorm scale / bias) in FP32.
Every other float32 constant is retyped, including the scales of DequantizeLinear nodes: behind INT4 weight-only
Q/DQ that makes the dequantized weights FP16 (DequantizeLinear's output type is its scale's), which is W4A16.

Which runtimes run the typed graph: ONNX Runtime's CPU provider has FP16 kernels for every op this graph uses
(MatMul, Gemm, Conv, Add, Mul, Div, Erf, Softmax, LayerNormalization, Transpose, Reshape, Concat, Gather,
Expand), so an FP16 graph runs as is. It has no BF16 arithmetic kernels at all (MatMul, Add, Mul, Div, Erf, Sub,
Sqrt, Log, ReduceSum, Equal, Softmax: "NOT_IMPLEMENTED"; only data movement such as Transpose, Concat, Gather),
so a BF16 graph is for TensorRT, and vitrt verifies it with onnx's reference evaluator instead
(:func:`vitrt.compiler.verify.run_onnx`).

Nodes whose attributes fix a float32 output (``Cast(to=FLOAT)``, ``ConstantOfShape`` with a float32 value — the
token-merge subgraph has both) are retyped too, so every stage composes with the typing. An op whose ONNX schema
at the graph's opset lacks the type must be among the kept ops (the planner puts them there,
:func:`vitrt.transforms.precision.plan.plan_for`: for bf16 at opset 17 the patch-embedding Conv and token
merging's TopK and ConstantOfShape); the pass refuses a graph with any other.

The twin transform (:func:`vitrt.transforms.precision.twin.typed_twin`) runs the torch twin in the same type with
the same ops kept in FP32.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import QDQ_OPS, GraphView, set_opset, typed_qdq_opset
from vitrt.compiler.pass_manager import CANONICAL, Pass, PassContext, PassResult
from vitrt.transforms.precision.plan import DEFAULT_KEEP_FP32, PrecisionPlan, ops_without_type
from vitrt.transforms.precision.twin import typed_twin

FLOAT_TYPES = {"fp16": (np.dtype(np.float16), TensorProto.FLOAT16),
               "bf16": (np.dtype(ml_dtypes.bfloat16), TensorProto.BFLOAT16)}
F32 = np.dtype(np.float32)


def _is_float32(dtype) -> bool:
    """Whether a graphsurgeon dtype is float32 (types numpy cannot name, like float8, are ONNX enums: not float32)."""
    try:
        return dtype is not None and np.dtype(dtype) == F32
    except TypeError:
        return False


def type_float(view: GraphView, dtype: str = "fp16", keep_fp32=DEFAULT_KEEP_FP32) -> dict:
    """Retype ``view``'s float32 tensors to ``dtype`` (fp16 | bf16) in place, with Casts around the ``keep_fp32``
    ops."""
    graph = view.graph
    keep = set(keep_fp32)
    low, low_onnx = FLOAT_TYPES[dtype]
    boundary = set()
    casts = 0

    def cast(name: str, x, to, out_dtype, shape) -> gs.Variable:
        nonlocal casts
        out = gs.Variable(name, dtype=out_dtype, shape=shape)
        graph.nodes.append(gs.Node("Cast", name, attrs={"to": to}, inputs=[x], outputs=[out]))
        boundary.add(out.name)
        casts += 1
        return out

    original_nodes = list(graph.nodes)
    if any(n.op in QDQ_OPS for n in original_nodes) and "QuantizeLinear" not in keep:
        set_opset(graph, typed_qdq_opset(dtype, graph.opset))  # int8 at 13: fp16 scales from 19
    untyped = set(ops_without_type(dtype, graph.opset, sorted({n.op for n in original_nodes}))) - keep
    if untyped:
        raise VitrtError(f"cannot type the graph {dtype}: ONNX opset {graph.opset} has no {dtype} for "
                         f"{', '.join(sorted(untyped))}; keep them in fp32 (PrecisionPlan.keep_fp32)")
    # Attributes that fix a float32 output: retype them like the tensors they produce.
    for node in original_nodes:
        if node.op in keep:
            continue
        if node.op == "Cast" and node.attrs.get("to") == TensorProto.FLOAT:
            node.attrs["to"] = low_onnx
        elif node.op == "ConstantOfShape" and isinstance(node.attrs.get("value"), gs.Constant) \
                and _is_float32(node.attrs["value"].dtype):
            value = node.attrs["value"]
            node.attrs["value"] = gs.Constant(f"{value.name}.{dtype}", value.values.astype(low))
    # Constants: retyped except the kept ops' own parameters (a shared constant gets a retyped copy for the others).
    converted: dict[str, gs.Constant] = {}
    for node in original_nodes:
        for i, t in enumerate(node.inputs):
            if not isinstance(t, gs.Constant) or not _is_float32(t.dtype) or node.op in keep:
                continue
            if t.name not in converted:
                converted[t.name] = gs.Constant(f"{t.name}.{dtype}", t.values.astype(low))
            node.inputs[i] = converted[t.name]
    # Kept ops: cast their float variable inputs to fp32 and their float outputs back to the low type (integer
    # inputs and outputs, e.g. TopK's indices, stay as they are).
    for node in original_nodes:
        if node.op not in keep:
            continue
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Variable) and _is_float32(t.dtype):
                node.inputs[i] = cast(f"{node.name}.to_fp32_{i}", t, TensorProto.FLOAT, F32, t.shape)
        for j, out in enumerate(list(node.outputs)):
            if not _is_float32(out.dtype):
                continue
            inner = gs.Variable(f"{out.name}.fp32", dtype=F32, shape=out.shape)
            boundary.add(inner.name)
            node.outputs[j] = inner
            graph.nodes.append(gs.Node("Cast", f"{node.name}.to_{dtype}_{j}", attrs={"to": low_onnx},
                                       inputs=[inner], outputs=[out]))
            out.dtype = low
            casts += 1
    # Graph input and output stay fp32 (the engine's interface does not change).
    for inp in graph.inputs:
        if _is_float32(inp.dtype):
            users = [(n, i) for n in graph.nodes for i, t in enumerate(n.inputs) if t is inp]
            typed = cast(f"{inp.name}.to_{dtype}", inp, low_onnx, low, inp.shape)
            for n, i in users:
                n.inputs[i] = typed
    for out in list(graph.outputs):
        if _is_float32(out.dtype):
            producer = out.inputs[0]
            typed = gs.Variable(f"{out.name}.{dtype}", dtype=low, shape=out.shape)
            producer.outputs[producer.outputs.index(out)] = typed
            graph.nodes.append(gs.Node("Cast", f"{out.name}.to_fp32", attrs={"to": TensorProto.FLOAT},
                                       inputs=[typed], outputs=[out]))
            casts += 1
    # Every other float32 activation now has the low type.
    io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t.name not in io and t.name not in boundary and _is_float32(t.dtype):
            t.dtype = low
    graph.toposort()
    view.refresh()
    return {"dtype": dtype, "casts": casts, f"constants_{dtype}": len(converted), "kept_fp32": sorted(keep)}


class PrecisionTypingPass(Pass):
    """FP16 / BF16 typing of the graph (the plan's dtype); the twin becomes the equally typed twin."""

    name = "precision_typing"
    changes_function = True
    preserves = frozenset({CANONICAL})
    run_after = ("qdq",)

    def __init__(self, plan: PrecisionPlan):
        self.plan = plan

    def tolerance(self) -> float:
        return self.plan.tolerance

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        return PassResult(view, True, type_float(view, self.plan.dtype, self.plan.keep_fp32))

    def apply_to_twin(self, twin):
        return typed_twin(twin, self.plan.dtype, self.plan.keep_fp32)
