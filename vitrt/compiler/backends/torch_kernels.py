"""The torch backend's GEMM kernels for a weight MatMul (+ bias Add) of the compiled graph.

    kernel       when                                                     torch path
    dense        float weight (fp32 / fp16 / bf16)                        F.linear
    sparse24     float16 / bfloat16 weight that is 2:4 along K, CUDA      F.linear on to_sparse_semi_structured(W)
                 sm80+, build hint sparse_weights (the 2:4 pass ran)      (cuSPARSELt, else CUTLASS)
    int8         Q/DQ int8 MatMul: per-tensor activation, per-channel      torch._int_mm(q(x), W_q) · s_x · s_w + b
                 weight, zero points 0 (vitrt's Q/DQ pass)
    int8_sparse24  the int8 case with a 2:4 weight on CUDA sm80+           torch._cslt_sparse_mm(compressed W_q, q(x)ᵀ)

Each kernel says which it is (``kind``) and, when it fell back from a faster one, why (``reason``): the
backend records both, so that a reader of the artifact knows what ran. The INT8 kernels are the integer
GEMMs ONNX Runtime and TensorRT run for the same Q/DQ pattern: int32 accumulation, one float rescale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torch._int_mm on CUDA: M > 16, K and N multiples of 8 (aten/src/ATen/native/cuda/Blas.cpp).
INT_MM_CUDA_MIN_ROWS = 16


def is_2to4_rows(weight_nk: torch.Tensor) -> bool:
    """Every 4 consecutive entries along K (dim 1 of a [N, K] weight) hold at most 2 non-zeros."""
    n, k = weight_nk.shape
    if k % 4:
        return False
    return bool(((weight_nk.reshape(n, k // 4, 4) != 0).sum(-1) <= 2).all())


def sparse_capable(device: torch.device) -> str | None:
    """None when ``device`` has sparse tensor cores; else why not."""
    if device.type != "cuda":
        return "2:4 sparse GEMMs need CUDA (to_sparse_semi_structured is GPU-only)"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "2:4 sparse tensor cores need compute capability 8.0 (Ampere) or newer"
    return None


class DenseLinear(nn.Module):
    kind = "dense"

    def __init__(self, weight_kn: torch.Tensor, bias: torch.Tensor | None, reason: str | None = None):
        super().__init__()
        self.register_buffer("weight", weight_kn.t().contiguous())
        self.register_buffer("bias", bias)
        self.reason = reason

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Sparse24Linear(nn.Module):
    """F.linear with a semi-structured (2:4) weight: PyTorch picks cuSPARSELt, else CUTLASS."""

    kind = "sparse24"
    reason = None

    def __init__(self, weight_kn: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = to_sparse_semi_structured(weight_kn.t().contiguous())
        self.register_buffer("bias", bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Int8Linear(nn.Module):
    """y = int_mm(saturate(round(x / s_x)), W_q) · (s_x · s_w) + b — ONNX's Q → DQ → MatMul with integer math.

    ``torch._int_mm`` (documented in torch.ao / torchao's int8 paths) takes int8 [M, K] × int8 [K, N] → int32. On
    CUDA it needs M > 16 (checked per call: the batch may be dynamic); smaller calls accumulate the same
    integers in float32, exact while |acc| < 2^24. With a 2:4 weight on sm80+ the GEMM is cuSPARSELt's
    ``torch._cslt_sparse_mm`` on the compressed weight.
    """

    def __init__(self, weight_q_kn: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None, *, sparse: bool = False, reason: str | None = None):
        super().__init__()
        self.register_buffer("weight", weight_q_kn.t().contiguous())  # [N, K]: weight.t() is column-major
        self.register_buffer("input_scale", input_scale.reshape(()))
        self.register_buffer("output_scale", (input_scale.reshape(()) * weight_scale.reshape(-1)).contiguous())
        self.register_buffer("bias", bias)
        self.reason = reason
        self.compressed = torch._cslt_compress(self.weight) if sparse else None
        self.kind = "int8_sparse24" if sparse else "int8"
        n, k = self.weight.shape
        self.cuda = self.weight.device.type == "cuda"
        if self.cuda and (n % 8 or k % 8):
            self.kind, self.reason = "int8_emulated", f"K={k} or N={n} is not a multiple of 8 (torch._int_mm on CUDA)"

    def _accumulate(self, q: torch.Tensor) -> torch.Tensor:
        big = q.shape[0] > INT_MM_CUDA_MIN_ROWS
        if self.compressed is not None and big:
            return torch._cslt_sparse_mm(self.compressed, q.t(), out_dtype=torch.int32).t()
        if self.kind != "int8_emulated" and (big or not self.cuda):
            return torch._int_mm(q, self.weight.t())
        return q.float() @ self.weight.t().float()

    def forward(self, x):
        shape = x.shape
        q = torch.clamp(torch.round(x / self.input_scale), -128, 127).to(torch.int8).reshape(-1, shape[-1])
        y = self._accumulate(q).to(self.output_scale.dtype) * self.output_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], -1)


def float_linear(weight_kn: torch.Tensor, bias: torch.Tensor | None, *, sparse_weights: bool) -> nn.Module:
    """The kernel for a float weight: 2:4 sparse where asked for, possible and the weight is 2:4; else dense."""
    if not sparse_weights:
        return DenseLinear(weight_kn, bias)
    reason = sparse_capable(weight_kn.device)
    if reason is None and weight_kn.dtype not in (torch.float16, torch.bfloat16):
        reason = f"{weight_kn.dtype} weight: the sparse path runs fp16 / bf16 (compile with --precision fp16)"
    if reason is None and not is_2to4_rows(weight_kn.t()):
        reason = "the weight is not 2:4 along K"
    if reason is None:
        try:
            return Sparse24Linear(weight_kn, bias)
        except RuntimeError as exc:  # shape constraints of the semi-structured layout
            reason = str(exc).splitlines()[0]
    return DenseLinear(weight_kn, bias, reason)


def int8_linear(weight_q_kn: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None, *, sparse_weights: bool) -> Int8Linear:
    reason = None
    if sparse_weights:
        reason = sparse_capable(weight_q_kn.device)
        if reason is None and not is_2to4_rows(weight_q_kn.t()):
            reason = "the weight is not 2:4 along K"
        if reason is None:
            try:
                return Int8Linear(weight_q_kn, input_scale, weight_scale, bias, sparse=True)
            except (RuntimeError, AttributeError) as exc:  # no cuSPARSELt in this build, or a shape it refuses
                reason = str(exc).splitlines()[0]
    return Int8Linear(weight_q_kn, input_scale, weight_scale, bias, reason=reason)
