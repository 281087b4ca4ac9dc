"""Options of the distillation stage: ``--distill-epochs N`` and its data."""

from __future__ import annotations

from dataclasses import dataclass

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = option(0, "fine-tune the compressed twin (after pruning and token merging) from the dense model "
                         "for N epochs: hard labels + soft logits (knowledge distillation)", flag="--distill-epochs",
                         type=int, metavar="N")
    data: str = option("synthetic", "data for --distill-epochs: digits, synthetic, "
                       "synth:SET (vitrt synth) or an ImageFolder PATH",
                       flag="--distill-data", metavar="digits|PATH|synthetic")

    @property
    def enabled(self) -> bool:
        return self.epochs > 0

    def validate(self) -> "DistillConfig":
        if self.epochs < 0:
            raise OptionError(f"--distill-epochs must be >= 0, got {self.epochs}")
        return self
