"""The STAGES table: every transform a compile can run, in the order the compression stack needs.

    structural pruning (changes dims) → token merging (changes token counts) → distillation (fine-tunes the
    pruned, merged twin from the dense one) → low rank (factors linears) → 2:4 sparsity (masks weights)
    → quantization (Q/DQ around the final weights) → precision typing → cleanup

Low rank sits after pruning (which slices and fine-tunes the dense layers it then factors) and token merging
(which reads the keys at the canonical ``attn.k`` and commutes with a factorisation), and before the stages that
would have to mask, quantize or type the factors; those are refused in the same compile for now.

Each stage plans on the twin the stages before it left (the pruned twin is merged, the merged one masked, the
masked one calibrated). Adding a transform is one sub-package of :mod:`vitrt.transforms` and one row here;
ordering constraints between passes are declared on the passes (``run_after``) and checked by the pass
manager over the whole schedule.
"""

from __future__ import annotations

from vitrt.compiler.cleanup import CleanupPass
from vitrt.transforms.base import Transform
from vitrt.transforms.distill.stage import TRANSFORM as DISTILL
from vitrt.transforms.lowrank.stage import TRANSFORM as LOWRANK
from vitrt.transforms.precision.stage import TRANSFORM as PRECISION
from vitrt.transforms.prune.stage import TRANSFORM as PRUNE
from vitrt.transforms.quant.stage import TRANSFORM as QUANT
from vitrt.transforms.sparsity.stage import TRANSFORM as SPARSITY
from vitrt.transforms.tome.stage import TRANSFORM as TOME

STAGES: tuple[Transform, ...] = (PRUNE, TOME, DISTILL, LOWRANK, SPARSITY, QUANT, PRECISION)
FINAL_PASSES = (CleanupPass,)  # function-preserving passes after every stage


def stage_options(config, stage: Transform):
    """The stage's section of a CompileConfig (None for stages driven by the target alone)."""
    return getattr(config, stage.section) if stage.section else None


def active_stages(config) -> list[Transform]:
    """The stages ``config`` asks for, in STAGES order."""
    return [s for s in STAGES if s.enabled(stage_options(config, s), config.target)]
