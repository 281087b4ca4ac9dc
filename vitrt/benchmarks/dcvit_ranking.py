"""Does the synthetic metric set rank compressed models like real data does? And data-free INT8 calibration.

    python -m vitrt.benchmarks.dcvit_ranking --metric-set SET --dcvit-plans DIR -o benchmarks/results/dcvit_ranking

Every variant of the shipped digits reference is compiled through ``vitrt.compile`` (ONNX Runtime, ``--verify``)
with ``--metric-set synth:SET --eval-data digits``: the manifest's ``accuracy`` section then holds the compiled
artifact's metric loss on the synthetic set (the data-free estimate) and its top-1 on the 450 test digits.
Variants: NViT pruning to latency fractions (``--prune``, with ``--lut``), ToMe schedules (``--tome``), INT8
PTQ calibrated on real digits and on the synthetic set (both ``--calib-images``), weight-only INT4, and DC-ViT /
whole-block plans (``--dcvit-plans``: the plans ``dcvit_sweep --keep DIR`` left). Reported: Spearman's ρ between
the metric loss (DC-ViT's: KL(dense ‖ variant) on the synthetic set; lower = better) and the real top-1 over all
variants — and, for comparison, of the cross entropy against the set's assigned labels and of the synthetic
top-1 — and the top-1 of the two INT8 rows.

``--combine A.json,B.json,..`` compiles nothing: it ranks together the rows that earlier runs recorded (this
benchmark's and ``dcvit_sweep``'s results, every one a compiled, verified artifact measured through the same
manifest ``accuracy`` section on the same metric set), so DC-ViT sizes join the ranking without compiling them
again.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option

DEFAULT_LUT = Path("benchmarks/results/lut_ort_digits_b8_wall_t1.json")


@dataclass(frozen=True)
class DcvitRankingConfig:
    metric_set: Path | None = option(None, "synthetic metric set of the digits reference; required", type=Path,
                                     metavar="SET")
    dcvit_plans: str | None = option(None, "directories with DC-ViT / whole-block plans (NAME.plan.json, from "
                                     "dcvit_sweep --keep), comma-separated", metavar="DIR1,DIR2")
    plans: str = option("dcvit_0.9,dcvit_0.8,dcvit_0.7,dcvit_0.6,dcvit_0.51,whole_blocks_0.7,dcvit_no_finetune_0.7,"
                        "whole_blocks_no_finetune_0.7", "which plans of --dcvit-plans to include (the first "
                        "directory holding NAME.plan.json)", metavar="NAMES")
    prune: str = option("0.9,0.7,0.5", "NViT latency fractions (--prune, Hessian importance on digits, no "
                        "fine-tuning)", metavar="F1,F2,..")
    lut: Path = option(DEFAULT_LUT, "latency table for --prune (its batch is the compile batch)", type=Path,
                       metavar="LUT")
    tome: str = option("2,4,8", "ToMe r values (--tome R --dfe-skip 0)", metavar="R1,R2,..")
    calib_images: int = option(256, "calibration images of both INT8 rows", type=int, metavar="N")
    batch: int = option(8, "compile batch (the LUT's)", type=int, metavar="N")
    threads: int = option(1, "ONNX Runtime and torch threads", type=int, metavar="N")
    combine: str | None = option(None, "compile nothing: rank the rows of earlier dcvit_ranking / dcvit_sweep "
                                 "results together (comma-separated JSON files, one metric set)", metavar="A.json,..")
    out: Path | None = option(None, "write OUT.md, OUT.json and OUT.png",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "DcvitRankingConfig":
        if self.metric_set is None and self.combine is None:
            raise VitrtError("pass --metric-set SET (make it with: vitrt synth digits-reference -o SET)")
        return self


def variants(config: DcvitRankingConfig) -> list[tuple[str, dict]]:
    """(name, compile options) of every variant."""
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    out = [("dense fp32", {})]
    out += [(f"NViT prune {f}", {"prune": float(f), "lut": config.lut, "data": "digits"}) for f in split(config.prune)]
    out += [(f"ToMe r={r}", {"tome": r, "dfe_skip": 0}) for r in split(config.tome)]
    out += [("int8 PTQ (digits calibration)", {"precision": "int8", "calib_data": "digits",
                                              "calib_images": config.calib_images}),
            ("int8 PTQ (synthetic calibration)", {"precision": "int8", "calib_data": f"synth:{config.metric_set}",
                                                 "calib_images": config.calib_images}),
            ("int4w", {"precision": "int4w"})]
    if config.dcvit_plans is not None:
        directories = [Path(d) for d in split(config.dcvit_plans)]
        for name in split(config.plans):
            found = [d / f"{name}.plan.json" for d in directories if (d / f"{name}.plan.json").is_file()]
            if not found:
                raise VitrtError(f"no {name}.plan.json in {config.dcvit_plans}: run dcvit_sweep --keep DIR first, or "
                                 "change --plans")
            out.append((name.replace("_", " "), {"prune_plan": found[0]}))
    return out


def run(config: DcvitRankingConfig) -> dict:
    config.validate()
    if config.combine is not None:
        return combine([Path(p.strip()) for p in config.combine.split(",") if p.strip()])
    import torch

    from vitrt.calib.reference import load_reference
    from vitrt.compiler.progress import progress_for
    from vitrt.pipeline.driver import compile

    progress = progress_for(config)
    torch.set_num_threads(config.threads)
    model, _ = load_reference()
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitrt-dcvit-ranking-") as tmp:
        for n, (name, options) in enumerate(variants(config)):
            with progress.step(f"{name}: compile, verify, measure"):
                result = compile(model, Path(tmp) / f"v{n}", name=f"digits-reference {name}", quiet=True,
                                 verify=True, batch=config.batch, threads=config.threads,
                                 metric_set=f"synth:{config.metric_set}", eval_data="digits", **options)
            m = result.manifest
            rows.append({"name": name, "options": {k: str(v) for k, v in options.items()},
                         "top1": m["accuracy"]["real"]["top1_compiled"],
                         "metric_loss": m["accuracy"]["metric"]["compiled"]["loss"],
                         "metric_ce": m["accuracy"]["metric"]["compiled"]["ce"],
                         "metric_top1": m["accuracy"]["metric"]["compiled"]["top1"],
                         "macs_fraction": m["flops"]["after"] / m["flops"]["before"],
                         "verify_max_abs_err": m["verify"]["max_abs_err"], "verify_tolerance": m["verify"]["tolerance"]})
            progress.log(f"{name}: top-1 {rows[-1]['top1'] * 100:.2f} %, metric loss {rows[-1]['metric_loss']:.5f}")
    return summarize(rows, config.calib_images, str(config.metric_set), time.perf_counter() - start)


def summarize(rows: list[dict], calib_images: int, metric_set: str, seconds: float) -> dict:
    """Spearman's ρ of the metric loss (and, over the rows that have them, of the CE against the assigned labels
    and of the synthetic top-1) against the real top-1; the two INT8 rows side by side."""
    from scipy.stats import spearmanr

    def rho(key: str, sign: float) -> float:
        having = [r for r in rows if r.get(key) is not None]
        return float(spearmanr([sign * r[key] for r in having], [r["top1"] for r in having]).statistic)

    by_name = {r["name"]: r for r in rows}
    real, synthetic = by_name["int8 PTQ (digits calibration)"], by_name["int8 PTQ (synthetic calibration)"]
    return {"rows": rows, "variants": len(rows), "spearman_metric_loss_vs_top1": rho("metric_loss", -1),
            "spearman_metric_ce_vs_top1": rho("metric_ce", -1), "spearman_metric_top1_vs_top1": rho("metric_top1", 1),
            "dense_top1": by_name["dense fp32"]["top1"],
            "int8": {"calib_images": calib_images, "top1_real_calibration": real["top1"],
                     "top1_synthetic_calibration": synthetic["top1"],
                     "extra_loss_points": round((real["top1"] - synthetic["top1"]) * 100, 3)},
            "metric_set": metric_set, "seconds": round(seconds, 1)}


def combine(paths: list[Path]) -> dict:
    """The rows of earlier results (dcvit_ranking: its variants; dcvit_sweep: its compiled sizes, named
    ``<file stem>: <row name>``), ranked together; they must share one metric set and one dense top-1."""
    from vitrt.compiler.jsonfile import read_json

    rows, sets, dense, calib, seconds = [], set(), set(), None, 0.0
    for path in paths:
        result = read_json(path, "benchmark result", "pass a dcvit_ranking or dcvit_sweep result JSON")
        sets.add(str(result.get("metric_set")))
        dense.add(round(result.get("dense_top1", -1), 4))
        seconds += result.get("seconds", 0.0)
        if "int8" in result:
            calib = result["int8"]["calib_images"]
            rows += [{**r, "source": path.stem} for r in result["rows"]]
        else:
            rows += [{"name": f"{path.stem}: {r['name']}", "source": path.stem, "top1": r["top1"],
                      "metric_loss": r["metric_loss"], "metric_ce": r.get("metric_ce"),
                      "metric_top1": r["metric_top1"], "macs_fraction": r["macs_fraction"],
                      "verify_max_abs_err": r["verify_max_abs_err"], "verify_tolerance": r["verify_tolerance"]}
                     for r in result["rows"]]
    if len(sets) != 1 or len(dense) != 1 or calib is None:
        raise VitrtError(f"--combine needs results on one metric set and one dense model, one of them a dcvit_ranking "
                         f"result; got metric sets {sorted(sets)} and dense top-1 {sorted(map(str, dense))}")
    return {**summarize(rows, calib, sets.pop(), seconds), "combined": [str(p) for p in paths]}


def format_table(result: dict) -> str:
    dense = result["dense_top1"]
    lines = ["| variant | MACs | top-1 (450 test digits) | Δ points | metric loss: KL to dense (synthetic set) | "
             "CE vs assigned labels | synthetic top-1 | verify max err |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: -r["top1"]):
        lines.append(f"| {r['name']} | {r['macs_fraction']:.3f} | {r['top1'] * 100:.2f} % | "
                     f"{(r['top1'] - dense) * 100:+.2f} | {r['metric_loss']:.6f} | {_ce(r)} | "
                     f"{r['metric_top1'] * 100:.1f} % | "
                     f"{r['verify_max_abs_err']:.1e} |")
    i8 = result["int8"]
    lines += ["", f"Spearman ρ (−metric loss vs real top-1) over {result['variants']} variants: "
              f"**{result['spearman_metric_loss_vs_top1']:.3f}** (cross entropy against the assigned labels: "
              f"{result['spearman_metric_ce_vs_top1']:.3f}; synthetic top-1: {result['spearman_metric_top1_vs_top1']:.3f}).",
              f"Data-free INT8 ({i8['calib_images']} calibration images): real digits {i8['top1_real_calibration'] * 100:.2f} %, "
              f"synthetic set {i8['top1_synthetic_calibration'] * 100:.2f} % — the synthetic calibration loses "
              f"**{i8['extra_loss_points']:+.2f}** points more."]
    return "\n".join(lines)


def _ce(row: dict) -> str:
    return "—" if row.get("metric_ce") is None else f"{row['metric_ce']:.4f}"


def plot(result: dict, path: Path) -> None:
    from vitrt.benchmarks.dcvit_record import axes

    with axes(path, "metric loss: KL(dense ‖ variant) on the synthetic set (data-free)", "top-1 on the 450 test digits (%)",
              f"Spearman ρ = {result['spearman_metric_loss_vs_top1']:.3f} over {result['variants']} variants") as ax:
        for r in result["rows"]:
            ax.plot(r["metric_loss"], r["top1"] * 100, "o")
            ax.annotate(r["name"], (r["metric_loss"], r["top1"] * 100), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
        ax.set_xscale("symlog", linthresh=1e-4)


def benchmark(config: DcvitRankingConfig) -> int:
    from vitrt.benchmarks.dcvit_record import record

    result = run(config)
    print(format_table(result))
    if config.out is not None:
        record(config.out, "vitrt.benchmarks.dcvit_ranking", "The synthetic metric set against real accuracy (digits reference), and data-free "
               "INT8", result, format_table(result), plot, f"{result['seconds']} s in all.")
    return 0


def main(argv=None) -> int:
    return module_main(DcvitRankingConfig, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
