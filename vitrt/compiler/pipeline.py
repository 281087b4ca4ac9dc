"""The pass schedule a CompileConfig asks for, in the order the compression stack needs.

    structural pruning (changes dims) → token merging (changes token counts) → 2:4 sparsity (masks weights)
    → quantization (Q/DQ around the final weights) → precision typing → cleanup

Each stage contributes its passes through one function below; data-driven stages (importance, calibration,
fine-tuning) work on the torch twin here, before the graph passes run, and return passes that carry the
plain-data result (plan, schedule, masks, scale table). Passes are imported lazily.
"""

from __future__ import annotations

from .config import CompileConfig
from .pass_manager import Pass


def pruning_passes(config: CompileConfig, twin, progress) -> list[Pass]:
    from vitrt.calib.pruning import pruning_stage

    return pruning_stage(config, twin, progress)


def token_merge_passes(config: CompileConfig, twin, progress) -> list[Pass]:
    return []


def sparsity_passes(config: CompileConfig, twin, progress) -> list[Pass]:
    return []


def quantization_passes(config: CompileConfig, twin, progress) -> list[Pass]:
    return []


def build_pipeline(config: CompileConfig, twin, progress) -> list[Pass]:
    from vitrt.passes.cleanup import CleanupPass

    passes: list[Pass] = []
    for stage in (pruning_passes, token_merge_passes, sparsity_passes, quantization_passes):
        passes += stage(config, twin, progress)
    passes.append(CleanupPass())
    return passes
