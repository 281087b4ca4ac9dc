"""Options of the low-rank stage: ``--lowrank ENERGY`` or ``--lowrank-budget F`` (or ``--lowrank-plan``) and knobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option

ALIGNMENTS = (8, 16)
DEFAULT_LAYERS = "blocks.*"


@dataclass(frozen=True)
class LowRankConfig:
    energy: float | None = option(None, "factor linear layers by truncated SVD, keeping per layer the smallest rank "
                                  "that holds this fraction of the squared singular values (e.g. 0.95)",
                                  flag="--lowrank", type=float, metavar="ENERGY")
    budget: float | None = option(None, "factor linear layers to this fraction of their parameters (one energy "
                                  "threshold for all, found by bisection)", flag="--lowrank-budget", type=float,
                                  metavar="F")
    plan: Path | None = option(None, "apply this low-rank plan JSON (OUT/lowrank_plan.json, factors beside it)",
                               flag="--lowrank-plan", type=Path, metavar="PLAN")
    layers: str = option(DEFAULT_LAYERS, "comma-separated name patterns (fnmatch) of the linear layers that may be "
                         "factored, e.g. 'blocks.*.mlp.*'", flag="--lowrank-layers", metavar="PATTERN")
    align: int = option(16, "ranks are multiples of this (8 or 16)", flag="--lowrank-align", type=int,
                        choices=ALIGNMENTS)
    finetune_epochs: int = option(0, "fine-tune the factored twin from the dense model for N epochs",
                                  flag="--lowrank-finetune-epochs", type=int, metavar="N")
    data: str = option("synthetic", "data for low-rank fine-tuning: digits, synthetic, "
                       "synth:SET (vitrt synth) or an ImageFolder PATH",
                       flag="--lowrank-data", metavar="digits|PATH|synthetic")

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.energy, self.budget, self.plan))

    def validate(self) -> "LowRankConfig":
        given = [v for v in (self.energy, self.budget, self.plan) if v is not None]
        if len(given) > 1:
            raise OptionError("--lowrank, --lowrank-budget and --lowrank-plan are alternatives: pass one of them")
        for flag, value in (("--lowrank", self.energy), ("--lowrank-budget", self.budget)):
            if value is not None and not 0.0 < value <= 1.0:
                raise OptionError(f"{flag} {value} must be a fraction in (0, 1], e.g. 0.95")
        if self.finetune_epochs < 0:
            raise OptionError(f"--lowrank-finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.finetune_epochs and not self.enabled:
            raise OptionError("--lowrank-finetune-epochs fine-tunes a factored model: add --lowrank or "
                              "--lowrank-budget")
        return self
