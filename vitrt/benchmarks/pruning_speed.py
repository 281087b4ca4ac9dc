"""Benchmark: measured speedup and LUT accuracy of ``--prune`` on a timm model, dense and pruned side by side.

    python -m vitrt.benchmarks.pruning_speed --lut LUT [--model deit_small_patch16_224] [--target 0.5]
        [--batch 8] [--rounds 5] [-o benchmarks/results/NAME]

Compiles the dense model and the model pruned to ``target`` of its LUT-predicted latency (Hessian importance
on synthetic inputs, KL to the dense model; random weights: this measures speed, not accuracy), then
times both ONNX Runtime artifacts in interleaved rounds in this one process, on the table's clock:
``cpu`` tables (built with ``vitrt lut build --clock cpu --threads 1``) are compared with the least CPU time
of a single-threaded run, which a shared machine's load barely moves; wall-clock medians are reported too.
Prints and writes (``NAME.json``, ``NAME.md``) the speedup, the LUT's error on both models, the per-block
dims and the alignment check.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def run(lut: Path, model: str, target: float, batch: int, rounds: int, samples: int, eta: float) -> dict:
    from vitrt import compile as vitrt_compile
    from vitrt.compiler.lut import LatencyTable
    from vitrt.benchmarks.lut_build import TimingOptions, cpu_clock_ms
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.spec import ViTSpec
    from vitrt.compiler.verify import verification_inputs

    table = LatencyTable.load(lut)
    threads = 1 if table.clock == "cpu" else None
    backend = get_backend("ort")
    with tempfile.TemporaryDirectory(prefix="vitrt-prune-speed-") as tmp:
        dense = vitrt_compile(model, Path(tmp) / "dense", batch=batch, threads=threads)
        pruned = vitrt_compile(model, Path(tmp) / "pruned", prune=target, lut=lut, eta=eta, prune_samples=samples,
                               batch=batch, threads=threads, verify=True)
        results = {}
        for name, result in (("dense", dense), ("pruned", pruned)):
            spec = ViTSpec.from_dict(result.manifest["spec_after"])
            runner = backend.load(result.artifact_path, BuildOptions(threads=threads))
            results[name] = {"spec": spec, "runner": runner, "images": verification_inputs(spec, batch),
                             "predicted_ms": table.model_ms(spec), "cpu_ms": [], "wall_ms": [], "manifest": result.manifest}
        rng = np.random.default_rng(0)
        names = list(results)
        for _ in range(rounds):
            for i in rng.permutation(len(names)):
                r = results[names[i]]
                if table.clock == "cpu":
                    r["cpu_ms"].append(cpu_clock_ms(r["runner"], r["images"], TimingOptions(warmup=1, iterations=3)))
                stats = r["runner"].benchmark(r["images"], warmup=1, iterations=3, per_block=False)
                r["wall_ms"].append(stats.median_ms)
        device = results["dense"]["runner"].device
    clock = "cpu" if table.clock == "cpu" else "wall"
    measured = {n: float(np.min(r["cpu_ms"]) if clock == "cpu" else np.median(r["wall_ms"])) for n, r in results.items()}
    wall = {n: float(np.median(r["wall_ms"])) for n, r in results.items()}
    pruning = results["pruned"]["manifest"]["pruning"]
    report = {
        "model": model, "target": target, "batch": batch, "lut": str(lut), "lut_clock": table.clock,
        "device": device, "threads": threads, "rounds": rounds, "eta": eta, "importance_samples": samples,
        "measured_clock": clock,
        "measured_ms": measured, "wall_median_ms": wall,
        "speedup": measured["dense"] / measured["pruned"],
        "wall_speedup": wall["dense"] / wall["pruned"],
        "predicted_ms": {n: r["predicted_ms"] for n, r in results.items()},
        "lut_error": {n: results[n]["predicted_ms"] / measured[n] - 1 for n in results},
        "predicted_fraction": results["pruned"]["predicted_ms"] / results["dense"]["predicted_ms"],
        "alignment_violations": pruning["alignment_violations"],
        "emb": pruning["emb"], "block_dims": pruning["block_dims"], "removed_units": pruning.get("removed_units"),
        "params": results["pruned"]["manifest"]["params"], "flops": results["pruned"]["manifest"]["flops"],
        "verify_max_abs_err": results["pruned"]["manifest"]["verify"]["max_abs_err"],
        "samples_ms": {n: {"cpu": r["cpu_ms"], "wall": r["wall_ms"]} for n, r in results.items()},
    }
    return report


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
                  f"(wall-clock medians); LUT-predicted fraction {r['predicted_fraction']:.3f}",
              f"alignment violations: {len(r['alignment_violations'])}; verify max abs err vs pruned twin "
              f"{r['verify_max_abs_err']:.2e}", "",
              "| block | heads | qk | v | mlp |", "|---|---|---|---|---|"]
    for i, d in enumerate(r["block_dims"]):
        lines.append(f"| {i} | {d['heads']} | {d['qk']} | {d['v']} | {d['mlp']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", type=Path, required=True)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=16, help="importance images per re-scoring")
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("-o", "--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    report = run(args.lut, args.model, args.target, args.batch, args.rounds, args.samples, args.eta)
    text = format_report(report)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=1))
        Path(f"{args.out}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
