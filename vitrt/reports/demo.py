"""``vitrt demo``: the main job end to end on the digits reference model (shipped weights, nothing to train).

Compile the reference ViT as dense fp32 and as training-free fp16, int8 PTQ and token-merged variants, each
verified against its torch twin into ``OUT/<variant>/``; evaluate the twin and the compiled artifact of each
on the same 450 real test images; time every artifact side by side (interleaved rounds in one process) and
write one table to the terminal, ``OUT/demo.md`` and ``OUT/demo.json``. The whole OUT is written atomically.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import add_command, option
from vitrt.compiler.target import BACKENDS

DEFAULT_OUT = Path("vitrt-demo")


@dataclass(frozen=True)
class DemoConfig:
    out: Path = option(DEFAULT_OUT, "output directory (default ./vitrt-demo)", flag="-o/--out", type=Path,
                       metavar="OUT")
    backend: str = option("ort", "inference backend", choices=BACKENDS)
    batch: int = option(8, "batch size compiled and timed", type=int, metavar="N")
    rounds: int = option(5, "interleaved timing rounds (every variant timed once per round)", type=int, metavar="N")
    iterations: int = option(10, "timed runs per variant per round", type=int, metavar="N")
    force: bool = option(False, "replace a non-empty output directory that vitrt wrote")
    dense_only: bool = option(False, "compile only the dense model (skip the fp16 / int8 / token-merging variants)")
    quiet: bool = option(False, "no progress output")


# The variants the demo compiles: (label, OUT subdirectory, compile options). Training-free ones only, so
# the demo stays within two minutes of CPU; fine-tuned variants have their own benchmarks.
VARIANTS = (
    ("dense fp32", "dense", {}),
    ("fp16", "fp16", {"precision": "fp16"}),
    ("int8 PTQ", "int8", {"precision": "int8", "calib_data": "digits", "calib_images": 256}),
    ("ToMe 60% FLOPs", "tome", {"tome_flops": 0.6}),
)
# Why a variant can be slower than dense, per backend (said under the table when it happens).
SLOWER_BECAUSE = {
    "ort": {"fp16": "ONNX Runtime's CPU provider has no fast FP16 GEMM: it computes FP16 through conversions",
            "int8 PTQ": "ONNX Runtime's CPU int8 kernels pay for quantizing activations; at this model's small "
                        "widths (emb 64) that can outweigh the faster integer GEMMs"},
}


def check(config: DemoConfig) -> None:
    """Option checks before any work (one line each)."""
    from vitrt.compiler.backends import get_backend
    from vitrt.compiler.errors import VitrtError
    from vitrt.compiler.output import check_output_dir

    for name in ("batch", "rounds", "iterations"):
        if getattr(config, name) < 1:
            raise VitrtError(f"--{name} must be >= 1, got {getattr(config, name)}")
    check_output_dir(config.out, config.force)
    get_backend(config.backend)  # a missing runtime fails here, before anything is compiled


def timing_batch(images, batch: int):
    """The batch the variants are timed on: the first ``batch`` test images, repeated from the start when the batch
    is larger than the test split (the timing reads no labels, so any batch size can be timed)."""
    import numpy as np

    return images[np.arange(batch) % len(images)]


def run_demo(config: DemoConfig) -> dict:
    check(config)  # before the heavy imports below: a bad option is refused in well under a second
    from vitrt.calib.digits import digits_split
    from vitrt.calib.evaluate import accuracy, runner_accuracy
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.output import atomic_output_dir, write_json
    from vitrt.compiler.progress import Progress, Renamed
    from vitrt.compiler.timing import Timing, interleaved, synced
    from vitrt.pipeline.driver import compile

    progress = Progress(enabled=not config.quiet)
    progress.log(f"writing the demo to {config.out.absolute()}")
    start = time.process_time()
    model, info = load_reference()
    _, test = digits_split(info["recipe"]["img_size"])
    backend = get_backend(config.backend)
    variants = VARIANTS[:1] if config.dense_only else VARIANTS
    rows, runners = [], {}
    with atomic_output_dir(config.out, config.force) as staging:
        shown = Renamed(progress, staging, config.out.absolute())
        for label, sub, options in variants:
            result = compile(model, staging / sub, name="digits_vit", backend=config.backend, batch=config.batch,
                             verify=True, quiet=config.quiet, progress=shown, **options)
            with progress.step(f"evaluating {label} (torch twin and compiled artifact) on {len(test)} test images"):
                runner = backend.load(result.artifact_path, BuildOptions())
                rows.append({"variant": label, "out": sub, "torch_top1": accuracy(result.twin, test),
                             "compiled_top1": runner_accuracy(runner, test),
                             # against the twin in every row (a dense compile verifies against the timm model)
                             "max_abs_err": result.manifest["verify"].get("max_abs_err_twin",
                                                                          result.manifest["verify"]["max_abs_err"]),
                             "gflops": result.manifest["flops"]["after"] / 1e9,
                             "artifact_mb": result.artifact_path.stat().st_size / 2**20})
            runners[label] = runner
        images = timing_batch(test.images.numpy(), config.batch)
        load_before = os.getloadavg()[0]
        with progress.bar(config.rounds * len(runners), f"timing {len(runners)} variants side by side") as bar:
            timed = interleaved({label: synced(r, images) for label, r in runners.items()},
                                Timing(warmup=3, iterations=config.iterations), rounds=config.rounds,
                                progress=bar.update)
        load = max(load_before, os.getloadavg()[0])
        dense = rows[0]
        for row in rows:
            label = row["variant"]
            row.update(delta_points=(row["compiled_top1"] - dense["compiled_top1"]) * 100,
                       median_ms=timed.typical(label), p90_ms=timed.percentile(label, 90),
                       speedup=timed.speedup(dense["variant"], label))
        result = {"rows": rows, "device": backend.device_name(), "backend": config.backend, "batch": config.batch,
                  "test_images": len(test), "reference": info, "rounds": config.rounds,
                  "iterations": config.iterations, "cpu_seconds": round(time.process_time() - start, 1),
                  "load_average": round(load, 2), "cores": os.cpu_count()}
        table = format_table(result)
        (staging / "demo.md").write_text(f"# vitrt demo\n\n{table}\n")
        write_json(staging / "demo.json", result)
    print(table)
    progress.log(f"wrote {config.out.absolute()} (demo.md, demo.json and one directory per variant)")
    return {**result, "out": str(config.out)}


def format_table(result: dict) -> str:
    lines = [f"digits reference ViT — {result['test_images']} real test images; batch {result['batch']} on "
             f"{result['backend']} ({result['device']}); every variant timed side by side, "
             f"{result['rounds']} interleaved rounds x {result['iterations']} runs", "",
             "| variant | top-1 | Δ vs dense | torch twin top-1 | median ms | p90 ms | speedup | artifact MiB | "
             "max abs err vs twin |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['compiled_top1'] * 100:.2f} % | {r['delta_points']:+.2f} pt | "
                     f"{r['torch_top1'] * 100:.2f} % | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['artifact_mb']:.2f} | {r['max_abs_err']:.1e} |")
    slower = [r for r in result["rows"][1:] if round(r["speedup"], 2) < 1.0]  # as printed: "1.00x" is not slower
    reasons = SLOWER_BECAUSE.get(result["backend"], {})
    busy = result["load_average"] > result["cores"]
    for r in slower:
        why = reasons.get(r["variant"]) or ("the machine was busy while timing (see below); rerun on an idle machine"
                                            if busy else "no known cause on this backend")
        lines.append(f"\n{r['variant']} is slower than dense here ({r['speedup']:.2f}x): {why}.")
    if busy:
        lines.append(f"\nWarning: load average {result['load_average']} on {result['cores']} cores while timing: other "
                     "work shared the CPU, so latencies are inflated and ratios noisy.")
    lines.append(f"\ntop-1: the compiled artifact; Δ: points against the dense artifact; speedup: the median of the "
                 f"per-round ratios to dense (robust to a busy round; it can differ from the ratio of the medians); "
                 f"artifact: the backend's deployable file. CPU time of the whole demo: {result['cpu_seconds']} s.")
    return "\n".join(lines)


def _run(config: DemoConfig) -> int:
    run_demo(config)
    return 0


def add_subcommands(sub) -> None:
    add_command(sub, "demo", DemoConfig, _run, "end to end on the digits reference model: compile variants, verify, "
                "evaluate on real digits, time side by side")
