"""The distillation plan: the fine-tuned twin parameters (canonical names, numpy arrays) and how they were made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from vitrt.compiler.errors import VitrtError

PLAN_FORMAT = 1


@dataclass(frozen=True, eq=False)  # holds arrays: identity, not value, equality
class DistillPlan:
    weights: Mapping[str, np.ndarray] = field(repr=False)
    record: Mapping[str, Any] = field(default_factory=dict)  # epochs, losses, data, loss weights

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "record": dict(self.record)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"weight/{k}": np.asarray(v) for k, v in self.weights.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "DistillPlan":
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise VitrtError(f"distillation plan format {data.get('format') if isinstance(data, Mapping) else None!r} "
                             f"is not supported (expected {PLAN_FORMAT})")
        weights = {k[len("weight/"):]: np.asarray(v, np.float32) for k, v in arrays.items() if k.startswith("weight/")}
        if not weights:
            raise VitrtError("distillation plan has no weights")
        return cls(weights, dict(data.get("record") or {}))
