"""Options of the 2:4 structured sparsity stage (GPUSQ-ViT)."""

from __future__ import annotations

from dataclasses import dataclass

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option

PATTERNS = ("2:4",)
DEFAULT_MIN_WEIGHTS = 4096


@dataclass(frozen=True)
class SparsityConfig:
    pattern: str | None = option(None, "prune every eligible weight to this structured pattern (2:4, along the axis "
                                 "TensorRT checks)", flag="--sparsity", choices=PATTERNS)
    permute: bool = option(False, "with --sparsity: permute MLP hidden and V channels first (exact) to keep more "
                                  "weight magnitude")
    finetune_epochs: int = option(0, "with --sparsity: epochs of sparse fine-tuning (masks fixed, GPUSQ-ViT "
                                     "distillation loss against the dense model)", flag="--sparse-finetune-epochs",
                                  type=int, metavar="N")
    data: str | None = option(None, "data for sparse fine-tuning: digits, synthetic, "
                              "synth:SET (vitrt synth) or an ImageFolder PATH",
                              flag="--sparse-data", metavar="digits|synthetic|PATH")
    include: str | None = option(None, "with --sparsity: only layers matching these comma-separated name patterns "
                                       "(fnmatch, e.g. 'blocks.*.mlp.*')", flag="--sparse-include", metavar="PATTERN")
    exclude: str | None = option(None, "with --sparsity: skip layers matching these comma-separated name patterns "
                                       "(e.g. 'blocks.0.*,head')", flag="--sparse-exclude", metavar="PATTERN")
    min_weights: int = option(DEFAULT_MIN_WEIGHTS, "with --sparsity: layers with fewer weights stay dense",
                              flag="--sparse-min-weights", type=int, metavar="N")
    export: bool = option(False, "with --sparsity: write the compressed 2:4 weights (FP16 values + CUTLASS-ordered "
                                 "metadata) to OUT/sparse_weights.npz + .json", flag="--export-sparse")

    @property
    def enabled(self) -> bool:
        return self.pattern is not None

    def validate(self) -> "SparsityConfig":
        if not self.enabled:
            given = [flag for flag, on in (("--permute", self.permute),
                                           ("--sparse-finetune-epochs", self.finetune_epochs),
                                           ("--sparse-include", self.include), ("--sparse-exclude", self.exclude),
                                           ("--export-sparse", self.export)) if on]
            if given:
                raise OptionError(f"{given[0]} needs --sparsity 2:4")
            return self
        if self.finetune_epochs < 0:
            raise OptionError(f"--sparse-finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.finetune_epochs and not self.data:
            raise OptionError("--sparse-finetune-epochs needs data: pass --sparse-data digits|synthetic|PATH")
        if self.min_weights < 0:
            raise OptionError(f"--sparse-min-weights must be >= 0, got {self.min_weights}")
        return self
