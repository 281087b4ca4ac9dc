"""Benchmark: NViT pruning of the digits reference ViT to a latency fraction, accuracy before / after fine-tuning.

    python -m vitrt.benchmarks.pruning_digits --lut LUT [--build-lut] [--target 0.5] [--epochs 5] [--batch 8]
        [--threads 1] [-o results.json]

``--build-lut`` first builds LUT (wall clock, ONNX Runtime) on :data:`DIGITS_GRID`, a grid around the digits
model's dims (emb 64, 65 tokens, patch 4, 10 classes) that no preset covers.

Compiles the reference model (real digits data, ~97 % top-1) three times through ``vitrt.compile`` with
``--prune``: Hessian importance, magnitude importance (both without fine-tuning, same target), and Hessian
with ``--finetune-epochs``. Each compile benchmarks the dense model and the pruned artifact side by side
in the same run; accuracy is measured on the compiled artifacts through the backend runner.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


DIGITS_GRID = {"emb": [16, 32, 48, 64], "heads": [1, 2], "qk": [16, 24, 32], "v": [16, 24, 32], "tokens": [65],
               "mlp": [16, 64, 128, 192, 256], "patches": [64], "patch": 4, "num_classes": 10}


def build_digits_lut(path: Path, batch: int, threads: int | None, iterations: int = 9):
    from vitrt.benchmarks.lut_build import TimingOptions, build_table
    from vitrt.compiler.progress import Progress

    return build_table(path, backend="ort", grid=DIGITS_GRID, batch=batch, threads=threads, clock="wall",
                       timing=TimingOptions(iterations=iterations), progress=Progress())


def run(lut: Path, target: float, epochs: int, batch: int, samples: int, eta: float, out: Path | None,
        threads: int | None = None, weights: Path | None = None) -> dict:
    from vitrt import compile as vitrt_compile
    from vitrt.calib.digits import digits_split
    from vitrt.calib.evaluate import accuracy, runner_accuracy
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.backends import BuildOptions, get_backend

    if weights is None:
        model, info = load_reference()
    else:  # a state dict of the same architecture (e.g. an earlier cached reference)
        import torch

        from vitrt.calib.reference import ReferenceRecipe, build_reference_model

        model, info = build_reference_model(), {"recipe": {"img_size": ReferenceRecipe().img_size}}
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.eval()
    _, test = digits_split(info["recipe"]["img_size"])
    dense_top1 = accuracy(model, test)
    backend = get_backend("ort")
    rows = []
    variants = [("hessian", 0), ("magnitude", 0), ("hessian", epochs)]
    with tempfile.TemporaryDirectory(prefix="vitrt-prune-digits-") as tmp:
        for n, (importance, ft) in enumerate(variants):
            result = vitrt_compile(model, Path(tmp) / f"v{n}", prune=target, lut=lut, data="digits",
                                   importance=importance, eta=eta, prune_samples=samples, finetune_epochs=ft,
                                   batch=batch, threads=threads, verify=True, bench=True)
            m = result.manifest
            runner = backend.load(result.artifact_path, BuildOptions(threads=threads))
            pruning = m["pruning"]
            rows.append({
                "importance": importance, "finetune_epochs": ft,
                "top1": runner_accuracy(runner, test), "dense_top1": dense_top1,
                "predicted_ms": pruning["predicted_ms"], "dense_predicted_ms": pruning["dense_predicted_ms"],
                "measured_ms": m["latency"]["median_ms"], "dense_measured_ms": pruning["dense_latency"]["median_ms"],
                "speedup": pruning["dense_latency"]["median_ms"] / m["latency"]["median_ms"],
                "lut_error": pruning["predicted_ms"] / m["latency"]["median_ms"] - 1,
                "alignment_violations": len(pruning["alignment_violations"]),
                "verify_max_abs_err": m["verify"]["max_abs_err"],
                "emb": pruning["emb"], "block_dims": pruning["block_dims"],
                "params": m["params"], "flops": m["flops"],
            })
            r = rows[-1]
            print(f"{importance:>9} ft={ft}: top-1 {r['top1'] * 100:.2f} % (dense {dense_top1 * 100:.2f} %), "
                  f"measured {r['measured_ms']:.3f} ms vs dense {r['dense_measured_ms']:.3f} ms "
                  f"({r['speedup']:.2f}x), LUT {r['predicted_ms']:.3f} ms ({r['lut_error'] * 100:+.1f} %)", flush=True)
    report = {"weights": str(weights) if weights else "load_reference()", "target": target, "batch": batch, "lut": str(lut), "eta": eta, "samples": samples,
              "device": m["latency"]["device"], "test_images": len(test), "rows": rows}
    if out is not None:
        Path(out).write_text(json.dumps(report, indent=1))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lut", type=Path, required=True)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--eta", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", type=Path, help="state dict of the reference architecture (default: the cached "
                                                     "reference, trained if missing)")
    parser.add_argument("--build-lut", action="store_true", help="build LUT on DIGITS_GRID first")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args(argv)
    if args.build_lut:
        build_digits_lut(args.lut, args.batch, args.threads)
        print(f"built {args.lut}", flush=True)
    run(args.lut, args.target, args.epochs, args.batch, args.samples, args.eta, args.out, args.threads, args.weights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
