"""The compile's own passes on the subgraphs a latency table times, so every ``precision/sparsity`` key times what a
compile of that key runs.

A timed subgraph comes with the tiny twin whose weights it holds and the canonical layers it contains. For a key
the passes are, in STAGES order and with plans made for that twin by the transforms' own code:

    2:4        the sparsity planner (default options, its layers) and SparsityPass: masked dense weights —
               on ONNX Runtime's CPU provider they run at dense speed, which the table then shows
    int8 / fp8 QDQPass with a fixed-range scale table: weights per output channel at their max |w|,
               activations at ACTIVATION_AMAX (kernel speed does not depend on the ranges; ranges a compile
               fixes, such as FP8's softmax output, keep their fixed value)
    int4w      QDQPass with the INT4 weight-only table of the weights (block 128 or 64 along K); a subgraph whose
               input widths no INT4 block size divides (which no int4w model has) keeps float weights
    fp16 / bf16 PrecisionTypingPass, as the target's activation type asks (int4w on trt: W4A16)

A block half's input is typed like the activations inside a model (the typing pass casts a graph's fp32 input and
output; that Cast belongs to the model's image input and logits, not to every block), so those casts are removed
again where the subgraph is inside the model; the stem keeps its input cast and the head its output cast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

ACTIVATION_AMAX = 4.0


@dataclass
class TimedGraph:
    """A subgraph to time: ``graph`` (single input, single output) and its ``inputs``; ``twin``'s weights are in it
    under the canonical names of ``layers``; ``model_input`` / ``model_output``: whether its input is the model's
    images and its output the model's logits (their fp32 interface casts then stay)."""

    graph: gs.Graph
    inputs: np.ndarray
    twin: object
    layers: tuple[str, ...] = ()
    model_input: bool = False
    model_output: bool = False


def activation_dtype(precision: str, backend: str) -> str:
    from vitrt.compiler.target import TargetConfig

    return TargetConfig(backend=backend, precision=precision).activation_dtype


def fixed_scale_table(twin, precision: str, layers: tuple[str, ...]):
    """The scale table a compile would calibrate, with fixed ranges, restricted to ``layers`` (None: no entry)."""
    from vitrt.compiler.errors import VitrtError
    from vitrt.transforms.quant.fakequant import int4_table
    from vitrt.transforms.quant.scale_table import ScaleEntry, ScaleTable, expected_entries, fixed_amax

    if precision == "int4w":
        try:
            full = int4_table(twin)
        except VitrtError:
            return None
        entries = {k: e for k, e in full.entries.items() if k.rpartition(".")[0] in layers}
        return ScaleTable("int4w", entries, "fixed ranges (latency table)", dict(full.meta)) if entries else None
    entries = {}
    for name, (dtype, shape, axis, block) in expected_entries(twin.spec, precision).items():
        layer, _, role = name.rpartition(".")
        if layer not in layers:
            continue
        if role == "weight":
            weight = twin.get_submodule(layer).weight.detach().float().abs()
            amax = weight.reshape(weight.shape[0], -1).amax(dim=1).numpy().reshape(shape)
        else:
            amax = np.full(shape, fixed_amax(precision, name) or ACTIVATION_AMAX, np.float32)
        entries[name] = ScaleEntry(dtype, np.maximum(amax, np.float32(1e-8)), axis, block)
    return ScaleTable(precision, entries, "fixed ranges (latency table)") if entries else None


def key_passes(twin, layers: tuple[str, ...], precision: str, sparsity: str, *, backend: str = "ort",
               opset: int = 17) -> list:
    """The passes a compile at ``precision`` / ``sparsity`` runs over ``layers`` of ``twin``, with their plans."""
    from vitrt.compiler.target import TargetConfig
    from vitrt.transforms.base import PlanContext
    from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
    from vitrt.transforms.precision.plan import DTYPES, plan_for
    from vitrt.transforms.quant.config import QUANT_PRECISIONS
    from vitrt.transforms.quant.graph_pass import QDQPass
    from vitrt.transforms.quant.plan import QuantPlan
    from vitrt.transforms.sparsity.config import SparsityConfig
    from vitrt.transforms.sparsity.graph_pass import SparsityPass
    from vitrt.transforms.sparsity.planner import plan as sparsity_plan

    passes = []
    if sparsity == "2:4" and layers:
        ctx = PlanContext(target=TargetConfig(backend=backend, precision=precision), teacher=twin)
        passes.append(SparsityPass(sparsity_plan(twin, ctx, SparsityConfig(pattern="2:4", include=",".join(layers)))))
    if precision in QUANT_PRECISIONS and layers:
        table = fixed_scale_table(twin, precision, layers)
        if table is not None:
            passes.append(QDQPass(QuantPlan(precision, table)))
    dtype = activation_dtype(precision, backend)
    if dtype in DTYPES:
        passes.append(PrecisionTypingPass(plan_for(dtype, opset)))
    return passes


def _strip_interface_casts(graph: gs.Graph, *, inputs: bool, outputs: bool) -> None:
    """Remove the typing pass's Cast after a graph input / before a graph output (the typed tensor becomes the
    interface)."""
    if inputs:
        for index, inp in enumerate(list(graph.inputs)):
            casts = [n for n in inp.outputs if n.op == "Cast"]
            if len(casts) == 1 and len(inp.outputs) == 1:
                typed = casts[0].outputs[0]
                casts[0].outputs.clear()
                casts[0].inputs.clear()
                graph.inputs[index] = typed
    if outputs:
        for index, out in enumerate(list(graph.outputs)):
            producer = out.inputs[0] if out.inputs else None
            if producer is not None and producer.op == "Cast":
                typed = producer.inputs[0]
                producer.inputs.clear()
                producer.outputs.clear()
                graph.outputs[index] = typed
    graph.cleanup()


def with_key_passes(sub: TimedGraph, precision: str, sparsity: str, *, backend: str = "ort",
                    opset: int = 17) -> tuple[gs.Graph, np.ndarray]:
    """``sub``'s graph after the key's passes (in place) and its inputs in the graph's input type."""
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.pass_manager import PassManager

    passes = key_passes(sub.twin, sub.layers, precision, sparsity, backend=backend, opset=opset)
    if not passes:
        return sub.graph, sub.inputs
    view = PassManager(passes).run(GraphView(sub.graph, sub.twin.spec, validate=False)).view
    graph = view.graph
    _strip_interface_casts(graph, inputs=not sub.model_input, outputs=not sub.model_output)
    dtype = graph.inputs[0].dtype
    if dtype is not None and np.dtype(dtype) != np.float32:
        return graph, sub.inputs.astype(dtype)
    return graph, sub.inputs


def compiled_model(twin, batch: int, passes: list, precision: str, sparsity: str, *, backend: str = "ort",
                   opset: int = 17):
    """A whole (tiny) model as a compile builds it: lowered from ``twin``, ``passes`` (e.g. token merging), the
    key's passes over every layer, cleanup — for parts timed as the difference of two models."""
    from vitrt.compiler.cleanup import CleanupPass
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.lower import lower
    from vitrt.compiler.pass_manager import PassManager
    from vitrt.compiler.weights import twin_initializers

    layers = tuple(name.rpartition(".")[0] for name in twin_initializers(twin) if name.endswith(".weight")
                   and name.rpartition(".")[0] not in ("prefix_tokens", "pos_embed") and "norm" not in name)
    view = GraphView.from_onnx(lower(twin, batch=batch, opset=opset))
    schedule = list(passes) + key_passes(twin, layers, precision, sparsity, backend=backend, opset=opset)
    return PassManager(schedule + [CleanupPass()]).run(view).view.to_onnx()
