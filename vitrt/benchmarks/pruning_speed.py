"""Benchmark: measured speedup and LUT accuracy of ``--prune`` on a timm model, dense and pruned side by side.

    python -m vitrt.benchmarks.pruning_speed --lut LUT [--model deit_small_patch16_224] [--target 0.5]
        [--batch 8] [--rounds 5] [--samples 16] [--eta 1] [-o benchmarks/results/NAME]

Compiles the dense model and the model pruned to ``target`` of its LUT-predicted latency (Hessian importance
on synthetic inputs, KL to the dense model; random weights: this measures speed, not accuracy), then times
both ONNX Runtime artifacts in interleaved rounds in this one process (:func:`vitrt.compiler.timing.interleaved`)
on the table's clock: ``cpu`` tables (built with ``vitrt lut build --clock cpu --threads 1``) are compared
with the least CPU time of a single-threaded run, which a shared machine's load barely moves, and wall-clock
medians are measured in interleaved rounds of their own; ``wall`` tables are compared on the wall clock only.
Speedups are medians of the per-round ratios (:meth:`vitrt.compiler.timing.Interleaved.speedup`). Prints and writes
(``NAME.json``, ``NAME.md``) the speedup, the LUT's error on both models, the per-block dims and the
alignment check.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option
from vitrt.compiler.output import result_file
from vitrt.compiler.timing import Timing

ROUND_TIMING = dict(warmup=1, iterations=3)  # per candidate and round


@dataclass(frozen=True)
class PruningSpeedConfig:
    lut: Path | None = option(None, "latency table (vitrt lut build, backend ort, this --batch); required",
                              type=Path, metavar="LUT")
    model: str = option("deit_small_patch16_224", "timm model name", metavar="NAME")
    target: float = option(0.5, "prune to this fraction of the dense model's LUT-predicted latency", type=float,
                           metavar="FRACTION")
    batch: int = option(8, "batch size (the table's)", type=int, metavar="N")
    rounds: int = option(5, "interleaved timing rounds", type=int, metavar="N")
    samples: int = option(16, "importance images per re-scoring (--prune-samples)", type=int, metavar="N")
    eta: float = option(1.0, "weight of the latency saving in the search (--eta)", type=float, metavar="X")
    out: Path | None = option(None, "write OUT.json and OUT.md",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")

    def validate(self) -> "PruningSpeedConfig":
        if self.lut is None:
            raise VitrtError("pass --lut LUT (build one with: vitrt lut build --backend ort --grid coarse --batch 8 "
                             "--threads 1 --clock cpu -o LUT)")
        if self.rounds < 1:
            raise VitrtError(f"--rounds must be >= 1, got {self.rounds}")
        return self


def run(config: PruningSpeedConfig) -> dict:
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.spec import ViTSpec
    from vitrt.compiler.timing import interleaved, synced, typical_ms
    from vitrt.compiler.verify import verification_inputs
    from vitrt.pipeline.driver import compile

    config.validate()
    table = LatencyTable.load(config.lut)
    clock = "cpu" if table.clock == "cpu" else "wall"
    threads = 1 if clock == "cpu" else None  # the CPU clock needs every kernel on the calling thread
    common = dict(batch=config.batch, threads=threads)
    with tempfile.TemporaryDirectory(prefix="vitrt-prune-speed-") as tmp:
        results = {"dense": compile(config.model, Path(tmp) / "dense", **common),
                   "pruned": compile(config.model, Path(tmp) / "pruned", prune=config.target, lut=config.lut,
                                     eta=config.eta, prune_samples=config.samples, verify=True, **common)}
        specs = {name: ViTSpec.from_dict(r.manifest["spec_after"]) for name, r in results.items()}
        backend = get_backend("ort")
        runners = {name: backend.load(r.artifact_path, BuildOptions(threads=threads)) for name, r in results.items()}
        calls = {name: synced(runner, verification_inputs(specs[name], config.batch))
                 for name, runner in runners.items()}
        per_round = {c: interleaved(calls, Timing(**ROUND_TIMING, clock=c), rounds=config.rounds)
                     for c in dict.fromkeys((clock, "wall"))}
        device = runners["dense"].device
    measured = {name: typical_ms(per_round[clock].per_round(name), clock) for name in per_round[clock].samples}
    wall = {name: per_round["wall"].typical(name) for name in per_round["wall"].samples}
    predicted = {name: table.model_ms(spec) for name, spec in specs.items()}
    manifest = results["pruned"].manifest
    pruning = manifest["pruning"]
    return {
        "model": config.model, "target": config.target, "batch": config.batch, "lut": str(config.lut),
        "lut_clock": table.clock, "device": device, "threads": threads, "rounds": config.rounds, "eta": config.eta,
        "importance_samples": config.samples, "measured_clock": clock,
        "measured_ms": measured, "wall_median_ms": wall,
        "speedup": per_round[clock].speedup("dense", "pruned"), "wall_speedup": per_round["wall"].speedup("dense", "pruned"),
        "speedup_method": "median over interleaved rounds of the per-round dense/pruned ratio",
        "predicted_ms": predicted,
        "lut_error": {name: predicted[name] / measured[name] - 1 for name in measured},
        "predicted_fraction": predicted["pruned"] / predicted["dense"],
        "alignment_violations": pruning["alignment_violations"],
        "emb": pruning["emb"], "block_dims": pruning["block_dims"], "removed_units": pruning.get("removed_units"),
        "params": manifest["params"], "flops": manifest["flops"],
        "verify_max_abs_err": manifest["verify"]["max_abs_err"],
        "samples_ms": {name: {c: per_round[c][name] for c in per_round} for name in results},
    }


def format_report(r: dict) -> str:
    lines = [f"{r['model']} pruned to {r['target']:g} of its LUT-predicted latency; ONNX Runtime, batch {r['batch']}, "
             f"{r['device']}, threads {r['threads'] or 'default'}; {r['rounds']} interleaved rounds, "
             f"{r['measured_clock']} clock" + (" (least single-thread CPU time)" if r["measured_clock"] == "cpu" else " (median)"),
             "",
             "| model | emb | params | GFLOPs | LUT ms | measured ms | LUT error | wall median ms |",
             "|---|---|---|---|---|---|---|---|"]
    for n, key in (("dense", "before"), ("pruned", "after")):
        emb = r["emb"] if n == "pruned" else "-"
        lines.append(f"| {n} | {emb} | {r['params'][key] / 1e6:.1f}M | {r['flops'][key] / 1e9:.2f} | "
                     f"{r['predicted_ms'][n]:.1f} | {r['measured_ms'][n]:.1f} | {r['lut_error'][n] * 100:+.1f} % | "
                     f"{r['wall_median_ms'][n]:.1f} |")
    lines += ["", f"measured speedup: {r['speedup']:.2f}x ({r['measured_clock']} clock), {r['wall_speedup']:.2f}x "
                  f"(wall clock); {r['speedup_method']}; LUT-predicted fraction {r['predicted_fraction']:.3f}",
              f"alignment violations: {len(r['alignment_violations'])}; verify max abs err vs pruned twin "
              f"{r['verify_max_abs_err']:.2e}", "",
              "| block | heads | qk | v | mlp |", "|---|---|---|---|---|"]
    for i, d in enumerate(r["block_dims"]):
        lines.append(f"| {i} | {d['heads']} | {d['qk']} | {d['v']} | {d['mlp']} |")
    return "\n".join(lines)


def benchmark(config: PruningSpeedConfig) -> int:
    report = run(config)
    text = format_report(report)
    print(text)
    if config.out is not None:
        result_file(config.out, ".json").write_text(json.dumps(report, indent=1))
        result_file(config.out, ".md").write_text(text + "\n")
    return 0


def main(argv=None) -> int:
    return module_main(PruningSpeedConfig, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
