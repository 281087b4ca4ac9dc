"""The compiled ONNX graph imported back into torch: one ``torch.fx.GraphModule``, node for node.

The torch backend runs the *graph* the passes produced (not the twin), so it runs every transform — present
and future — exactly as ONNX Runtime and TensorRT do, precision included (casts, Q/DQ). Three patterns become
the kernels a torch user would pick; everything else is the ONNX op's own semantics (:mod:`torch_ops`):

    MatMul(x, W[K, N] const) ─► Add(bias)                          ─► linear kernel (dense or 2:4 sparse)
    MatMul(DQ(Q(x)), DQ(W_q int8)) ─► Add(bias)                      ─► int8 linear kernel (torch._int_mm)
    MatMul(q, kᵀ) ─► [Mul(scale)] ─► [Add(bias)] ─► [Cast] ─► Softmax ─► [Cast] ─► MatMul(·, v)
                                                                     ─► F.scaled_dot_product_attention
    x ─► Div(√2) ─► Erf ─► Add(1) ─► Mul(x, ·) ─► Mul(0.5)             ─► F.gelu (exact, erf form)

(:mod:`torch_kernels` chooses among the linear kernels per device.) Initializers become buffers on the target
device; constant subgraphs (DequantizeLinear of a weight feeding a Conv, INT4 block dequantization, Casts of
constants) are folded once at import. ``Shape`` yields Python tuples, so a dynamic batch stays symbolic and
every other shape is static. Each fx node keeps the ONNX node's name in ``meta["onnx_name"]`` — the canonical
names the per-block profiler groups by.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import fx, nn

from vitrt.compiler.backends import torch_ops as ops
from vitrt.compiler.backends.torch_kernels import float_linear, int8_linear
from vitrt.compiler.errors import VitrtError

SHAPE = "shape"  # value kind: a Python tuple produced by Shape (dynamic batch)


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor copied from ``array``, also from ml_dtypes' bfloat16, float8 e4m3fn and int4 (what numpy_helper
    returns for those ONNX types, and what a typed subgraph's activations are), which torch.from_numpy does not take."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16)
    if array.dtype.name == "float8_e4m3fn":
        return torch.from_numpy(array.view(np.uint8).copy()).view(torch.float8_e4m3fn)
    if array.dtype.name in ("int4", "uint4"):
        return torch.from_numpy(array.astype(np.int8))
    return torch.from_numpy(np.array(array))


def to_torch(tensor: onnx.TensorProto) -> torch.Tensor:
    """An initializer as a CPU tensor."""
    return from_numpy(numpy_helper.to_array(tensor))


def attributes(node: onnx.NodeProto) -> dict:
    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = to_torch(value)
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        out[attr.name] = value
    return out


def constant_value(node: onnx.NodeProto) -> torch.Tensor:
    """A Constant node's tensor, whichever attribute holds it (``value``, or ``value_float(s)`` / ``value_int(s)``:
    float32 and int64, as ONNX defines them)."""
    attrs = attributes(node)
    if "value" in attrs:
        return attrs["value"]
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                        ("value_ints", torch.int64)):
        if name in attrs:
            return torch.tensor(attrs[name], dtype=dtype)
    raise VitrtError(f"Constant '{node.name}' holds {sorted(attrs)}: the torch backend reads value, value_float(s) "
                     "and value_int(s)")


class _Constants(dict):
    """Constant tensors by ONNX name; a folded node's outputs are computed only when something reads them
    (an INT8 weight's dequantized float copy is never made when the integer kernel takes the weight)."""

    def __init__(self, values):
        super().__init__(values)
        self._pending: dict[str, tuple] = {}

    def defer(self, names: list[str], compute) -> None:
        for index, name in enumerate(names):
            self._pending[name] = (compute, index)
            super().__setitem__(name, None)

    def __getitem__(self, name):
        value = super().__getitem__(name)
        if value is None and name in self._pending:
            compute, index = self._pending.pop(name)
            out = compute()
            value = out[index] if isinstance(out, tuple) else out
            super().__setitem__(name, value)
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default


def _python(value: torch.Tensor):
    """A constant shape-like operand as a Python int (0-d) or list of ints."""
    return int(value) if value.dim() == 0 else [int(v) for v in value.reshape(-1).tolist()]


@dataclass
class Imported:
    module: fx.GraphModule
    kernels: dict[str, dict] = field(default_factory=dict)  # weight MatMul name -> {"kernel", "reason"?}
    fused_attention: list[str] = field(default_factory=list)  # attention MatMul (q·kᵀ) names run as SDPA
    batch: int | None = None  # static batch of the graph input, None when dynamic


class _Importer:
    def __init__(self, model: onnx.ModelProto, device: torch.device, sparse_weights: bool):
        self.model, self.device, self.sparse_weights = model, device, sparse_weights
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(n)
        self.graph_outputs = {o.name for o in graph.output}
        self.consts = _Constants({i.name: to_torch(i) for i in graph.initializer})
        self.root = nn.Module()
        self.fx = fx.Graph()
        self.values: dict[str, fx.Node] = {}
        self.kinds: dict[str, str] = {}
        self.buffers: dict[str, fx.Node] = {}
        self.done: set[str] = set()  # node names consumed by a fused pattern
        self.result = Imported(module=None)  # type: ignore[arg-type]
        self._names: set[str] = set()

    # --- helpers ---------------------------------------------------------------------------------
    def _attr_name(self, name: str) -> str:
        base = re.sub(r"\W", "_", name).strip("_") or "t"
        base = f"t_{base}" if base[0].isdigit() else base
        candidate, i = base, 1
        while candidate in self._names or hasattr(self.root, candidate):  # nn.Module's own: half, to, training...
            candidate, i = f"{base}_{i}", i + 1
        self._names.add(candidate)
        return candidate

    def tensor(self, name: str) -> fx.Node:
        """The fx value of ``name``; a constant becomes a buffer on the device the first time it is used."""
        if name in self.values:
            return self.values[name]
        if name in self.consts:
            attr = self._attr_name(name)
            self.root.register_buffer(attr, self.consts[name].to(self.device))
            node = self.values[name] = self.fx.get_attr(attr)
            return node
        raise VitrtError(f"the graph uses '{name}' before it is produced: not a valid ONNX graph")

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.graph_outputs else None

    def emit(self, fn, args, kwargs, onnx_name: str) -> fx.Node:
        node = self.fx.call_function(fn, tuple(args), kwargs)
        node.meta["onnx_name"] = onnx_name
        return node

    def emit_module(self, name: str, module: nn.Module, args) -> fx.Node:
        attr = self._attr_name(name)
        self.root.add_module(attr, module)
        node = self.fx.call_module(attr, tuple(args))
        node.meta["onnx_name"] = name
        return node

    # --- the walk ----------------------------------------------------------------------------------
    def run(self) -> Imported:
        graph = self.model.graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        for inp in inputs:
            self.values[inp.name] = self.fx.placeholder(self._attr_name(inp.name))
        dims = inputs[0].type.tensor_type.shape.dim
        self.result.batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        for node in self.nodes:
            if node.name in self.done:
                continue
            if node.op_type == "Constant":
                self.consts[node.output[0]] = constant_value(node)
            elif node.op_type == "MatMul" and (self.linear(node) or self.attention(node)):
                pass
            elif node.op_type == "Div" and self.gelu(node):
                pass
            elif not self.fold(node):
                self.generic(node)
        outputs = [self.tensor(o.name) for o in graph.output]
        self.fx.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        module = fx.GraphModule(self.root, self.fx, class_name="CompiledViT")
        module.graph.eliminate_dead_code()  # Q/DQ and constants the fused kernels replaced
        module.delete_all_unused_submodules()
        module.recompile()
        self.result.module = module
        return self.result

    def fold(self, node: onnx.NodeProto) -> bool:
        """A node whose inputs are all constants is evaluated once, at import, when its output is first read."""
        if node.op_type not in ops.OPS or node.op_type == "Shape" \
                or any(name and name not in self.consts for name in node.input):
            return False

        def compute():
            args = self._static_args(node, lambda name: self.consts[name])
            return ops.OPS[node.op_type](*args, **attributes(node))
        self.consts.defer(list(node.output), compute)
        return True

    def _static_args(self, node, tensor_of):
        static = ops.STATIC_INPUTS.get(node.op_type, ())
        optional = ops.STATIC_IF_CONSTANT.get(node.op_type, ())
        args = []
        for i, name in enumerate(node.input):
            if not name:
                args.append(None)
            elif (i in static or (i in optional and self.consts[name].dim() == 0)) if name in self.consts else False:
                args.append(_python(self.consts[name]))
            elif i in static and self.kinds.get(name) == SHAPE:
                args.append(self.values[name])
            elif i in static:
                raise VitrtError(f"node '{node.name}' ({node.op_type}): input {i} must be a constant or a shape for "
                                 "the torch backend")
            else:
                args.append(tensor_of(name))
        return args

    def generic(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op not in ops.OPS:
            raise VitrtError(f"the torch backend has no implementation of ONNX op {op} (node '{node.name}'); "
                             f"supported: {', '.join(sorted(ops.OPS))}")
        attrs = attributes(node)
        if op == "Concat" and any(self.kinds.get(i) == SHAPE for i in node.input):
            parts = [self.values[i] if self.kinds.get(i) == SHAPE else _python(self.consts[i]) for i in node.input]
            self._bind(node, self.emit(ops.concat_shape, [p if isinstance(p, fx.Node) else tuple(p) for p in parts],
                                       {}, node.name), SHAPE)
            return
        args = self._static_args(node, self.tensor)
        out = self.emit(ops.OPS[op], args, attrs, node.name)
        if op in ops.MULTI_OUTPUT:
            for i, name in enumerate(node.output):
                if name:
                    self.values[name] = self.emit(operator.getitem, [out, i], {}, node.name)
            return
        self._bind(node, out, SHAPE if op == "Shape" else None)

    def _bind(self, node, value: fx.Node, kind: str | None = None, output: str | None = None) -> None:
        name = output or node.output[0]
        self.values[name] = value
        if kind:
            self.kinds[name] = kind

    # --- patterns ----------------------------------------------------------------------------------
    def _bias_add(self, matmul: onnx.NodeProto, n: int):
        """The Add that adds a constant [N] bias to ``matmul``'s output (and nothing else reads), or None."""
        add = self.single_consumer(matmul.output[0])
        if add is None or add.op_type != "Add":
            return None
        other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
        bias = self.consts.get(other)
        if bias is None or bias.dim() != 1 or bias.numel() != n:
            return None
        return add, bias

    def _dequantized_weight(self, name: str):
        """(int8 W[K, N], scale) when ``name`` is DequantizeLinear of a constant int8 [K, N] weight per output
        channel with zero point 0."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.consts:
            return None
        w = self.consts[dq.input[0]]
        scale = self.consts.get(dq.input[1])
        zp = self.consts.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        axis = attributes(dq).get("axis", 1)
        if w.dtype != torch.int8 or w.dim() != 2 or scale is None or attributes(dq).get("block_size"):
            return None
        if scale.numel() not in (1, w.shape[1]) or (scale.numel() > 1 and axis not in (1, -1)):
            return None
        if zp is not None and bool(zp.any()):
            return None
        return w, scale.reshape(-1).expand(w.shape[1]).contiguous()

    def _quantized_activation(self, name: str):
        """(float input, scale) when ``name`` is DQ(Q(x)) per tensor in int8 with zero point 0."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in self.consts:
            return None
        q = self.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        scale = self.consts.get(q.input[1])
        zps = [self.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None for n in (q, dq)]
        if scale is None or scale.numel() != 1 or dq.input[1] != q.input[1]:
            return None
        if any(zp is None or zp.dtype != torch.int8 or bool(zp.any()) for zp in zps):
            return None
        return q.input[0], scale

    def linear(self, node: onnx.NodeProto) -> bool:
        a, b = node.input
        int8 = self._dequantized_weight(b)
        activation = self._quantized_activation(a) if int8 is not None else None
        weight = self.consts.get(b)
        if activation is None and (weight is None or weight.dim() != 2 or not weight.is_floating_point()):
            return False
        n = int8[0].shape[1] if activation is not None else weight.shape[1]
        fused = self._bias_add(node, n)
        bias = fused[1].to(self.device) if fused else None
        if activation is not None:
            (w_q, w_scale), (x_name, x_scale) = int8, activation
            kernel = int8_linear(w_q.to(self.device), x_scale.to(self.device), w_scale.to(self.device), bias,
                                 sparse_weights=self.sparse_weights)
            x = self.tensor(x_name)
        else:
            kernel = float_linear(weight.to(self.device), bias, sparse_weights=self.sparse_weights)
            x = self.tensor(a)
        out = self.emit_module(node.name, kernel, [x])
        self.result.kernels[node.name] = {"kernel": kernel.kind, **({"reason": kernel.reason} if kernel.reason else {})}
        if fused:
            self.done.add(fused[0].name)
            self._bind(fused[0], out)
        else:
            self._bind(node, out)
        return True

    def attention(self, qk: onnx.NodeProto) -> bool:
        """softmax(q·kᵀ·scale + bias)·v as F.scaled_dot_product_attention (see the module docstring)."""
        if any(self.producer.get(i) is not None and self.producer[i].op_type == "DequantizeLinear" for i in qk.input) \
                or any(i in self.consts for i in qk.input):
            return False
        chain, scale, bias, casts = [], 1.0, None, 0
        current = qk
        while True:
            nxt = self.single_consumer(current.output[0])
            if nxt is None:
                return False
            if nxt.op_type == "Mul" and not chain and scale == 1.0:
                other = nxt.input[1] if nxt.input[0] == current.output[0] else nxt.input[0]
                if other not in self.consts or self.consts[other].numel() != 1:
                    return False
                scale = float(self.consts[other].reshape(()))
            elif nxt.op_type == "Add" and bias is None and casts == 0:
                bias = nxt.input[1] if nxt.input[0] == current.output[0] else nxt.input[0]
            elif nxt.op_type == "Cast" and casts == 0:
                casts = 1
            elif nxt.op_type == "Softmax":
                break
            else:
                return False
            chain.append(nxt)
            current = nxt
        softmax = nxt
        if attributes(softmax).get("axis", -1) not in (-1, 3):
            return False
        chain.append(softmax)
        after = self.single_consumer(softmax.output[0])
        if after is not None and after.op_type == "Cast" and casts:
            chain.append(after)
            after = self.single_consumer(after.output[0])
            casts = 0
        if casts or after is None or after.op_type != "MatMul" or after.input[0] != chain[-1].output[0]:
            return False
        v_producer = self.producer.get(after.input[1])
        if v_producer is not None and v_producer.op_type == "DequantizeLinear":
            return False
        q, kt, v = self.tensor(qk.input[0]), self.tensor(qk.input[1]), self.tensor(after.input[1])
        k = self.emit(torch.transpose, [kt, -2, -1], {}, qk.name)
        mask = self.tensor(bias) if bias is not None else None
        out = self.emit(F.scaled_dot_product_attention, [q, k, v], {"attn_mask": mask, "scale": scale}, qk.name)
        self.done.update(n.name for n in chain + [after])
        self._bind(after, out)
        self.result.fused_attention.append(qk.name)
        return True


    def _constant_operand(self, node: onnx.NodeProto, value_input: str) -> float | None:
        """The scalar constant ``node`` combines with ``value_input``, or None."""
        others = [i for i in node.input if i != value_input]
        if len(node.input) != 2 or len(others) != 1 or others[0] not in self.consts or self.consts[others[0]].numel() != 1:
            return None
        return float(self.consts[others[0]].float().reshape(()))

    def gelu(self, div: onnx.NodeProto) -> bool:
        """The lowering's exact GELU, x · 0.5 · (1 + erf(x / √2)), as one F.gelu."""
        x = div.input[0]
        sqrt2 = self._constant_operand(div, x) if div.input[1] in self.consts else None
        if sqrt2 is None or abs(sqrt2 - 2 ** 0.5) > 1e-3:  # an fp16 graph holds √2 rounded to fp16
            return False
        chain, current = [div], div
        for op, check in (("Erf", None), ("Add", 1.0), ("Mul", "x"), ("Mul", 0.5)):
            nxt = self.single_consumer(current.output[0])
            if nxt is None or nxt.op_type != op:
                return False
            if check == "x":
                if sorted(nxt.input) != sorted([x, current.output[0]]):
                    return False
            elif check is not None:
                value = self._constant_operand(nxt, current.output[0])
                if value is None or abs(value - check) > 1e-6:
                    return False
            chain.append(nxt)
            current = nxt
        self.done.update(n.name for n in chain)
        self._bind(current, self.emit(F.gelu, [self.tensor(x)], {}, div.name))
        return True


def import_onnx(model: onnx.ModelProto, device: torch.device | str = "cpu", *, sparse_weights: bool = False
                ) -> Imported:
    """``model`` (a compiled vitrt graph) as an fx GraphModule on ``device`` with its kernel choices."""
    return _Importer(model, torch.device(device), sparse_weights).run()
