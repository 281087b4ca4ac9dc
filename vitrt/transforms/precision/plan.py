"""The precision-typing plan: the float type of weights and activations and the ops kept in fp32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import ONNX_FLOAT_TYPES

# LayerNorm stays fp32 (its mean/variance over 192..768 channels loses accuracy in fp16, and TensorRT's
# strongly typed networks follow the graph's types). Softmax is typed: its input (QKᵀ) and its output (into ·V)
# are fp16 tensors either way, so Casts around it would change nothing numerically — ONNX Runtime's CPU provider
# and torch compute a half Softmax in fp32 inside and round once — but they would sit inside the attention
# pattern and keep TensorRT from fusing it (vitrt.compiler.trt_lint's fusion-attention-cast).
DEFAULT_KEEP_FP32 = ("LayerNormalization",)
# Logits tolerance of the typed graph against the equally typed torch twin. Both round every tensor to the type
# but accumulate in different orders and round different intermediate results.
# FP16 (unit roundoff 4.9e-4): over 12 blocks a few fp16 ulps of logits of magnitude ~10.
FP16_TOLERANCE = 5e-2
# BF16 (unit roundoff 3.9e-3, 8x fp16's): the graph runs in onnx's reference evaluator (ONNX Runtime's CPU
# provider has no bf16 arithmetic kernels), which computes every op in float32 and rounds its result to bf16;
# torch's CPU bf16 kernels do the same but fuse more (the bias into the MatMul, GELU into one op), so they round
# less often. On the digits reference (12 blocks) graph and bf16 twin differ by up to 0.10 (fp16: 0.0081, about
# the ratio of the unit roundoffs; benchmarks/results/quantization.md, "FP16 and BF16 typing"); 0.25 leaves
# margin, as Q/DQ's 0.25 does.
BF16_TOLERANCE = 0.25
TOLERANCES = {"fp16": FP16_TOLERANCE, "bf16": BF16_TOLERANCE}
DTYPES = tuple(TOLERANCES)
ONNX_TYPES = ONNX_FLOAT_TYPES
# The float-computing ops of vitrt's graphs (lowering, token merging). Each is checked against
# ONNX's schema at the graph's opset: one whose schema has no bf16 there (Conv before opset 22, TopK before 24,
# ConstantOfShape before 20) stays in fp32 behind casts; the typing pass refuses a graph with any other.
GRAPH_OPS = ("Conv", "MatMul", "Add", "Sub", "Mul", "Div", "Erf", "Sqrt", "Log", "ReduceSum", "TopK", "ArgMin",
             "Equal", "Gather", "GatherElements", "GatherND", "Pad", "ConstantOfShape", "Concat", "Reshape",
             "Transpose", "Slice", "Expand", "Softmax", "LayerNormalization")


def ops_without_type(dtype: str, opset: int, ops=GRAPH_OPS) -> tuple[str, ...]:
    """The ``ops`` whose ONNX schema at ``opset`` does not accept ``dtype`` (fp16 | bf16), in order."""
    import onnx

    missing = []
    for op in ops:
        schema = onnx.defs.get_schema(op, opset)
        if not any(ONNX_TYPES[dtype] in constraint.allowed_type_strs for constraint in schema.type_constraints):
            missing.append(op)
    return tuple(missing)


def plan_for(dtype: str, opset: int) -> "PrecisionPlan":
    """The plan for typing a graph of ``opset`` to ``dtype``: LayerNorm in fp32, and every op whose
    schema at that opset lacks the type."""
    return PrecisionPlan(dtype, DEFAULT_KEEP_FP32 + tuple(op for op in ops_without_type(dtype, opset)
                                                            if op not in DEFAULT_KEEP_FP32))


@dataclass(frozen=True)
class PrecisionPlan:
    dtype: str = "fp16"
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise VitrtError(f"precision typing to '{self.dtype}' is not supported; choose one of {', '.join(DTYPES)}")

    @property
    def tolerance(self) -> float:
        return TOLERANCES[self.dtype]

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "keep_fp32": list(self.keep_fp32)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrecisionPlan":
        return cls(data.get("dtype", "fp16"), tuple(data.get("keep_fp32", DEFAULT_KEEP_FP32)))

    def report(self) -> dict:
        """The manifest's ``precision`` section (``float_weights``: the float initializers; quantized weights keep
        their Q/DQ type)."""
        return {"activations": self.dtype, "float_weights": self.dtype, "kept_fp32": list(self.keep_fp32),
                "graph_io": "fp32"}
