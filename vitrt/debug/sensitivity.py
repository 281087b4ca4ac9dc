"""``vitrt sensitivity MODEL --precision int8|fp8|int4w``: how much each quantizable layer costs when only it is
quantized (and, with ``--float-one``, when only it stays float), ranked, as a table and a plot.

The twin is calibrated once (the quantization stage's own PTQ, :func:`~vitrt.transforms.quant.fakequant.quantize_twin`)
and scored layer by layer by :func:`~vitrt.transforms.quant.sensitivity.score_layers` on ``--data``: KL of the output
against the float twin (label-free, the ranking key), top-1 agreement with it, and top-1 with labelled data (digits).
The report directory holds ``sensitivity.json`` — what ``vitrt compile --keep-float-top K --sensitivity FILE`` reads —,
``sensitivity.md`` and ``sensitivity.png``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitrt.compiler.known_models import is_digits_model
from vitrt.debug.config import SensitivityConfig

RANKING_FORMAT = 1


def load_twin(config: SensitivityConfig, progress):
    """The canonical twin MODEL names: the digits reference, a compiled OUT's twin before quantization (its twin
    record), or a timm model."""
    from vitrt.compiler.models import canonicalize, load_timm_model

    if is_digits_model(config.model):
        from vitrt.calib.reference import load_reference

        return canonicalize(load_reference()[0])
    if Path(config.model).is_dir():
        from vitrt.debug.compare import PRECISION_STAGES
        from vitrt.pipeline.replay import load_record

        with progress.step(f"rebuilding the twin from {config.model}"):
            return load_record(Path(config.model)).twin_after(skip=PRECISION_STAGES)
    with progress.step(f"loading {config.model}"):
        return canonicalize(load_timm_model(config.model, checkpoint=config.checkpoint, img_size=config.img_size))


def scored_model(config: SensitivityConfig) -> str:
    """The model name the ranking is for (what a compile's --sensitivity checks): the name given, or the model a
    compiled OUT was compiled from (its manifest's)."""
    from vitrt.pipeline.feedback import read_manifest

    if is_digits_model(config.model) or not Path(config.model).is_dir():
        return str(config.model)
    manifest = read_manifest(Path(config.model) / "manifest.json", "pass an OUT of vitrt compile --keep-twin")
    return str(manifest.get("model", ""))


def scoring_images(source: str, img: int, count: int, seed: int, split: str = "test"
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``count`` images of ``source`` (digits: its ``split``) and their labels (None when unlabelled)."""
    from vitrt.calib.data import load_data

    data = load_data(source, img, split=split, limit=count, seed=seed)
    images, labels = zip(*data.batches(256))
    return torch.cat(images), (torch.cat(labels) if data.labelled else None)


def sensitivity(config: SensitivityConfig, progress) -> dict:
    """Calibrate, score every layer and return the report (rows ranked, most sensitive first)."""
    from vitrt.calib.data import load_data
    from vitrt.transforms.quant.fakequant import quantize_twin
    from vitrt.transforms.quant.sensitivity import score_layers

    twin = load_twin(config, progress)
    calib_source = config.calib_data or config.data
    calib = None if config.precision == "int4w" else load_data(calib_source, twin.spec.img, limit=config.calib_images,
                                                               seed=config.seed)
    with progress.step(f"calibrating {config.precision} on {calib_source}"):
        _, table = quantize_twin(twin, config.precision, calib, method=config.calib_method,
                                 quantize_attention=config.quantize_attention, max_images=config.calib_images,
                                 progress=progress)
    images, labels = scoring_images(config.data, twin.spec.img, config.images, config.seed, config.scoring_split)
    scored, summary = score_layers(twin, table, images, labels, quantize_attention=config.quantize_attention,
                                   float_one=config.float_one, progress=progress)
    rows = [dict(rank=rank, **row.to_dict()) for rank, row in enumerate(scored, 1)]
    if labels is not None:
        for row in rows:
            row["top1_drop_points"] = round((summary["top1_float"] - row["top1"]) * 100, 4)
    return {"format": RANKING_FORMAT, "model": str(config.model), "model_name": scored_model(config),
            "precision": config.precision,
            "quantize_attention": config.quantize_attention, "data": config.data,
            "split": config.scoring_split if config.data == "digits" else None, "images": len(images),
            "calibration": {"data": None if calib is None else calib_source, "method": config.calib_method,
                            "images": None if calib is None else min(len(calib), config.calib_images),
                            "source": table.source},
            "summary": {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in summary.items()},
            "layers": rows}


def ranking_table(report: dict) -> str:
    from vitrt.debug.compare import markdown_table

    labelled = report["summary"].get("top1_float") is not None
    float_one = any("kl_float_one" in row for row in report["layers"])
    head = ["rank", "layer", "KL (only it quantized)", "agreement"] + (["top-1", "drop (points)"] if labelled else [])
    head += (["KL (only it float)"] + (["top-1 (only it float)"] if labelled else [])) if float_one else []
    rows = []
    for row in report["layers"]:
        cells = [row["rank"], row["layer"], f"{row['kl']:.3g}", f"{row['agree']:.4f}"]
        if labelled:
            cells += [f"{row['top1']:.4f}", f"{row['top1_drop_points']:.2f}"]
        if float_one:
            cells += [f"{row['kl_float_one']:.3g}"] + ([f"{row['top1_float_one']:.4f}"] if labelled else [])
        rows.append(cells)
    return markdown_table(head, "rl" + "r" * (len(head) - 2), rows)


def summary_line(report: dict) -> str:
    s = report["summary"]
    accuracy = (f"; top-1 float {s['top1_float'] * 100:.2f} %, every layer quantized {s['top1_quantized'] * 100:.2f} %"
                if s.get("top1_float") is not None else "")
    return (f"{s['layers']} layers at {report['precision']} scored on {s['images']} {report['data']} images: every "
            f"layer quantized KL {s['kl_quantized']:.3g}, agreement {s['agree_quantized']:.4f}{accuracy}")


def run(config: SensitivityConfig) -> int:
    from vitrt.compiler.options import command_line
    from vitrt.compiler.output import atomic_output_dir, check_output_dir, write_json
    from vitrt.compiler.progress import progress_for
    from vitrt.debug.plots import plot_sensitivity
    from vitrt.pipeline.config import check_outside_out  # a synth:SET too

    config = config.validate()
    for flag, path in (("MODEL", config.model), ("--checkpoint", config.checkpoint), ("--data", config.data),
                       ("--calib-data", config.calib_data)):  # -o OUT --force would delete what is scored
        check_outside_out(flag, path, config.out)
    check_output_dir(config.out, config.force)
    progress = progress_for(config)
    report = {"command": command_line(), **sensitivity(config, progress)}
    table = ranking_table(report)
    with atomic_output_dir(config.out, config.force) as staging:
        write_json(staging / "sensitivity.json", report)
        plot_sensitivity(report["layers"], staging / "sensitivity.png", metric="kl",
                         title=f"{report['model']} {report['precision']}: KL of the output, only that layer quantized")
        (staging / "sensitivity.md").write_text(
            f"# vitrt sensitivity\n\n```bash\n{report['command']}\n```\n\n- {summary_line(report)}\n- use it: vitrt "
            f"compile ... --precision {report['precision']} --keep-float-top K --sensitivity "
            f"{config.out}/sensitivity.json\n\n![sensitivity](sensitivity.png)\n\n{table}\n")
    print(table)
    print()
    print(summary_line(report))
    print(f"wrote {config.out}")
    return 0
