"""Options of the structural pruning stage (NViT): ``--prune``, ``--prune-plan``, ``--revit`` and their knobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option


@dataclass(frozen=True)
class PruneConfig:
    fraction: float | None = option(None, "prune to this fraction of the dense model's LUT-predicted latency "
                                    "(e.g. 0.5)", flag="--prune", type=float, metavar="FRACTION")
    plan: Path | None = option(None, "apply this pruning plan JSON (from vitrt prune-plan, or OUT/pruning_plan.json "
                               "with its fine-tuned weights) instead of searching", flag="--prune-plan", type=Path,
                               metavar="PLAN")
    revit: bool = option(False, "set per-block dims by NViT's ReViT rule (Table 6); importance picks the indices")
    data: str = option("synthetic", "data for importance and fine-tuning: digits, synthetic or an ImageFolder PATH",
                       metavar="digits|PATH|synthetic")
    importance: str = option("hessian", "pruning importance: hessian (NViT eq. 6) or magnitude (baseline)",
                             choices=("hessian", "magnitude"))
    eta: float = option(0.05, "weight of the latency saving against importance in the search (NViT eq. 7)",
                        type=float, metavar="X")
    samples: int = option(64, "images used to score importance (per re-scoring)", flag="--prune-samples", type=int,
                          metavar="N")
    finetune_epochs: int = option(0, "fine-tune the pruned twin from the dense model for N epochs", type=int,
                                  metavar="N")

    @property
    def enabled(self) -> bool:
        return self.fraction is not None or self.plan is not None or self.revit

    def validate(self) -> "PruneConfig":
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise OptionError(f"--prune {self.fraction} must be a latency fraction in (0, 1], e.g. 0.5")
        if sum([self.fraction is not None, self.plan is not None, self.revit]) > 1:
            raise OptionError("--prune, --prune-plan and --revit are alternatives: pass one of them")
        if self.finetune_epochs < 0 or self.samples < 1 or self.eta < 0:
            raise OptionError("--finetune-epochs and --eta must be >= 0 and --prune-samples >= 1")
        if self.finetune_epochs and not self.enabled:
            raise OptionError("--finetune-epochs fine-tunes a pruned model: add --prune, --prune-plan or --revit")
        return self

    def check(self, spec, target):
        """A given plan is read and matched against the model before any work; its pruned spec is then known
        (None otherwise: the search decides the dims)."""
        from vitrt.transforms.prune.plan import PruningPlan

        if self.plan is None or spec is None:
            return None
        plan = PruningPlan.load(self.plan)
        plan.check_matches(spec)
        return plan.pruned_spec(spec)
