"""The precision-typing plan: the float type of weights and activations and the ops kept in fp32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vitrt.compiler.errors import VitrtError

DEFAULT_KEEP_FP32 = ("LayerNormalization", "Softmax")
# Logits tolerance of the FP16 graph (ONNX Runtime) against the FP16 torch twin: both round every tensor to
# fp16 (unit roundoff 4.9e-4) but accumulate in different orders; over 12 blocks that is a few fp16 ulps of
# logits of magnitude ~10.
FP16_TOLERANCE = 5e-2
DTYPES = ("fp16",)


@dataclass(frozen=True)
class PrecisionPlan:
    dtype: str = "fp16"
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise VitrtError(f"precision typing to '{self.dtype}' is not supported; choose one of {', '.join(DTYPES)}")

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "keep_fp32": list(self.keep_fp32)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrecisionPlan":
        return cls(data.get("dtype", "fp16"), tuple(data.get("keep_fp32", DEFAULT_KEEP_FP32)))

    def report(self) -> dict:
        return {"activations": self.dtype, "weights": self.dtype, "kept_fp32": list(self.keep_fp32),
                "graph_io": "fp32"}
