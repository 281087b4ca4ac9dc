"""The quantization planner: ranges for the twin the stage meets (pruned, merged, 2:4-masked).

    --scale-table FILE     validate the file against the model (one line on error) and apply it, or
    --calib-data DATA      PTQ calibration with --calib-method on up to --calib-images images, then
    --quant-exclude / --keep-float-top   layers left float (vitrt.transforms.quant.fallback), then
    --qat-epochs N         GPUSQ-ViT QAT (teacher: the float twin; 2:4 masks and W_j from the sparsity plan)

and, when the data has a labelled test split (digits), the top-1 of the float and fake-quant twins.
"""

from __future__ import annotations

import time

from vitrt.calib.evaluate import accuracy
from vitrt.compiler.weights import parameter_state
from vitrt.transforms.base import PlanContext
from vitrt.transforms.quant.config import QuantConfig
from vitrt.transforms.quant.fakequant import apply_scale_table, quantize_twin, table_from_twin
from vitrt.transforms.quant.fallback import float_layers_for
from vitrt.transforms.quant.plan import QuantPlan
from vitrt.transforms.quant.qat import qat
from vitrt.transforms.quant.scale_table import excluded_layers, load_scale_table


def plan(twin, ctx: PlanContext, options: QuantConfig) -> QuantPlan:
    precision, att = ctx.target.precision, options.quantize_attention
    source = options.calib_data or "synthetic"
    info: dict = {"calib_data": source if options.scale_table is None and precision != "int4w" else None}
    start = time.perf_counter()
    if options.scale_table is not None:
        table = load_scale_table(options.scale_table, twin.spec, precision, quantize_attention=att,
                                 exclude=excluded_layers(options.exclude, twin.spec, precision, att))
        qtwin = apply_scale_table(twin, table, quantize_attention=att)
    else:
        data = None if precision == "int4w" else ctx.data(source, limit=options.calib_images)
        with ctx.progress.step(f"calibrating {precision} ({options.calib_method}) on {source}"):
            qtwin, table = quantize_twin(twin, precision, data, method=options.calib_method, quantize_attention=att,
                                         max_images=options.calib_images, progress=ctx.progress)
        if data is not None:
            table.meta["calib_data"] = source
            # a set smaller than --calib-images calibrates on what it holds: the plan's notes say so
            info["calib_images"] = {"asked": options.calib_images, "used": table.meta["calib_images"]}
    float_layers = float_layers_for(twin, table, ctx, options)  # --quant-exclude, --keep-float-top
    if float_layers:
        table = table.without(float_layers)
        qtwin = apply_scale_table(twin, table, quantize_attention=att)
    info["calibration_s"] = round(time.perf_counter() - start, 2)
    weights = None
    if options.qat_epochs:
        sparsity = ctx.plans.get("sparsity")
        masks = sparsity.torch_masks() if sparsity is not None else None
        prior = (sparsity.finetune or {}).get("per_feature_losses") if sparsity is not None else None
        info["qat"] = qat(qtwin, twin, ctx.data(source, labelled=True), epochs=options.qat_epochs, seed=ctx.seed,
                          masks=masks, prior_feature_losses=prior, progress=ctx.progress)
        table = table_from_twin(qtwin, precision, quantize_attention=att, source=f"{table.source}+qat",
                                meta=table.meta, exclude=float_layers)
        weights = parameter_state(qtwin)
    # the twins' top-1 on the digits test split; an ImageFolder (--calib-data imagenet/train) is streamed, may be
    # large and need not hold the model's classes: its real accuracy is --eval-data's, on the compiled artifact
    test = ctx.data(source, split="test", labelled=True) if source == "digits" else None
    if test is not None:
        info["accuracy"] = {"data": f"{source}:test",
                            "images": len(test), "top1_fp32_twin": round(accuracy(twin, test), 5),
                            f"top1_{precision}_twin": round(accuracy(qtwin, test), 5)}
    return QuantPlan(precision, table, att, weights, info, float_layers)
