"""Per-layer fallback: which quantizable layers stay float, and why (the manifest's ``quantization.float_layers``).

    --quant-exclude PATTERNS   fnmatch patterns over canonical layer names; a pattern matching nothing is refused
    --keep-float-top K         the K layers most sensitive to quantization: ranked by a ``vitrt sensitivity`` result
                               (``--sensitivity FILE``) or scored here on the calibration data (KL of the output when
                               only that layer is quantized, :mod:`vitrt.transforms.quant.sensitivity`)
"""

from __future__ import annotations

import torch

from vitrt.calib.data import take_images
from vitrt.compiler.errors import VitrtError
from vitrt.transforms.base import PlanContext
from vitrt.transforms.quant.scale_table import ScaleTable, excluded_layers, read_ranking
from vitrt.transforms.quant.sensitivity import score_layers, table_layers


def float_layers_for(twin, table: ScaleTable, ctx: PlanContext, options) -> dict[str, str]:
    """Layer -> why it stays float, for the calibrated full ``table`` of ``twin``."""
    layers = excluded_layers(options.exclude, twin.spec, table.precision, options.quantize_attention)
    if options.keep_float_top:
        layers.update(most_sensitive(twin, table, ctx, options, skip=layers))
    return layers


def most_sensitive(twin, table, ctx: PlanContext, options, skip) -> dict[str, str]:
    """The ``--keep-float-top`` K most sensitive layers not in ``skip`` -> why: from the ``--sensitivity`` ranking,
    else scored on the calibration data (KL of the output with only that layer quantized)."""
    candidates = [layer for layer in table_layers(table) if layer not in skip]
    if options.keep_float_top >= len(candidates):
        raise VitrtError(f"--keep-float-top {options.keep_float_top} keeps every one of the {len(candidates)} "
                         f"quantizable layers float: nothing would be {table.precision}; pass fewer (or compile fp32)")
    if options.sensitivity is not None:
        ranking = read_ranking(options.sensitivity, table.precision, candidates + list(skip), model=ctx.model)
        ranked = list(dict.fromkeys(layer for layer in ranking if layer in candidates))
        if len(ranked) < options.keep_float_top:
            raise VitrtError(f"--keep-float-top {options.keep_float_top}: {options.sensitivity.name} ranks only "
                             f"{len(ranked)} of the {len(candidates)} layers it could keep float; score this model "
                             "again (vitrt sensitivity) or pass a smaller K")
        return {layer: f"sensitivity rank {ranking.index(layer) + 1} in {options.sensitivity.name}"
                for layer in ranked[:options.keep_float_top]}
    source = options.calib_data or "synthetic"
    images = torch.cat(list(take_images(ctx.data(source, limit=options.calib_images), options.calib_images)))
    with ctx.progress.step(f"scoring {len(candidates)} layers' sensitivity on {len(images)} {source} images"):
        scored, _ = score_layers(twin, table.without(skip), images, quantize_attention=options.quantize_attention,
                                 progress=ctx.progress)
    return {row.layer: f"sensitivity rank {rank} of {len(scored)}: KL {row.kl:.3g} when quantized alone "
                       f"({len(images)} {source} images)" for rank, row in enumerate(scored[:options.keep_float_top], 1)}
