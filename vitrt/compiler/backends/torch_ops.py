"""ONNX operator semantics in torch: one function per ONNX op the canonical graphs and vitrt's passes emit.

Each function takes its inputs positionally and the node's attributes as keywords. Inputs listed in
:data:`STATIC_INPUTS` are shape-like operands (Reshape's shape, Slice's bounds, TopK's k, ...): the importer
passes them as Python values (from initializers, or from ``Shape`` at run time for a dynamic batch), so that
the traced program has static shapes wherever the graph does. The semantics follow the ONNX operator
specification where it is stricter than torch's defaults (TopK's tie order, QuantizeLinear's saturation and
round-half-to-even, negative gather indices).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vitrt.compiler.errors import VitrtError

# ONNX TensorProto data types -> torch dtypes (the ones vitrt's graphs carry).
ONNX_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
               10: torch.float16, 11: torch.float64, 16: torch.bfloat16, 17: torch.float8_e4m3fn}


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --- element-wise and simple ops ----------------------------------------------------------------
def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def div(a, b):
    if not a.is_floating_point():  # ONNX integer division truncates
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def equal(a, b):
    return a == b


def cast(x, *, to: int, saturate: int = 1):
    dtype = ONNX_DTYPES.get(to)
    if dtype is None:
        raise VitrtError(f"Cast to ONNX type {to} is not supported by the torch backend")
    if dtype == torch.float8_e4m3fn:
        return _to_float8_e4m3fn(x, saturate)
    return x.to(dtype)


# The largest float8 e4m3fn magnitude, and the largest input that still rounds to it (ties to even: 464 lies half way
# to 480, whose bit pattern is NaN, and rounds down to 448's even mantissa).
FLOAT8_E4M3FN_MAX = 448.0
FLOAT8_E4M3FN_ROUNDS_TO_MAX = 464.0


def _to_float8_e4m3fn(x, saturate: int):
    """ONNX's conversion to float8 e4m3fn (the reference implementation's): with ``saturate`` out-of-range values
    and infinities become ±448; without it they become NaN (the type has no infinity). torch's own conversion always
    saturates, so the NaNs are put in by hand."""
    if saturate:
        return x.clamp(-FLOAT8_E4M3FN_MAX, FLOAT8_E4M3FN_MAX).to(torch.float8_e4m3fn)
    overflow = x.abs() > FLOAT8_E4M3FN_ROUNDS_TO_MAX
    return torch.where(overflow, torch.full_like(x, float("nan")), x).to(torch.float8_e4m3fn)


def gelu(x, *, approximate: str = "none"):
    return F.gelu(x, approximate=approximate)


def softmax(x, *, axis: int = -1):
    return torch.softmax(x, dim=axis)


def layer_norm(x, scale, bias=None, *, axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1):
    axis = _axis(axis, x.dim())
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, epsilon)


def matmul(a, b):
    return torch.matmul(a, b)


def transpose(x, *, perm=None):
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


def conv(x, w, b=None, *, kernel_shape=None, strides=None, pads=None, dilations=None, group: int = 1,
         auto_pad: str = "NOTSET"):
    if auto_pad not in ("NOTSET", "VALID"):
        raise VitrtError(f"Conv auto_pad={auto_pad} is not supported by the torch backend")
    spatial = w.dim() - 2
    pads = list(pads or [0] * 2 * spatial)
    begin, end = pads[:spatial], pads[spatial:]
    if begin != end:  # asymmetric padding: pad explicitly (F.pad takes the last dim first)
        x = F.pad(x, [p for i in reversed(range(spatial)) for p in (begin[i], end[i])])
        begin = [0] * spatial
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, w, b, stride=tuple(strides or [1] * spatial), padding=tuple(begin),
              dilation=tuple(dilations or [1] * spatial), groups=group)


# --- shape ops (static operands are Python values) -------------------------------------------------
def reshape(x, shape, *, allowzero: int = 0):
    shape = [x.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def expand(x, shape):
    shape = list(shape)
    rank = max(len(shape), x.dim())
    shape = [1] * (rank - len(shape)) + shape
    dims = [1] * (rank - x.dim()) + list(x.shape)
    return x.expand([max(s, d) if s != 1 else d for s, d in zip(shape, dims)])


def shape_of(x, *, start: int = 0, end: int | None = None):
    """``Shape``: a Python tuple (a shape value the importer keeps out of tensors)."""
    return tuple(x.shape[start:end])


def concat_shape(*parts):
    """``Concat`` of shape values (tuples from ``Shape`` and constant int lists)."""
    return tuple(v for part in parts for v in part)


def concat(*xs, axis: int):
    return torch.cat(xs, dim=axis)


def slice_(x, starts, ends, axes=None, steps=None):
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 1:
            raise VitrtError("Slice with a negative step is not supported by the torch backend")
        index[_axis(axis, x.dim())] = slice(start, end, step)  # Python slicing clamps like ONNX does
    return x[tuple(index)]


def pad(x, pads, constant_value=None, axes=None, *, mode: str = "constant"):
    if mode != "constant":
        raise VitrtError(f"Pad mode '{mode}' is not supported by the torch backend")
    axes = [_axis(a, x.dim()) for a in axes] if axes is not None else list(range(x.dim()))
    n = len(axes)
    per_axis = {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}
    torch_pads = [p for a in reversed(range(x.dim())) for p in per_axis.get(a, (0, 0))]
    value = float(constant_value.reshape(-1)[0]) if isinstance(constant_value, torch.Tensor) else 0.0
    return F.pad(x, torch_pads, value=value)


def unsqueeze(x, axes):
    for axis in sorted(_axis(a, x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return x


def squeeze(x, axes=None):
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(_axis(a, x.dim()) for a in axes))


def flatten(x, *, axis: int = 1):
    axis = _axis(axis, x.dim())
    return x.reshape(math.prod(x.shape[:axis]), -1)


# --- reductions, selection and gathers ----------------------------------------------------------
def reduce_sum(x, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0):
    if not axes:
        return x if noop_with_empty_axes else x.sum().reshape([1] * x.dim() if keepdims else [])
    return x.sum(dim=tuple(axes), keepdim=bool(keepdims))


def reduce_mean(x, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0):
    if not axes:
        return x if noop_with_empty_axes else x.mean().reshape([1] * x.dim() if keepdims else [])
    return x.mean(dim=tuple(axes), keepdim=bool(keepdims))


def arg_min(x, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0):
    if select_last_index:
        flipped = x.flip(axis)
        return x.shape[axis] - 1 - flipped.argmin(dim=axis, keepdim=bool(keepdims))
    return x.argmin(dim=axis, keepdim=bool(keepdims))  # the first minimum, as ONNX wants


def top_k(x, k, *, axis: int = -1, largest: int = 1, sorted: int = 1):
    """ONNX TopK: equal values keep their original order (lower index first) — a stable sort, unlike topk."""
    k = int(k[0]) if isinstance(k, (list, tuple)) else int(k)
    values, indices = torch.sort(x, dim=axis, descending=bool(largest), stable=True)
    return values.narrow(axis, 0, k), indices.narrow(axis, 0, k)


def _non_negative(indices, size):
    return torch.where(indices < 0, indices + size, indices)


def gather(x, indices, *, axis: int = 0):
    axis = _axis(axis, x.dim())
    if isinstance(indices, int):  # a constant scalar index: a view
        return x.select(axis, indices)
    indices = _non_negative(indices, x.shape[axis])
    out = torch.index_select(x, axis, indices.reshape(-1))
    return out.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])


def gather_elements(x, indices, *, axis: int = 0):
    axis = _axis(axis, x.dim())
    return torch.gather(x, axis, _non_negative(indices, x.shape[axis]))


def gather_nd(x, indices, *, batch_dims: int = 0):
    """ONNX GatherND: the last axis of ``indices`` addresses the leading axes of ``x`` after ``batch_dims``."""
    batch_shape = x.shape[:batch_dims]
    batch = math.prod(batch_shape)
    m = indices.shape[-1]
    data = x.reshape(batch, *x.shape[batch_dims:])
    index = indices.reshape(batch, -1, m)
    addressed = data.shape[1:1 + m]
    linear = torch.zeros(index.shape[:2], dtype=torch.int64, device=x.device)
    for j, size in enumerate(addressed):
        linear = linear * size + _non_negative(index[..., j], size)
    flat = data.reshape(batch, math.prod(addressed), *data.shape[1 + m:])
    rows = torch.arange(batch, device=x.device).unsqueeze(1)
    return flat[rows, linear].reshape(*indices.shape[:-1], *data.shape[1 + m:])


def where(condition, a, b):
    return torch.where(condition, a, b)


# --- quantization --------------------------------------------------------------------------------
def _per_axis(t, x, axis: int | None, block_size: int = 0):
    """Broadcast a scale / zero point of DequantizeLinear or QuantizeLinear against ``x``."""
    if t.dim() == 0 or t.numel() == 1 and not block_size:
        return t.reshape(())
    axis = _axis(1 if axis is None else axis, x.dim())
    if block_size:  # blocked: t has x's rank with the blocked axis divided by block_size
        return t.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = t.numel()
    return t.reshape(shape)


QUANT_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def quantize_linear(x, scale, zero_point=None, *, axis: int = 1, saturate: int = 1, block_size: int = 0,
                    output_dtype: int = 0):
    """y = saturate(round_half_even(x / scale) + zero_point), in zero_point's type; without a zero point in
    ``output_dtype``'s (opset 21), else uint8 — as ONNX defines it."""
    if zero_point is not None:
        dtype = zero_point.dtype
    else:
        dtype = ONNX_DTYPES.get(output_dtype) if output_dtype else torch.uint8
    if dtype is None:
        raise VitrtError(f"QuantizeLinear to ONNX type {output_dtype} is not supported by the torch backend")
    s = _per_axis(scale, x, axis, block_size)
    if dtype == torch.float8_e4m3fn:
        return _to_float8_e4m3fn(x / s, saturate)
    if dtype not in QUANT_RANGES:
        raise VitrtError(f"QuantizeLinear to {dtype} is not supported by the torch backend")
    zp = _per_axis(zero_point, x, axis, block_size).to(x.dtype) if zero_point is not None else 0
    lo, hi = QUANT_RANGES[dtype]
    return torch.clamp(torch.round(x / s) + zp, lo, hi).to(dtype)


