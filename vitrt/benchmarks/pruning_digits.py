"""Benchmark: NViT pruning of the digits reference ViT to a latency fraction, accuracy before / after fine-tuning.

    python -m vitrt.benchmarks.pruning_digits --lut LUT [--build-lut] [--target 0.5] [--epochs 5] [--batch 8]
        [--samples 256] [--eta 0.05] [--threads 1] [--weights STATE_DICT] [-o results.json]

``--build-lut`` first builds LUT (wall clock, ONNX Runtime) on :data:`DIGITS_GRID`, a grid around the digits
model's dims (emb 64, 65 tokens, patch 4, 10 classes) that no preset covers.

Compiles the shipped digits reference (:func:`vitrt.calib.reference.load_reference`, 98.89 % top-1 on the 450
test digits) three times through ``vitrt.compile`` with ``--prune``: Hessian importance, magnitude importance
(both without fine-tuning, same target), and Hessian with ``--finetune-epochs``. Each compile runs with
``--bench``, which times the dense model and the pruned artifact side by side (interleaved rounds, the speedup
is the median of the per-round ratios); accuracy is measured on the compiled artifacts through the backend
runner.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option

DIGITS_GRID = {"emb": [16, 32, 48, 64], "heads": [1, 2], "qk": [16, 24, 32], "v": [16, 24, 32], "tokens": [65],
               "mlp": [16, 64, 128, 192, 256], "patches": [64], "patch": 4, "num_classes": 10}


@dataclass(frozen=True)
class PruningDigitsConfig:
    lut: Path | None = option(None, "latency table of the digits dims (ort, this --batch); required", type=Path,
                              metavar="LUT")
    build_lut: bool = option(False, "build LUT on DIGITS_GRID first")
    target: float = option(0.5, "prune to this fraction of the dense model's LUT-predicted latency", type=float,
                           metavar="FRACTION")
    epochs: int = option(5, "fine-tuning epochs of the third variant (--finetune-epochs)", type=int, metavar="N")
    batch: int = option(8, "batch size (the table's)", type=int, metavar="N")
    samples: int = option(256, "importance images per re-scoring (--prune-samples)", type=int, metavar="N")
    eta: float = option(0.05, "weight of the latency saving in the search (--eta)", type=float, metavar="X")
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    weights: Path | None = option(None, "state dict of the reference architecture (default: the shipped reference "
                                  "weights)", type=Path, metavar="PATH")
    out: Path | None = option(None, "write the results as JSON",
                              writes="file", flag="-o/--out", type=Path, metavar="FILE")

    def validate(self) -> "PruningDigitsConfig":
        if self.lut is None:
            raise VitrtError("pass --lut LUT (add --build-lut to build it on the digits grid first)")
        return self


def build_digits_lut(path: Path, batch: int, threads: int | None, iterations: int = 9):
    import dataclasses

    from vitrt.benchmarks.lut_build import LUT_TIMING, build_table
    from vitrt.compiler.progress import Progress

    return build_table(path, backend="ort", grid=DIGITS_GRID, batch=batch, threads=threads, clock="wall",
                       timing=dataclasses.replace(LUT_TIMING, iterations=iterations), progress=Progress())


def reference_model(weights: Path | None):
    """The digits reference (timm model) and its image size: the shipped weights, or ``weights`` loaded into
    the reference architecture (e.g. an earlier reference's state dict)."""
    from vitrt.calib.reference import ReferenceRecipe, build_reference_model, load_reference
    from vitrt.compiler.models import load_checkpoint

    if weights is None:
        model, info = load_reference()
        return model, info["recipe"]["img_size"]
    model = build_reference_model()
    load_checkpoint(model, weights)
    return model.eval(), ReferenceRecipe().img_size


def variant_row(importance: str, finetune_epochs: int, manifest: dict, top1: float, dense_top1: float) -> dict:
    """One variant's row from its compile manifest (compiled with --bench): the measured times, their ratio and the
    LUT's error all come from the one side-by-side run of the dense and the pruned artifact (``versus_dense``), not
    from the compile's own --bench run, which is another run at another moment of the shared machine's load."""
    pruning, side_by_side = manifest["pruning"], manifest["latency"]["versus_dense"]
    return {
        "importance": importance, "finetune_epochs": finetune_epochs, "top1": top1, "dense_top1": dense_top1,
        "predicted_ms": pruning["predicted_ms"], "dense_predicted_ms": pruning["dense_predicted_ms"],
        "measured_ms": side_by_side["compiled_median_ms"], "dense_measured_ms": side_by_side["dense_median_ms"],
        "speedup": side_by_side["speedup"], "speedup_method": side_by_side["method"],
        "lut_error": pruning["predicted_ms"] / side_by_side["compiled_median_ms"] - 1,
        "alignment_violations": len(pruning["alignment_violations"]),
        "verify_max_abs_err": manifest["verify"]["max_abs_err"],
        "emb": pruning["emb"], "block_dims": pruning["block_dims"],
        "params": manifest["params"], "flops": manifest["flops"],
    }


def run(config: PruningDigitsConfig) -> dict:
    from vitrt.calib.digits import digits_split
    from vitrt.calib.evaluate import accuracy, runner_accuracy
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.pipeline.driver import compile

    config.validate()
    model, img_size = reference_model(config.weights)
    _, test = digits_split(img_size)
    dense_top1 = accuracy(model, test)
    backend = get_backend("ort")
    rows = []
    variants = [("hessian", 0), ("magnitude", 0), ("hessian", config.epochs)]
    with tempfile.TemporaryDirectory(prefix="vitrt-prune-digits-") as tmp:
        for n, (importance, ft) in enumerate(variants):
            result = compile(model, Path(tmp) / f"v{n}", prune=config.target, lut=config.lut, data="digits",
                             importance=importance, eta=config.eta, prune_samples=config.samples,
                             finetune_epochs=ft, batch=config.batch, threads=config.threads, verify=True, bench=True)
            m = result.manifest
            runner = backend.load(result.artifact_path, BuildOptions(threads=config.threads))
            rows.append(variant_row(importance, ft, m, runner_accuracy(runner, test), dense_top1))
            r = rows[-1]
            print(f"{importance:>9} ft={ft}: top-1 {r['top1'] * 100:.2f} % (dense {dense_top1 * 100:.2f} %), "
                  f"measured {r['measured_ms']:.3f} ms vs dense {r['dense_measured_ms']:.3f} ms "
                  f"({r['speedup']:.2f}x side by side), LUT {r['predicted_ms']:.3f} ms ({r['lut_error'] * 100:+.1f} %)",
                  flush=True)
    report = {"weights": str(config.weights) if config.weights else "load_reference()", "target": config.target,
              "batch": config.batch, "lut": str(config.lut), "eta": config.eta, "samples": config.samples,
              "device": m["latency"]["device"], "test_images": len(test), "rows": rows}
    if config.out is not None:
        Path(config.out).write_text(json.dumps(report, indent=1))
    return report


def benchmark(config: PruningDigitsConfig) -> int:
    config.validate()
    if config.build_lut:
        build_digits_lut(config.lut, config.batch, config.threads)
        print(f"built {config.lut}", flush=True)
    run(config)
    return 0


def main(argv=None) -> int:
    return module_main(PruningDigitsConfig, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
