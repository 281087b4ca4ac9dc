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
    """Issue 5: one TokenMergePass carrying the requested schedule (resolved against the spec it meets)."""
    from vitrt.passes.token_merge import request_from_config

    request = request_from_config(config)
    if request is None:
        return []
    from vitrt.passes.token_merge import TokenMergePass

    return [TokenMergePass(request)]


def sparsity_passes(config: CompileConfig, twin, progress) -> list[Pass]:
    if config.sparsity is None:
        return []
    from vitrt.calib.sparsify import prepare_sparsity
    from vitrt.passes.sparsity import SparsityPass

    data = None
    if config.sparse_finetune_epochs:
        from vitrt.calib.data import load_data

        data = load_data(config.sparse_data, twin.spec.img, split="train", seed=config.seed)
    with progress.step(f"2:4 sparsity: masks{', permutation' if config.permute else ''}"
                       f"{f', {config.sparse_finetune_epochs} epoch(s) of sparse fine-tuning' if data else ''}"):
        result = prepare_sparsity(twin, pattern=config.sparsity, include=config.sparse_include,
                                  exclude=config.sparse_exclude, min_weights=config.sparse_min_weights,
                                  permute=config.permute, finetune_epochs=config.sparse_finetune_epochs, data=data,
                                  export=config.export_sparse, seed=config.seed, progress=progress)
    return [SparsityPass(result)]


def quantization_passes(config: CompileConfig, twin, progress) -> list[Pass]:
    """fp16: precision typing; int8 / fp8 / int4w: Q/DQ from a scale table that calibration (and QAT) compute
    on the twin when the pass runs, i.e. after pruning, merging and 2:4 masking."""
    if config.precision == "fp16":
        from vitrt.passes.precision import Fp16Pass

        return [Fp16Pass()]
    if config.precision in ("int8", "fp8", "int4w"):
        from vitrt.calib.quant_stage import make_quantizer
        from vitrt.passes.qdq import QDQPass

        return [QDQPass(config.precision, make_quantizer(config, progress),
                        quantize_attention=config.quantize_attention)]
    return []


def cleanup_passes(config: CompileConfig, twin, progress) -> list[Pass]:
    from vitrt.passes.cleanup import CleanupPass

    return [CleanupPass()]


STAGES = (pruning_passes, token_merge_passes, sparsity_passes, quantization_passes, cleanup_passes)


def run_pipeline(config: CompileConfig, view, ctx, instruments, progress):
    """Run the stages in order, each planned on the twin as the previous stages left it.

    A stage's data-driven work (importance, fine-tuning, calibration) must see the model after the earlier
    stages' passes — the pruned twin, not the dense one — so each stage is planned only once the passes
    before it have run on both the graph and the twin. Returns (view, pass records).
    """
    from .pass_manager import LOWERED_PROPERTIES, PassManager

    records, properties = [], LOWERED_PROPERTIES
    for stage in STAGES:
        passes = stage(config, ctx.twin, progress)
        if not passes:
            continue
        manager = PassManager(passes, instruments, initial_properties=properties)
        view, stage_records = manager.run(view, ctx, progress=lambda name: progress.log(f"pass {name}"))
        records += stage_records
        properties = manager.final_properties
    return view, records