def dequantize_linear(x, scale, zero_point=None, *, axis: int = 1, block_size: int = 0, output_dtype: int = 0):
    """y = (x - zero_point) * scale, in scale's type."""
    s = _per_axis(scale, x, axis, block_size)
    xf = x.to(s.dtype)
    if zero_point is not None and x.dtype != torch.float8_e4m3fn:
        xf = xf - _per_axis(zero_point, x, axis, block_size).to(s.dtype)
    return xf * s


def unary(fn):
    def op(x):
        return fn(x)
    op.__name__ = fn.__name__
    return op


OPS = {
    "Add": add, "Sub": sub, "Mul": mul, "Div": div, "Equal": equal, "Cast": cast, "Gelu": gelu, "Softmax": softmax,
    "LayerNormalization": layer_norm, "MatMul": matmul, "Transpose": transpose, "Conv": conv, "Reshape": reshape,
    "Expand": expand, "Shape": shape_of, "Concat": concat, "Slice": slice_, "Pad": pad, "Unsqueeze": unsqueeze,
    "Squeeze": squeeze, "Flatten": flatten, "ReduceSum": reduce_sum, "ReduceMean": reduce_mean, "ArgMin": arg_min,
    "TopK": top_k, "Gather": gather, "GatherElements": gather_elements, "GatherND": gather_nd, "Where": where,
    "QuantizeLinear": quantize_linear, "DequantizeLinear": dequantize_linear,
    "Erf": unary(torch.erf), "Sqrt": unary(torch.sqrt), "Log": unary(torch.log), "Exp": unary(torch.exp),
    "Neg": unary(torch.neg), "Relu": unary(torch.relu), "Sigmoid": unary(torch.sigmoid), "Tanh": unary(torch.tanh),
    "Identity": unary(torch.clone),
}
# Inputs that are shapes, bounds or counts: passed to the op as Python ints / tuples.
STATIC_INPUTS = {"Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3), "Unsqueeze": (1,),
                 "Squeeze": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "TopK": (1,)}
# Inputs passed as Python values when they are scalar constants, as tensors otherwise.
STATIC_IF_CONSTANT = {"Gather": (1,)}
MULTI_OUTPUT = {"TopK": 2}
