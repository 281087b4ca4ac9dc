"""How far the latency table is from whole engines of the digits reference, and what the search's calibration fixes.

    python -m vitrt.search.table_check --lut benchmarks/results/lut_ort_digits_b8_cpu_fp32_int8.json \
        -o benchmarks/results/table_calibration_digits

Compiles the dense digits reference and variants of it — token-merge schedules (DFE r = 2, 3, 4, 6; ToMe r = 2 in
every block; r = 1 in the last six blocks; one merge alone) and NViT-pruned models (no fine-tuning: latency only) —
at batch 8 on ONNX Runtime CPU, times them side by side against the dense one (single-thread CPU clock,
interleaved rounds) and compares each measured ratio to dense with the table's:

* the table alone;
* with the search's calibration (:func:`vitrt.search.optimize.calibrate`): the per-run offset solved from the
  smallest pruned engine and the merge factor from the schedule with the largest merge part — the two engines it
  is fitted on are marked, every other row is a prediction.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option

# name -> compile options (beyond batch 8, ORT, one thread); the first pruned and the first merging variant with the
# largest merge part are the calibration's engines, as in the search
VARIANTS = {
    "prune 0.12": {"prune": 0.12, "importance": "magnitude"},
    "prune 0.3": {"prune": 0.3, "importance": "magnitude"},
    "prune 0.5": {"prune": 0.5, "importance": "magnitude"},
    "DFE r=2": {"tome": "2"},
    "DFE r=3": {"tome": "3"},
    "DFE r=4": {"tome": "4"},
    "DFE r=6": {"tome": "6"},
    "ToMe r=2 (every block)": {"tome": "2", "dfe_skip": 0},
    "r=1 in blocks 6-11": {"tome_schedule": "0,0,0,0,0,0,1,1,1,1,1,1"},
    "one merge (block 11)": {"tome_schedule": "0,0,0,0,0,0,0,0,0,0,0,1"},
    "prune 0.3 + DFE r=6": {"prune": 0.3, "importance": "magnitude", "tome": "6"},
    "prune 0.5 + DFE r=6": {"prune": 0.5, "importance": "magnitude", "tome": "6"},
}


@dataclass(frozen=True)
class TableCalibrationConfig:
    lut: Path | None = option(None, "latency table built on this machine (fp32/dense, batch 8, cpu clock); required",
                              type=Path, metavar="LUT")
    rounds: int = option(9, "interleaved timing rounds", type=int, metavar="N")
    out: Path | None = option(None, "write OUT.md and OUT.json",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "TableCalibrationConfig":
        if self.lut is None or not Path(self.lut).is_file():
            raise VitrtError("pass --lut LUT: a latency table file built on this machine")
        return self


def benchmark(config: TableCalibrationConfig) -> int:
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.progress import Progress
    from vitrt.compiler.spec import ViTSpec
    from vitrt.pipeline.driver import compile
    from vitrt.search.evaluate import calibrated_ms, fit_calibration
    from vitrt.search.measure import measure

    config = config.validate()
    progress = Progress(enabled=not config.quiet)
    lut = LatencyTable.load(config.lut)
    lut.check(backend="ort", batch=8)
    module = load_reference()[0]
    with tempfile.TemporaryDirectory(prefix="vitrt-calibration-") as work:
        outs = {"dense": Path(work) / "dense"}
        outs.update({name: Path(work) / f"v{i}" for i, name in enumerate(VARIANTS)})
        with progress.bar(len(outs), "compiling the variants") as bar:
            for name, out in outs.items():
                options = VARIANTS.get(name, {})
                pruning = {"lut": str(config.lut), "data": "digits"} if "prune" in options else {}
                compile(module, out, name="digits", batch=8, threads=1, quiet=True, **pruning, **options)
                bar.update(1)
        timed = measure(outs, "dense", rounds=config.rounds, iterations=20, threads=1, progress=progress)
        specs = {name: ViTSpec.from_dict(json.loads((out / "manifest.json").read_text())["spec_after"])
                 for name, out in outs.items()}
    table = {name: lut.model_ms(spec, clamp=True) for name, spec in specs.items()}
    merge = {name: lut.merge_ms(spec, clamp=True) for name, spec in specs.items()}
    ratio = {name: 1.0 / timed[name].speedup_cpu for name in outs}
    small = min((n for n in VARIANTS if merge[n] == 0 and n != "dense"), key=lambda n: table[n])
    probe = max((n for n in VARIANTS if "prune" not in VARIANTS[n]), key=lambda n: merge[n])
    offset, k = fit_calibration(table["dense"], small=(table[small], ratio[small]),
                                merge=(table[probe], merge[probe], ratio[probe]))
    rows = []
    for name in VARIANTS:
        alone = table[name] / table["dense"]
        calibrated = calibrated_ms(table[name], merge[name], offset=offset, merge_factor=k) / \
            calibrated_ms(table["dense"], merge["dense"], offset=offset, merge_factor=k)
        rows.append({"variant": name, "measured_ms": timed[name].cpu_ms, "measured_ratio": ratio[name],
                     "table_ratio": alone, "table_error": alone / ratio[name] - 1,
                     "calibrated_ratio": calibrated, "calibrated_error": calibrated / ratio[name] - 1,
                     "fitted_on": name in (small, probe)})
    result = {"lut": str(config.lut), "dense_ms": timed["dense"].cpu_ms, "offset_ms": offset, "merge_factor": k,
              "offset_from": small, "merge_factor_from": probe, "rows": rows}
    lines = ["| variant | measured ms (cpu) | measured / dense | table / dense | table error | calibrated / dense | "
             "calibrated error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = " (fitted on)" if r["fitted_on"] else ""
        lines.append(f"| {r['variant']}{mark} | {r['measured_ms']:.3f} | {r['measured_ratio']:.3f} | "
                     f"{r['table_ratio']:.3f} | {100 * r['table_error']:+.1f} % | {r['calibrated_ratio']:.3f} | "
                     f"{100 * r['calibrated_error']:+.1f} % |")
    text = "\n".join(lines)
    print(text)
    if config.out is not None:
        from vitrt.benchmarks.dcvit_record import record

        record(config.out, "vitrt.search.table_check", "The latency table against whole engines of the "
               "digits reference, and the search's calibration", result, text,
               notes=f"Dense fp32 {timed['dense'].cpu_ms:.3f} ms (batch 8, single-thread CPU time, least of 20 runs "
                     f"per round, median of {config.rounds} interleaved rounds). Calibration: + {offset:.3f} ms a run "
                     f"(from {small}), the table's merge part x {k:.2f} (from {probe}); the other rows are "
                     "predictions. Pruned variants are not fine-tuned (latency only).")
    return 0


def main(argv=None) -> int:
    return module_main(TableCalibrationConfig, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
