"""Q/DQ insertion: quantize both inputs of every quantized MatMul / Conv from a scale table (TensorRT placement).

    x ─► QuantizeLinear ─► DequantizeLinear ─┐                     (activation: per tensor, zero point 0)
                                              MatMul(blocks.i.attn.q) ─► Add(bias) ─► ...   (output stays float)
    W_q (int8 [K, N]) ─► DequantizeLinear ───┘                     (weight: per output channel, axis 1)

The weight is stored as the quantized integer initializer (named like the float one, ``<layer>.weight``) behind
a DequantizeLinear — the form TensorRT and ONNX Runtime fuse into integer kernels. Zeros stay zeros, so 2:4
weights stay 2:4 behind their DequantizeLinear. Placement follows TensorRT's rules: Q/DQ only on MatMul / Conv
inputs, never on their outputs; LayerNorm, Softmax and GELU stay float; the attention matmuls (q and kᵀ before
QKᵀ, the softmax output and v before ·V) only with ``quantize_attention`` and only in blocks whose fused
attention allows it (head size 16/32/64, <= 512 tokens). Formats: INT8 (opset 13+), FP8 E4M3 (opset 19+),
INT4 weight-only with block-wise DequantizeLinear (opset 21, ``block_size`` along K).

The torch twin of this pass is the fake-quant twin (:mod:`vitrt.transforms.quant.twin`). QAT-trained weights travel
in the plan and are written first; the graph's float weights are then quantized with modelopt's own arithmetic
(round(w · qmax / amax)).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import torch
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView, quiet_graphsurgeon, set_opset
from vitrt.compiler.pass_manager import CANONICAL, Pass, PassContext, PassResult
from vitrt.compiler.trt_lint import qdq_findings
from vitrt.compiler.weights import write_state
from vitrt.transforms.quant.plan import QuantPlan
from vitrt.transforms.quant.scale_table import QMAX, ScaleEntry, ScaleTable
from vitrt.transforms.quant.twin import apply_plan

MIN_OPSET = {"int8": 13, "fp8-e4m3": 19, "int4-block": 21}
ATTENTION_INPUTS = {"qk.input_a": ("qk", 0), "qk.input_b": ("qk", 1), "av.input_a": ("av", 0), "av.input_b": ("av", 1)}

# Logits tolerance of the Q/DQ graph (ONNX Runtime, basic optimisations) against the fake-quant twin, per dtype.
# Both compute the same quantize-dequantize arithmetic and agree to ~1e-7 on most images; they differ where
# x / s (ONNX) and x · (qmax / amax) (modelopt) round a value within one float ulp of a tie to different
# integers, which moves one activation by one quantization step; propagated through the blocks that moved the
# digits reference's logits by up to 0.11 (fp8, random-input verification). 0.25 leaves margin for
# wider models; the tests also require the mean error to stay well below the quantization effect itself, which a
# systematic error (wrong scale, axis, placement) would not. INT4 weight-only has no activation rounding: fp32.
QDQ_TOLERANCE = {"int8": 0.25, "fp8": 0.25, "int4w": 1e-4}


def quantize_values(values: torch.Tensor, entry: ScaleEntry, axis_len_shape) -> np.ndarray:
    """``values`` (float, ONNX layout) -> stored integer / fp8 array, exactly as the fake quantizer rounds."""
    amax = torch.from_numpy(entry.amax).reshape(axis_len_shape)
    if entry.dtype == "int8":
        q = torch.clamp(torch.round(values * (torch.tensor(QMAX["int8"]) / amax)), -127, 127)
        return q.numpy().astype(np.int8)
    if entry.dtype == "fp8-e4m3":
        import ml_dtypes

        return (values * (torch.tensor(QMAX["fp8-e4m3"]) / amax)).to(torch.float8_e4m3fn).float().numpy() \
            .astype(ml_dtypes.float8_e4m3fn)
    if entry.dtype == "int4-block":
        import ml_dtypes

        scale = torch.from_numpy(np.repeat(entry.amax / np.float32(QMAX["int4-block"]), entry.block_size, axis=0))
        return torch.clamp(torch.round(values / scale), -8, 7).numpy().astype(np.int8).astype(ml_dtypes.int4)
    raise VitrtError(f"unsupported quantized dtype '{entry.dtype}'")


def _stored_constant(name: str, array: np.ndarray) -> gs.Constant:
    """int8 as a plain constant; fp8 / int4 through an ONNX TensorProto (graphsurgeon cannot pack int4).

    The shape is kept exactly (np.ascontiguousarray would turn a 0-d zero point into shape [1]: ONNX and
    TensorRT's IQuantizeLayer want scale and zero point of identical shape)."""
    array = np.array(array, order="C")
    if array.dtype == np.int8:
        return gs.Constant(name, array)
    with quiet_graphsurgeon():  # it warns that float8 has no numpy type (the ONNX type is kept, as wanted)
        return gs.Constant(name, LazyValues(numpy_helper.from_array(array, name)))


def _zero_point(name: str, dtype: str, shape) -> gs.Constant:
    """Zeros of the quantized ``dtype`` with ``shape`` — the shape of the scale they go with."""
    import ml_dtypes

    np_dtype = {"int8": np.int8, "fp8-e4m3": ml_dtypes.float8_e4m3fn, "int4-block": ml_dtypes.int4}[dtype]
    return _stored_constant(name, np.zeros(shape, dtype=np_dtype))


class QDQInserter:
    """Adds Q/DQ nodes to a GraphView's graph; every new tensor gets its dtype and shape."""

    def __init__(self, view: GraphView, table: ScaleTable):
        self.view, self.graph, self.table = view, view.graph, table
        self.counts = {"activation_qdq": 0, "weight_dq": 0}

    def activation(self, node: gs.Node, index: int, key: str) -> None:
        """Q -> DQ in front of input ``index`` of ``node`` (per tensor, zero point 0)."""
        entry = self.table.entries[key]
        x = node.inputs[index]
        scale = gs.Constant(f"{key}.scale", np.array(entry.scale.reshape(()), dtype=np.float32))
        zp = _zero_point(f"{key}.zero_point", entry.dtype, ())
        xq = gs.Variable(f"{key}.quantized")  # typed by shape inference (int8 / float8e4m3fn)
        xd = gs.Variable(f"{key}.dequantized", dtype=np.float32, shape=x.shape)
        self.graph.nodes.append(gs.Node("QuantizeLinear", f"{key}.quantize", inputs=[x, scale, zp], outputs=[xq]))
        self.graph.nodes.append(gs.Node("DequantizeLinear", f"{key}.dequantize", inputs=[xq, scale, zp], outputs=[xd]))
        node.inputs[index] = xd
        self.counts["activation_qdq"] += 1

    def weight(self, node: gs.Node, key: str, values: torch.Tensor) -> None:
        """Replace the float weight input 1 of ``node`` by the quantized initializer + DequantizeLinear."""
        entry = self.table.entries[key]
        shape = tuple(values.shape)
        if entry.dtype == "int4-block":
            stored = quantize_values(values, entry, entry.amax.shape)
            attrs = {"axis": 0, "block_size": int(entry.block_size)}
        elif node.op == "Conv":  # weight [O, C, kh, kw]: per output channel = axis 0
            stored = quantize_values(values, entry, (shape[0], 1, 1, 1))
            attrs = {"axis": 0}
        else:  # MatMul B[K, N]: per output channel = axis 1
            stored = quantize_values(values, entry, (1, shape[1]))
            attrs = {"axis": 1}
        weight = _stored_constant(key, stored)
        scale = gs.Constant(f"{key}.scale", np.ascontiguousarray(entry.scale, dtype=np.float32))
        zp = _zero_point(f"{key}.zero_point", entry.dtype, entry.amax.shape)
        out = gs.Variable(f"{key}.dequantized", dtype=np.float32, shape=shape)
        self.graph.nodes.append(gs.Node("DequantizeLinear", f"{key}.dequantize", attrs=attrs,
                                        inputs=[weight, scale, zp], outputs=[out]))
        node.inputs[1] = out
        self.counts["weight_dq"] += 1


def insert_qdq(view: GraphView, table: ScaleTable) -> dict:
    """Insert every Q/DQ the table names into ``view``, quantizing the graph's own float weights."""
    ins = QDQInserter(view, table)
    entries = table.entries
    for key in entries:
        layer, _, role = key.rpartition(".")
        if role == "weight":
            node = view.node(layer)
            values = node.inputs[1].values
            ins.weight(node, key, torch.from_numpy(np.asarray(values, dtype=np.float32)))
        elif role == "input":
            ins.activation(view.node(layer), 0, key)
    for key in entries:  # attention matmuls: blocks.i.attn.qk.input_a -> node blocks.i.attn.qk input 0
        for local, (op_name, index) in ATTENTION_INPUTS.items():
            if key.endswith(f".attn.{local}"):
                prefix = key[: -len(local)]
                ins.activation(view.node(prefix + op_name), index, key)
    dtypes = {e.dtype for e in entries.values()}
    opset = max([view.graph.opset] + [MIN_OPSET[d] for d in dtypes])
    set_opset(view.graph, opset)
    view.refresh()
    return dict(ins.counts, opset=opset)


class QDQPass(Pass):
    """Q/DQ from the plan's scale table around the plan's (QAT) weights; the twin becomes the fake-quant twin."""

    name = "qdq"
    changes_function = True
    preserves = frozenset({CANONICAL})
    run_after = ("sparsity_2to4",)  # quantize the masked weights

    def __init__(self, plan: QuantPlan):
        self.plan = plan

    def tolerance(self) -> float:
        return QDQ_TOLERANCE[self.plan.precision]

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        if self.plan.weights:  # QAT trained the weights and biases
            write_state(view.graph, self.plan.weights)
        stats = insert_qdq(view, self.plan.table)
        problems = qdq_findings(gs.export_onnx(view.graph))  # the TensorRT lint's Q/DQ rules: the postcondition
        if problems:
            raise VitrtError(f"Q/DQ pass produced a graph TensorRT would not accept: {problems[0]}")
        return PassResult(view, True, stats)

    def apply_to_twin(self, twin):
        return apply_plan(twin, self.plan)
