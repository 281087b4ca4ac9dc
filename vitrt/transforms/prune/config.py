"""Options of the structural pruning stage: NViT (``--prune``, ``--prune-plan``, ``--revit``) and DC-ViT's dense
few-shot block compression (``--dcvit-macs`` and the ``--dcvit-*`` / ``--few-shot`` knobs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option
from vitrt.transforms.prune.dcvit_structure import FINETUNE_LR, check_finetune


@dataclass(frozen=True)
class PruneConfig:
    fraction: float | None = option(None, "prune to this fraction of the dense model's LUT-predicted latency "
                                    "(e.g. 0.5)", flag="--prune", type=float, metavar="FRACTION")
    plan: Path | None = option(None, "apply this pruning plan JSON (from vitrt prune-plan, or OUT/pruning_plan.json "
                               "with its fine-tuned weights) instead of searching", flag="--prune-plan", type=Path,
                               metavar="PLAN")
    revit: bool = option(False, "set per-block dims by NViT's ReViT rule (Table 6); importance picks the indices")
    data: str = option("synthetic", "data for importance and fine-tuning: digits, synthetic, "
                       "synth:SET (vitrt synth) or an ImageFolder PATH",
                       metavar="digits|PATH|synthetic")
    importance: str = option("hessian", "pruning importance: hessian (NViT eq. 6) or magnitude (baseline)",
                             choices=("hessian", "magnitude"))
    eta: float = option(0.05, "weight of the latency saving against importance in the search (NViT eq. 7)",
                        type=float, metavar="X")
    samples: int = option(64, "images used to score importance (per re-scoring)", flag="--prune-samples", type=int,
                          metavar="N")
    finetune_epochs: int = option(0, "fine-tune the pruned twin from the dense model for N epochs", type=int,
                                  metavar="N")
    dcvit_macs: float | None = option(None, "DC-ViT: compress to this fraction of the dense model's MACs by removing "
                                      "attention modules and shrinking their blocks' MLPs (e.g. 0.7)", type=float,
                                      metavar="F")
    few_shot: int | None = option(None, "DC-ViT: unlabelled images of --data used for importance and "
                                  "feature-mimicking fine-tuning (default 100)", type=int, metavar="N")
    dcvit_metric: str | None = option(None, "DC-ViT: metric set scoring each block's recoverability, e.g. synth:SET "
                                      "from vitrt synth, or a labelled source (its first 256 images; default: 50 images "
                                      "synthesised during the compile)",
                                      metavar="DATA")
    dcvit_mlp: float | None = option(None, "DC-ViT: preferred fraction of the MLP a compressed block keeps "
                                     "(default 0.5); the exact fraction is solved to land on --dcvit-macs; 0: "
                                     "the official code's rule, the fewest compressed blocks",
                                     type=float, metavar="R")
    dcvit_epochs: int | None = option(None, "DC-ViT: fine-tuning epochs after each compressed block (default 50)",
                                      type=int, metavar="N")
    dcvit_score_epochs: int | None = option(None, "DC-ViT: fine-tuning epochs before a candidate block's "
                                            "recoverability is measured (default 10; 0 = right after removal)",
                                            type=int, metavar="N")
    dcvit_lr: float | None = option(None, f"DC-ViT: peak learning rate of that fine-tuning (default {FINETUNE_LR:g}, "
                                    "the best after 50 epochs on the digits reference; the official code uses 3e-5, "
                                    "which spares a --dcvit-refit start in short budgets: "
                                    "benchmarks/results/dcvit.md)", type=float, metavar="LR")
    dcvit_whole_blocks: bool = option(False, "DC-ViT baseline: remove whole blocks (attention and MLP) instead")
    dcvit_mlp_only: bool = option(False, "DC-ViT ablation: remove whole MLPs and keep every attention module, with "
                                  "the same ranking and fine-tuning (on the digits reference the better choice at "
                                  "the same MACs: benchmarks/results/dcvit.md)")
    dcvit_refit: bool = option(False, "DC-ViT: re-solve each compressed block's kept MLP output layer by least "
                               "squares on the few-shot images so it stands in for the whole block, attention "
                               "included; with --dcvit-epochs 0 a training-free compression")

    @property
    def enabled(self) -> bool:
        return self.fraction is not None or self.plan is not None or self.revit or self.dcvit_macs is not None

    @property
    def dcvit_options(self) -> dict:
        """The DC-ViT knobs that were given (None = default)."""
        names = ("few_shot", "dcvit_metric", "dcvit_mlp", "dcvit_epochs", "dcvit_score_epochs", "dcvit_lr")
        given = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        flags = {name: True for name in ("dcvit_whole_blocks", "dcvit_mlp_only", "dcvit_refit") if getattr(self, name)}
        return given | flags

    def validate(self) -> "PruneConfig":
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise OptionError(f"--prune {self.fraction} must be a latency fraction in (0, 1], e.g. 0.5")
        if sum([self.fraction is not None, self.plan is not None, self.revit, self.dcvit_macs is not None]) > 1:
            raise OptionError("--prune, --prune-plan, --revit and --dcvit-macs are alternatives: pass one of them")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise OptionError(f"--eta must be a finite number >= 0, got {self.eta}")
        if self.finetune_epochs < 0:
            raise OptionError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.samples < 1:
            raise OptionError(f"--prune-samples must be >= 1, got {self.samples}")
        if self.finetune_epochs and not self.enabled:
            raise OptionError("--finetune-epochs fine-tunes a pruned model: add --prune, --prune-plan or --revit")
        return self.validate_dcvit()

    def validate_dcvit(self) -> "PruneConfig":
        given = self.dcvit_options
        if self.dcvit_macs is None:
            if given:
                flag = "--" + next(iter(given)).replace("_", "-")
                raise OptionError(f"{flag} is a DC-ViT option: add --dcvit-macs F")
            return self
        if not 0 < self.dcvit_macs < 1:
            raise OptionError(f"--dcvit-macs {self.dcvit_macs} must be a fraction of the MACs in (0, 1), e.g. 0.7")
        if self.data == "synthetic":
            raise OptionError("DC-ViT fine-tunes on a few real (unlabelled) images or on a synthetic metric set, not on "
                              "noise: pass --data PATH, --data digits or --data synth:SET")
        if self.dcvit_metric == "synthetic":
            raise OptionError("--dcvit-metric synthetic would rank blocks on noise: pass synth:SET (vitrt synth), "
                              "real images, or leave it out to grow a metric set during the compile")
        if self.finetune_epochs:
            raise OptionError("--finetune-epochs is NViT's fine-tuning; DC-ViT fine-tunes each block (--dcvit-epochs)")
        if self.few_shot is not None and self.few_shot < 1:
            raise OptionError(f"--few-shot {self.few_shot} must be >= 1 (images of --data)")
        for flag, epochs in (("--dcvit-epochs", self.dcvit_epochs), ("--dcvit-score-epochs", self.dcvit_score_epochs)):
            if epochs is not None and epochs < 0:
                raise OptionError(f"{flag} {epochs} must be >= 0 (0: no fine-tuning)")
        if self.dcvit_lr is not None:
            check_finetune(self.dcvit_lr, "block")  # the compile always mimics the block feature
            if self.dcvit_epochs == 0:
                raise OptionError("--dcvit-lr sets the fine-tuning's rate and --dcvit-epochs 0 fine-tunes nothing: "
                                  "drop one of them")
        if self.dcvit_mlp is not None and not 0 <= self.dcvit_mlp <= 1:
            raise OptionError(f"--dcvit-mlp {self.dcvit_mlp} must be a fraction in [0, 1]")
        if self.dcvit_whole_blocks and self.dcvit_mlp is not None:
            raise OptionError("--dcvit-whole-blocks removes the MLP too: drop --dcvit-mlp")
        if self.dcvit_whole_blocks and self.dcvit_refit:
            raise OptionError("--dcvit-whole-blocks keeps no MLP to refit: drop --dcvit-refit")
        if self.dcvit_mlp_only and self.dcvit_whole_blocks:
            raise OptionError("--dcvit-mlp-only and --dcvit-whole-blocks are alternatives: pass one of them")
        if self.dcvit_mlp_only and (self.dcvit_mlp is not None or self.dcvit_refit):
            raise OptionError("--dcvit-mlp-only removes whole MLPs: drop --dcvit-mlp and --dcvit-refit")
        return self

    def check(self, spec, target):
        """A given plan is read and matched against the model before any work; its pruned spec is then known
        (None otherwise: the search decides the dims). A DC-ViT target the model cannot reach, or a model DC-ViT
        cannot compress, is refused here, from the spec alone."""
        from vitrt.transforms.prune.plan import PruningPlan

        if self.dcvit_macs is not None and spec is not None:
            from vitrt.transforms.prune.dcvit_structure import settings_from, structure

            structure(spec, settings_from(self, seed=0))
            return None
        if self.plan is None or spec is None:
            return None
        plan = PruningPlan.load(self.plan)
        plan.check_matches(spec)
        return plan.pruned_spec(spec)
