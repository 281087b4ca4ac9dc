"""``vitrt demo``: the main job end to end on the digits reference model.

Train (or load the cached) reference ViT, compile it with verification and benchmarking, evaluate the
torch model and the compiled artifact on the same test set, and print one table: accuracy, latency, size.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..compiler.config import CompileConfig, add_arguments, from_args, option
from ..compiler.progress import Progress


@dataclass(frozen=True)
class DemoConfig:
    out: Path | None = option(None, "output directory (default: a new temporary directory)", flag="-o/--out",
                              type=Path, metavar="OUT")
    backend: str = option("ort", "inference backend", choices=("ort", "trt"))
    batch: int = option(8, "batch size compiled and benchmarked", type=int, metavar="N")
    bench_iters: int = option(50, "timed iterations", type=int, metavar="N")
    force: bool = option(False, "replace a non-empty output directory")
    retrain: bool = option(False, "retrain the reference model instead of using the cached one")
    quiet: bool = option(False, "no progress output")


def run_demo(config: DemoConfig) -> dict:
    from ..compiler.api import compile
    from ..compiler.backends import BuildOptions, get_backend
    from .digits import digits_split
    from .evaluate import accuracy, runner_accuracy
    from .reference import load_reference

    progress = Progress(enabled=not config.quiet)
    out = config.out or Path(tempfile.mkdtemp(prefix="vitrt-demo-")) / "digits_vit"
    model, info = load_reference(progress=progress, retrain=config.retrain)
    _, test = digits_split(info["recipe"]["img_size"])
    compile_config = CompileConfig(model="digits_vit", out=out, backend=config.backend, batch=config.batch,
                                   verify=True, bench=True, bench_iters=config.bench_iters, force=config.force,
                                   quiet=config.quiet)
    result = compile(model, config=compile_config, progress=progress)
    with progress.step("evaluating torch and compiled models on the digits test set"):
        backend = get_backend(config.backend)
        runner = backend.load(result.artifact_path, BuildOptions())
        torch_top1, compiled_top1 = accuracy(model, test), runner_accuracy(runner, test)
    rows = [{
        "variant": "dense fp32",
        "torch_top1": torch_top1,
        "compiled_top1": compiled_top1,
        "max_abs_err": result.manifest["verify"]["max_abs_err"],
        "median_ms": result.manifest["latency"]["median_ms"],
        "images_per_s": result.manifest["latency"]["images_per_s"],
        "onnx_mb": result.onnx_path.stat().st_size / 2**20,
        "params": result.manifest["params"]["after"],
    }]
    print_table(rows, test_size=len(test), device=result.manifest["latency"]["device"], batch=config.batch)
    print(f"artifacts: {result.out}")
    return {"rows": rows, "out": str(result.out), "reference": info}


def print_table(rows: list[dict], *, test_size: int, device: str, batch: int) -> None:
    print(f"\ndigits reference ViT — {test_size} test images; latency at batch {batch} on {device}")
    header = f"{'variant':<14} {'torch top-1':>11} {'compiled top-1':>14} {'max |err|':>10} {'median ms':>10} " \
             f"{'images/s':>9} {'ONNX MB':>8} {'params':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<14} {r['torch_top1'] * 100:>10.2f}% {r['compiled_top1'] * 100:>13.2f}% "
              f"{r['max_abs_err']:>10.2e} {r['median_ms']:>10.2f} {r['images_per_s']:>9.1f} {r['onnx_mb']:>8.2f} "
              f"{r['params']:>9,}")


def add_subcommands(sub) -> None:
    parser = sub.add_parser("demo", help="end to end on the digits reference model: train or load, compile, verify, "
                                         "bench, compare accuracy")
    add_arguments(parser, DemoConfig)
    parser.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    run_demo(from_args(DemoConfig, args))
    return 0
