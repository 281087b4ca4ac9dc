"""``vitrt demo``: the main job end to end on the digits reference model.

Train (or load the cached) reference ViT, compile it with verification and benchmarking, evaluate the
torch model and the compiled artifact on the same test set, and print one table: accuracy, latency, size.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import add_arguments, from_args, option
from vitrt.compiler.progress import Progress


@dataclass(frozen=True)
class DemoConfig:
    out: Path | None = option(None, "output directory (default: a new temporary directory)", flag="-o/--out",
                              type=Path, metavar="OUT")
    backend: str = option("ort", "inference backend", choices=("ort", "trt"))
    batch: int = option(8, "batch size compiled and benchmarked", type=int, metavar="N")
    bench_iters: int = option(50, "timed iterations", type=int, metavar="N")
    force: bool = option(False, "replace a non-empty output directory")
    dense_only: bool = option(False, "compile only the dense model (skip the fp16 / int8 / token-merging variants)")
    quiet: bool = option(False, "no progress output")


# The compressed variants the demo compiles beside the dense model: (label, OUT subdirectory, options).
# Training-free ones only, so the demo stays a few minutes; fine-tuned variants have their own benchmarks.
DEMO_VARIANTS = (
    ("fp16", "fp16", {"precision": "fp16"}),
    ("int8 PTQ", "int8", {"precision": "int8", "calib_data": "digits"}),
    ("ToMe 60% FLOPs", "tome", {"tome_flops": 0.6}),
)


def run_demo(config: DemoConfig) -> dict:
    from vitrt.pipeline.config import CompileConfig
    from vitrt.pipeline.driver import compile
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.calib.digits import digits_split
    from vitrt.calib.evaluate import accuracy, runner_accuracy
    from vitrt.calib.reference import load_reference

    progress = Progress(enabled=not config.quiet)
    out = config.out or Path(tempfile.mkdtemp(prefix="vitrt-demo-")) / "digits_vit"
    model, info = load_reference()
    _, test = digits_split(info["recipe"]["img_size"])
    backend = get_backend(config.backend)
    base = CompileConfig(model="digits_vit", backend=config.backend, batch=config.batch, verify=True, bench=True,
                         bench_iters=config.bench_iters, quiet=config.quiet)
    variants = [("dense fp32", out, {"force": config.force})]
    if not config.dense_only:  # inside the dense OUT, which the first compile has just created
        variants += [(label, out / sub, {"force": True, **options}) for label, sub, options in DEMO_VARIANTS]
    rows, dense_result = [], None
    for label, variant_out, options in variants:
        result = compile(model, config=base.replace(out=variant_out, **options), progress=progress)
        dense_result = dense_result or result
        with progress.step(f"evaluating {label} (torch twin and compiled artifact) on the digits test set"):
            runner = backend.load(result.artifact_path, BuildOptions())
            rows.append({
                "variant": label,
                "torch_top1": accuracy(result.twin, test),
                "compiled_top1": runner_accuracy(runner, test),
                "max_abs_err": result.manifest["verify"]["max_abs_err"],
                "median_ms": result.manifest["latency"]["median_ms"],
                "images_per_s": result.manifest["latency"]["images_per_s"],
                "gflops": result.manifest["flops"]["after"] / 1e9,
                "onnx_mb": result.onnx_path.stat().st_size / 2**20,
            })
    print_table(rows, test_size=len(test), device=dense_result.manifest["latency"]["device"], batch=config.batch)
    print(f"artifacts: {dense_result.out}")
    return {"rows": rows, "out": str(dense_result.out), "reference": info}


def print_table(rows: list[dict], *, test_size: int, device: str, batch: int) -> None:
    print(f"\ndigits reference ViT — {test_size} test images; latency at batch {batch} on {device}")
    header = f"{'variant':<16} {'torch top-1':>11} {'compiled top-1':>14} {'max |err|':>10} {'median ms':>10} " \
             f"{'images/s':>9} {'GFLOPs':>7} {'ONNX MB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<16} {r['torch_top1'] * 100:>10.2f}% {r['compiled_top1'] * 100:>13.2f}% "
              f"{r['max_abs_err']:>10.2e} {r['median_ms']:>10.2f} {r['images_per_s']:>9.1f} {r['gflops']:>7.3f} "
              f"{r['onnx_mb']:>8.2f}")
    print("torch top-1: the twin after the passes (fake-quant / merged); latency from each compile's own --bench "
          "(for side-by-side speed ratios use the benchmark commands in benchmarks/results)")


def add_subcommands(sub) -> None:
    parser = sub.add_parser("demo", help="end to end on the digits reference model: train or load, compile, verify, "
                                         "bench, compare accuracy")
    add_arguments(parser, DemoConfig)
    parser.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    run_demo(from_args(DemoConfig, args))
    return 0
