"""The quantization stage of ``compile``: scales for the twin as it is when the Q/DQ pass runs.

``make_quantizer(config)`` returns ``quantizer(twin, ctx) -> (fake-quant twin, ScaleTable, info)``:

    --scale-table FILE     validate the file against the model (VitrtError, one line) and apply it, or
    --calib-data DATA      PTQ calibration with --calib-method on up to --calib-images images, then
    --qat-epochs N         GPUSQ-ViT QAT (teacher: the float twin; W_j from the 2:4 stage's per-feature
                           losses in ``ctx.manifest['sparsity']['finetune']`` when present)

and, when the data has a labelled test split (digits), the top-1 of the float and fake-quant twins.
"""

from __future__ import annotations

import time

from ..compiler.errors import VitrtError
from .scale_table import load_scale_table

QAT_LR = 5e-5


def make_quantizer(config, progress=None):
    def log(msg):
        if progress is not None:
            progress.log(msg)

    def quantizer(twin, ctx):
        from .data import load_data
        from .evaluate import accuracy
        from .quantize import apply_scale_table, qat, quantize_twin, table_from_twin

        precision, att = config.precision, config.quantize_attention
        img = twin.spec.img
        source = config.calib_data or "synthetic"
        info: dict = {"calib_data": source if config.scale_table is None else None}
        start = time.perf_counter()
        if config.scale_table is not None:
            table = load_scale_table(config.scale_table, twin.spec, precision, quantize_attention=att)
            qtwin = apply_scale_table(twin, table, quantize_attention=att)
        else:
            data = None if precision == "int4w" else load_data(source, img, split="train", limit=config.calib_images,
                                                               seed=config.seed)
            log(f"calibrating {precision} ({config.calib_method}) on {source}")
            qtwin, table = quantize_twin(twin, precision, data, method=config.calib_method, quantize_attention=att,
                                         max_images=config.calib_images)
            if data is not None:
                table.meta["calib_data"] = source
        info["calibration_s"] = round(time.perf_counter() - start, 2)
        if config.qat_epochs:
            train = load_data(source, img, split="train", seed=config.seed)
            prior = prior_feature_losses(ctx.manifest)
            start = time.perf_counter()
            info["qat"] = qat(qtwin, twin, train, epochs=config.qat_epochs, lr=QAT_LR, seed=config.seed,
                              prior_feature_losses=prior, progress=progress)
            info["qat"]["seconds"] = round(time.perf_counter() - start, 2)
            table = table_from_twin(qtwin, precision, quantize_attention=att, source=f"{table.source}+qat",
                                    meta=table.meta)
        if source == "digits" or (config.calib_data not in (None, "synthetic")):
            test = load_data(source, img, split="test", seed=config.seed)
            if test.labels is not None:
                info["accuracy"] = {"data": f"{source}:test" if source == "digits" else f"{source} (calibration set)",
                                    "images": len(test), "top1_fp32_twin": round(accuracy(twin, test), 5),
                                    f"top1_{precision}_twin": round(accuracy(qtwin, test), 5)}
        return qtwin, table, info

    return quantizer


def prior_feature_losses(manifest: dict):
    """The 2:4 stage's per-feature losses (``manifest['sparsity']['finetune']['per_feature_losses']``), if any."""
    finetune = (manifest.get("sparsity") or {}).get("finetune") or {}
    return finetune.get("per_feature_losses")


def check_quant_options(config) -> None:
    """Option combinations the quantization stage refuses (called from CompileConfig.validate)."""
    p = config.precision
    quant = p in ("int8", "fp8", "int4w")
    if not quant and (config.qat_epochs or config.quantize_attention or config.scale_table or config.calib_data):
        raise VitrtError(f"--qat-epochs / --quantize-attention / --scale-table / --calib-data need --precision "
                         f"int8, fp8 or int4w (got {p})")
    if config.qat_epochs < 0:
        raise VitrtError(f"--qat-epochs must be >= 0, got {config.qat_epochs}")
    if config.calib_images < 1:
        raise VitrtError(f"--calib-images must be >= 1, got {config.calib_images}")
    if p == "int4w" and (config.qat_epochs or config.quantize_attention):
        raise VitrtError("int4w is weight-only: --qat-epochs and --quantize-attention apply to int8 and fp8")
    if config.scale_table is not None and config.calib_data is not None and not config.qat_epochs:
        raise VitrtError("--scale-table replaces calibration: drop --calib-data (or add --qat-epochs to fine-tune)")
