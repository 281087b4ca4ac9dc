"""``vitrt debug-digits``: the accuracy-debugging figures on the digits reference and its 450 real test images.

1. **compare**: an int8 compile (PTQ, 512 digits images, max) with its twin record; ``vitrt compare`` against the
   twin the compile verified against, and against the float twin (the quantization error, block by block): tables
   and error-growth plots into ``RESULTS/debug_compare_int8_{twin,float}/``.
2. **fallback**: a deliberately aggressive setting — int8 with ``--quantize-attention`` calibrated on 2 synthetic
   (noise) images — compiled and measured; then recovered by ``--bisect`` (its ``--quant-exclude`` list compiled
   again and measured) and by ``--keep-float-top K`` for each K, ranked by ``vitrt sensitivity`` on the digits
   *train* split (label-free KL, so the test images that judge the result take no part in choosing) and, for
   comparison, by the compile's own scoring on its calibration data. Every top-1 is the compiled graph's, in
   ONNX Runtime, on the 450 test images. Table: ``RESULTS/debug_fallback_digits.{md,json}``.

The bisection judges candidate sets on the same 450 test images (it is a debugging tool that recovers the accuracy on
the data it is given); the ``--keep-float-top`` rows never see the test labels.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import OptionError, OutputError
from vitrt.compiler.options import option
from vitrt.compiler.output import (check_output_dir, check_output_file, check_outside_out, check_writable_dir,
                                   nearest_existing, refuse_foreign_dir, start_over)

WORK_MARKER = ".vitrt-debug-digits"  # what marks a --work directory as this command's own (safe to replace)

AGGRESSIVE = dict(precision="int8", quantize_attention=True, calib_data="synthetic", calib_images=2)
AGGRESSIVE_FLAGS = "--precision int8 --quantize-attention --calib-data synthetic --calib-images 2"


@dataclass(frozen=True)
class DigitsDebugConfig:
    results: Path = option(Path("benchmarks/results"), "where the tables and plots go", type=Path, metavar="DIR")
    work: Path = option(Path("out/debug_digits"), "where the compiles go (replaced)", type=Path, metavar="DIR")
    keep_float_top: str = option("2,4,8", "the K values of --keep-float-top", metavar="K,K,...")
    max_drop: float = option(0.5, "--bisect's allowed top-1 drop against fp32, in points", type=float,
                             metavar="POINTS")
    ranking_images: int = option(512, "digits train images vitrt sensitivity scores on", type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    skip_compare: bool = option(False, "only the fallback table")
    skip_bisect: bool = option(False, "no bisection row")
    ranking: Path | None = option(None, "a sensitivity.json to rank --keep-float-top by (default: score it)",
                                  type=Path, metavar="FILE")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "DigitsDebugConfig":
        """Every option checked before anything is deleted or compiled."""
        try:
            ks = [int(k) for k in self.keep_float_top.split(",")]
        except ValueError:
            ks = []
        if not ks or any(k < 1 for k in ks):
            raise OptionError(f"--keep-float-top takes comma-separated counts >= 1, got '{self.keep_float_top}'")
        if not (math.isfinite(self.max_drop) and 0 <= self.max_drop <= 100):
            raise OptionError(f"--max-drop must be a number of points in [0, 100], got {self.max_drop}")
        if self.ranking_images < 1 or (self.threads is not None and self.threads < 1):
            raise OptionError("--ranking-images and --threads must be >= 1")
        if self.ranking is not None and not self.ranking.is_file():
            raise OptionError(f"--ranking '{self.ranking}' does not exist or is not a file")
        work = Path(self.work)
        if work.exists() and not work.is_dir():
            raise OptionError(f"--work '{work}' is not a directory")
        refuse_foreign_dir(work, (work / WORK_MARKER).is_file(), command="debug-digits", what="debug-digits work",
                           flag="--work")
        # --work is replaced before the compiles: a ranking an earlier run scored there would be deleted with it
        check_outside_out("--ranking", self.ranking, work)
        check_writable_dir(self.results)
        # the tables are written after minutes of compiles: a --results nothing can be written into is refused now
        try:
            check_output_file(nearest_existing(self.results) / "debug_fallback_digits.json", "--results")
        except OutputError:
            raise OutputError(f"--results '{self.results}': nothing can be written there; choose another directory") \
                from None
        if not self.skip_compare:  # replaced after the int8 compile: a directory vitrt did not write is refused now
            for against in ("twin", "float"):
                check_output_dir(self.results / f"debug_compare_int8_{against}", force=True)
        return self


def digits_test_images():
    from vitrt.calib.data import load_data
    from vitrt.calib.reference import DIGITS_IMG_SIZE

    data = load_data("digits", DIGITS_IMG_SIZE, split="test")
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in data.batches(450)))
    return np.concatenate(images), np.concatenate(labels)


def top1(out: Path, images, labels, threads=None) -> float:
    import onnx

    from vitrt.debug.compare import logits_only

    return float(np.mean(logits_only(onnx.load(str(out / "model.onnx")), images, threads=threads).argmax(1) == labels))


def compile_reference(model, out: Path, **options) -> dict:
    import vitrt

    vitrt.compile(model, out, name="digits_vit", batch=50, keep_twin=True, force=True, quiet=True, **options)
    return json.loads((out / "manifest.json").read_text())


def compare_reports(model, config: DigitsDebugConfig, progress) -> dict:
    """Step 1: the int8 compile compared with its twin and with the float twin."""
    from vitrt.compiler.output import atomic_output_dir
    from vitrt.debug.compare import compare_with_twin, summary_lines, write_report
    from vitrt.debug.config import CompareConfig

    out = config.work / "int8"
    with progress.step("int8 compile (512 digits calibration images)"):
        compile_reference(model, out, precision="int8", calib_data="digits", calib_images=512)
    found = {}
    for against in ("twin", "float"):
        compare = CompareConfig(out, data="digits", images=450, against=against, threads=config.threads, quiet=True)
        with progress.step(f"compare against the {'twin' if against == 'twin' else 'float twin'}"):
            comparison, meta = compare_with_twin(compare.validate(), progress)
        command = f"vitrt compare {out} --data digits --images 450 --against {against}"
        with atomic_output_dir(config.results / f"debug_compare_int8_{against}", force=True) as staging:
            write_report(staging, comparison, meta, command)
        first = comparison.first_exceeding()
        found[against] = {"command": command, "lines": summary_lines(comparison, meta),
                          "largest_contributor": comparison.largest_contributor(),
                          "first_exceeding": first.point.name if first else None,
                          "blocks": len(comparison.block_growth())}
    return found


def ranking(config: DigitsDebugConfig, progress) -> Path:
    """vitrt sensitivity on the digits train split, calibrated as the aggressive compile calibrates."""
    from vitrt.compiler.output import write_json
    from vitrt.debug.config import DIGITS_REFERENCE, SensitivityConfig
    from vitrt.debug.sensitivity import sensitivity

    command = (f"vitrt sensitivity {DIGITS_REFERENCE} --precision int8 --quantize-attention --data digits --split train "
               f"--images {config.ranking_images} --calib-data synthetic --calib-images 2 -o {config.work}/sensitivity")
    sens = SensitivityConfig(DIGITS_REFERENCE, precision="int8", quantize_attention=True, data="digits", split="train",
                             images=config.ranking_images, calib_data="synthetic", calib_images=2,
                             out=config.work / "sensitivity", quiet=True).validate()
    path = config.work / "sensitivity" / "sensitivity.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"command": command, **sensitivity(sens, progress)})
    return path


def fallback_table(model, config: DigitsDebugConfig, progress) -> dict:
    """Step 2: the aggressive setting, its bisection and --keep-float-top K."""
    from vitrt.debug.bisect import bisect_record
    from vitrt.pipeline.replay import load_record

    images, labels = digits_test_images()
    rows = []

    def measure(name: str, flags: str, **options) -> dict:
        out = config.work / name
        start = time.perf_counter()
        with progress.step(f"compile {name}"):
            manifest = compile_reference(model, out, **options)
        quant = manifest.get("quantization", {})
        layers = len(quant.get("layers", {})) + len(quant.get("float_layers", {}))
        row = {"variant": name, "flags": flags, "top1": top1(out, images, labels, config.threads),
               "float_layers": sorted(quant.get("float_layers", {})),
               "quantized_layers": f"{len(quant.get('layers', {}))}/{layers}" if quant else None,
               "quantized_fraction": round(len(quant.get("layers", {})) / layers, 4) if quant else None,
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        progress.log(f"{name}: top-1 {row['top1'] * 100:.2f} %")
        return row

    fp32 = measure("fp32", "")
    measure("aggressive", AGGRESSIVE_FLAGS, **AGGRESSIVE)
    if not config.skip_bisect:
        with progress.step("bisect over the aggressive compile's quantized layers"):
            found = bisect_record(load_record(config.work / "aggressive"), images, labels, config.max_drop,
                                  ("quant",), config.threads, progress)
        layers = ",".join(u["name"] for u in found["reverted"])
        bisect_row = measure("bisect", f"{AGGRESSIVE_FLAGS} {found['flags']}", quant_exclude=layers or None,
                             **AGGRESSIVE)
        bisect_row["bisect"] = {k: found[k] for k in ("uncompressed", "compiled", "after", "evaluations", "seconds",
                                                      "quantized_layers_kept")}
    path = config.ranking or ranking(config, progress)
    for k in [int(k) for k in config.keep_float_top.split(",")]:
        measure(f"keep_float_top_{k}", f"{AGGRESSIVE_FLAGS} --keep-float-top {k} --sensitivity {path}",
                keep_float_top=k, sensitivity=path, **AGGRESSIVE)
        measure(f"keep_float_top_{k}_calib", f"{AGGRESSIVE_FLAGS} --keep-float-top {k}", keep_float_top=k,
                **AGGRESSIVE)
    for row in rows:
        row["drop_points"] = round((fp32["top1"] - row["top1"]) * 100, 2)
        row["within_0.5"] = row["drop_points"] <= 0.5
    return {"images": len(images), "fp32": fp32["top1"], "rows": rows,
            "bisect_note": "the bisection judges its candidates on the same 450 test images; bisect's baseline is "
                           "the aggressive graph with every quantized layer reverted (= fp32 graph)"}


def markdown(command: str, table: dict, compare: dict | None) -> str:
    lines = ["# Accuracy debugging on the digits reference", "", "```bash", command, "```", ""]
    if compare:
        lines += ["## vitrt compare: int8 (PTQ, 512 digits images) against its twin and the float twin", ""]
        for against, found in compare.items():
            lines += [f"### against the {against} twin ([report](debug_compare_int8_{against}/compare.md), "
                      f"![error growth](debug_compare_int8_{against}/error_growth.png))", "", "```bash",
                      found["command"], "```", ""] + [f"- {line}" for line in found["lines"]] + [""]
    lines += ["## Fallback: an aggressive int8 setting and its recovery", "",
              f"fp32 top-1 {table['fp32'] * 100:.2f} % on {table['images']} digits test images (compiled graph, "
              "ONNX Runtime). Aggressive: `" + AGGRESSIVE_FLAGS + "`.", "",
              "| variant | top-1 | drop (points) | quantized layers | float layers | compile flags beyond the aggressive "
              "ones |", "|---|---:|---:|---:|---|---|"]
    for row in table["rows"]:
        extra = row["flags"].replace(AGGRESSIVE_FLAGS, "").strip() or "—"
        floats = ", ".join(row["float_layers"]) or "—"
        lines.append(f"| {row['variant']} | {row['top1'] * 100:.2f} % | {row['drop_points']:.2f} | "
                     f"{row['quantized_layers'] or '—'} | {floats} | `{extra}` |")
    lines += ["", f"Note: {table['bisect_note']}. `keep_float_top_K` ranks by `vitrt sensitivity` on the digits train "
              "split (no test image); `keep_float_top_K_calib` by the compile's own scoring on its 2 calibration "
              "images.", ""]
    return "\n".join(lines)


def run(config: DigitsDebugConfig) -> int:
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.options import command_line
    from vitrt.compiler.output import write_json
    from vitrt.compiler.progress import progress_for

    config = config.validate()
    progress = progress_for(config)
    command = command_line()
    model, _ = load_reference()
    if config.ranking is not None:  # its precision, layers and model, before minutes of compiles
        from vitrt.compiler.known_models import DIGITS_MODEL
        from vitrt.compiler.models import spec_of_timm
        from vitrt.transforms.quant.scale_table import quantizable_layers, read_ranking

        read_ranking(config.ranking, AGGRESSIVE["precision"], quantizable_layers(
            spec_of_timm(model), AGGRESSIVE["precision"], quantize_attention=True), model=DIGITS_MODEL)
    if config.work.exists():  # validate() allows only a --work this command made
        start_over(config.work, "--work")
    config.work.mkdir(parents=True)
    (config.work / WORK_MARKER).write_text("made by vitrt debug-digits; replaced by its next run\n")
    compare = None if config.skip_compare else compare_reports(model, config, progress)
    table = fallback_table(model, config, progress)
    config.results.mkdir(parents=True, exist_ok=True)
    write_json(config.results / "debug_fallback_digits.json", {"command": command, "compare": compare, **table})
    text = markdown(command, table, compare)
    (config.results / "debug_fallback_digits.md").write_text(text)
    print(text)
    return 0
