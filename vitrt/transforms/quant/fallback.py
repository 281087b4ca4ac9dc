"""Per-layer fallback: which quantizable layers stay float, and why (the manifest's ``quantization.float_layers``).

    --quant-exclude PATTERNS   fnmatch patterns over canonical layer names; a pattern matching nothing is refused
    --keep-float-top K         the K layers most sensitive to quantization: ranked by a ``vitrt sensitivity`` result
                               (``--sensitivity FILE``) or scored here on the calibration data (KL of the output when
                               only that layer is quantized, :mod:`vitrt.transforms.quant.sensitivity`)
"""

from __future__ import annotations

import fnmatch

import torch

from vitrt.calib.data import take_images
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.jsonfile import read_json
from vitrt.transforms.base import PlanContext
from vitrt.transforms.quant.config import QuantConfig
from vitrt.transforms.quant.scale_table import ScaleTable, quantizable_layers
from vitrt.transforms.quant.sensitivity import score_layers, table_layers


def float_layers_for(twin, table: ScaleTable, ctx: PlanContext, options: QuantConfig) -> dict[str, str]:
    """Layer -> why it stays float, for the calibrated full ``table`` of ``twin``."""
    layers = excluded_layers(options, twin.spec, table.precision)
    if options.keep_float_top:
        layers.update(most_sensitive(twin, table, ctx, options, skip=layers))
    return layers


def excluded_layers(options: QuantConfig, spec, precision: str) -> dict[str, str]:
    """Layers matched by ``--quant-exclude`` -> why; a pattern that matches no quantizable layer is refused."""
    layers = quantizable_layers(spec, precision, quantize_attention=options.quantize_attention)
    out: dict[str, str] = {}
    for pattern in [p.strip() for p in (options.exclude or "").split(",") if p.strip()]:
        matched = [layer for layer in layers if fnmatch.fnmatchcase(layer, pattern)]
        if not matched:
            raise VitrtError(f"--quant-exclude '{pattern}' matches no quantized layer (they are named like "
                             f"{', '.join(layers[:3])}, ..., {layers[-1]})")
        out.update({layer: f"--quant-exclude {pattern}" for layer in matched if layer not in out})
    return out


def most_sensitive(twin, table, ctx: PlanContext, options: QuantConfig, skip) -> dict[str, str]:
    """The ``--keep-float-top`` K most sensitive layers not in ``skip`` -> why: from the ``--sensitivity`` ranking,
    else scored on the calibration data (KL of the output with only that layer quantized)."""
    candidates = [layer for layer in table_layers(table) if layer not in skip]
    if options.sensitivity is not None:
        ranking = read_ranking(options.sensitivity, table.precision, candidates + list(skip))
        ranked = [layer for layer in ranking if layer in candidates]
        return {layer: f"sensitivity rank {ranking.index(layer) + 1} in {options.sensitivity.name}"
                for layer in ranked[:options.keep_float_top]}
    source = options.calib_data or "synthetic"
    images = torch.cat(list(take_images(ctx.data(source, limit=options.calib_images), options.calib_images)))
    with ctx.progress.step(f"scoring {len(candidates)} layers' sensitivity on {len(images)} {source} images"):
        scored, _ = score_layers(twin, table.without(skip), images, quantize_attention=options.quantize_attention,
                                 progress=ctx.progress)
    return {row.layer: f"sensitivity rank {rank} of {len(scored)}: KL {row.kl:.3g} when quantized alone "
                       f"({len(images)} {source} images)" for rank, row in enumerate(scored[:options.keep_float_top], 1)}


def read_ranking(path, precision: str, layers: list[str]) -> list[str]:
    """The layer order of a ``vitrt sensitivity`` result (checked: its precision, and layers this model has)."""
    data = read_json(path, "sensitivity ranking", "write one with vitrt sensitivity MODEL -o DIR (DIR/sensitivity.json)")
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise VitrtError(f"sensitivity ranking '{path}': expected the JSON vitrt sensitivity writes (a 'layers' list)")
    if data.get("precision") != precision:
        raise VitrtError(f"sensitivity ranking '{path}' was scored at {data.get('precision')}, the compile is {precision}")
    ranking = [row.get("layer") if isinstance(row, dict) else None for row in data["layers"]]
    unknown = [layer for layer in ranking if layer not in layers]
    if unknown:
        raise VitrtError(f"sensitivity ranking '{path}' names '{unknown[0]}', which this model does not quantize")
    return ranking
