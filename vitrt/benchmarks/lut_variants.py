"""The precision × sparsity variants of a latency-table subgraph, made by the compiler's own rewrites.

A ``fp16/2:4`` table must time what ``vitrt compile --precision fp16 --sparsity 2:4`` emits, so each timed
subgraph (one block half, the stem or the head, random weights) goes through the same graph rewrites, in the
compile's order:

    2:4     every weight MatMul B[K, N] the sparsity stage would take (K a multiple of 4, at least the default
            --sparse-min-weights weights) gets its magnitude 2:4 mask along K (vitrt.kernels.sparse24.mask_2to4,
            the planner's mask), and the backend is told (BuildOptions.sparse_weights: TensorRT's SPARSE_WEIGHTS,
            the torch backend's semi-structured GEMMs)
    int8    Q/DQ on every MatMul / Conv input from a max-calibrated scale table (weights per output channel,
            activations per tensor from the subgraph's own random input): vitrt.transforms.quant's insert_qdq
    fp16    vitrt.transforms.precision's type_float (LayerNorm and Softmax kept in fp32)

Latency does not depend on the values, only on the types, shapes and sparsity pattern, which are the
compile's. FP8, INT4 and BF16 tables are not built by this module yet (refused with one line).
"""

from __future__ import annotations

import numpy as np
import onnx

from vitrt.compiler.errors import VitrtError

VARIANT_PRECISIONS = ("fp32", "fp16", "int8")


def check_variant(precision: str, sparsity: str) -> None:
    if precision not in VARIANT_PRECISIONS:
        raise VitrtError(f"vitrt lut build times {', '.join(VARIANT_PRECISIONS)} subgraphs; --precision {precision} "
                         "is not built yet")


def _graph(model: onnx.ModelProto):
    from vitrt.compiler.graph import import_graph

    return import_graph(model)


def _view(graph):
    """A GraphView over a subgraph: the rewrites address nodes by canonical name; no ViT spec to validate."""
    from vitrt.compiler.graph import GraphView

    return GraphView(graph, None, validate=False)


def _weight_matmuls(graph):
    import onnx_graphsurgeon as gs

    return [n for n in graph.nodes if n.op == "MatMul" and isinstance(n.inputs[1], gs.Constant)
            and len(n.inputs[1].shape) == 2]


def mask_2to4(graph) -> int:
    """Mask every weight the sparsity stage would take; returns how many."""
    from vitrt.kernels import sparse24
    from vitrt.transforms.sparsity.config import DEFAULT_MIN_WEIGHTS

    masked = 0
    for node in _weight_matmuls(graph):
        w = np.asarray(node.inputs[1].values, dtype=np.float32)
        if w.shape[0] % 4 or w.size < DEFAULT_MIN_WEIGHTS:
            continue
        node.inputs[1].values = np.ascontiguousarray(np.where(sparse24.mask_2to4(w, 0), w, np.float32(0)))
        masked += 1
    return masked


def _activation_amax(model: onnx.ModelProto, names: list[str], inputs: np.ndarray) -> dict[str, float]:
    """max |x| of the named tensors on the subgraph's own input (ONNX Runtime)."""
    from vitrt.compiler.backends.ort import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort_session(probe, level="basic")
    values = session.run(names, {session.get_inputs()[0].name: inputs})
    return {n: float(np.abs(v).max()) or 1.0 for n, v in zip(names, values)}


def insert_int8(model: onnx.ModelProto, graph, inputs: np.ndarray) -> int:
    """Q/DQ around every weight MatMul and the patch Conv, max-calibrated on ``inputs``."""
    import onnx_graphsurgeon as gs

    from vitrt.transforms.quant.graph_pass import insert_qdq
    from vitrt.transforms.quant.scale_table import ScaleEntry, ScaleTable

    layers = _weight_matmuls(graph) + [n for n in graph.nodes if n.op == "Conv" and isinstance(n.inputs[1], gs.Constant)]
    amax = _activation_amax(model, [n.inputs[0].name for n in layers], inputs)
    entries = {}
    for node in layers:
        w = np.abs(np.asarray(node.inputs[1].values, dtype=np.float32))
        per_channel = w.max(axis=0) if node.op == "MatMul" else w.reshape(w.shape[0], -1).max(axis=1)
        entries[f"{node.name}.weight"] = ScaleEntry("int8", np.maximum(per_channel, 1e-8), axis=1 if node.op == "MatMul" else 0)
        entries[f"{node.name}.input"] = ScaleEntry("int8", np.float32(amax[node.inputs[0].name]))
    insert_qdq(_view(graph), ScaleTable("int8", entries, source="max calibration on the timed input"))
    return len(layers)


def variant_model(model: onnx.ModelProto, inputs: np.ndarray, precision: str, sparsity: str) -> onnx.ModelProto:
    """``model`` rewritten for the ``precision/sparsity`` key (fp32/dense: unchanged)."""
    import onnx_graphsurgeon as gs

    from vitrt.compiler.lower import ir_version_for

    check_variant(precision, sparsity)
    if (precision, sparsity) == ("fp32", "dense"):
        return model
    graph = _graph(model)
    if sparsity == "2:4":
        mask_2to4(graph)
    if precision == "int8":
        insert_int8(model, graph, inputs)
    elif precision == "fp16":
        from vitrt.transforms.precision.graph_pass import type_float

        type_float(_view(graph), "fp16")
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = ir_version_for(graph.opset)
    onnx.checker.check_model(out)
    return out
