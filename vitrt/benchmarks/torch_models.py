"""Every supported timm ViT on the torch backend: compiled with ``--backend torch --verify``, its logits against the
ort backend's artifact of the same graph, and both timed side by side.

    python -m vitrt.benchmarks.torch_models --batch 1 -o benchmarks/results/torch_models.md

Random weights (no model hub here); the comparison images are N(0, 1). Timing: interleaved rounds on the
single-thread CPU clock (``--threads 1 --clock cpu`` of ``vitrt bench``), speedup = median of per-round ratios.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.options import module_main, option
from vitrt.compiler.output import result_file

MODELS = tuple(f"{family}_{size}{distilled}_patch16_224" for family, distilled in
               (("vit", ""), ("deit", ""), ("deit", "_distilled")) for size in ("tiny", "small", "base"))


@dataclass(frozen=True)
class TorchModelsConfig:
    models: str = option(",".join(MODELS), "comma-separated timm model names", metavar="M1,M2,..")
    batch: int = option(1, "batch size compiled and timed", type=int, metavar="N")
    rounds: int = option(3, "interleaved timing rounds", type=int, metavar="N")
    iterations: int = option(2, "timed runs per backend per round", type=int, metavar="N")
    out: Path | None = option(None, "write OUT.md and OUT.json",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")


def run(config: TorchModelsConfig) -> dict:
    from vitrt.benchmarks.harness import build_onnx, check_counts, images_for
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.timing import Timing, interleaved, synced
    from vitrt.pipeline.driver import compile

    check_counts(batch=config.batch, rounds=config.rounds, iterations=config.iterations)
    rows = []
    options = BuildOptions(threads=1)
    for name in config.models.split(","):
        with tempfile.TemporaryDirectory(prefix="vitrt-torch-models-") as work:
            result = compile(name, Path(work) / "out", backend="torch", batch=config.batch, threads=1, verify=True,
                             quiet=True)
            torch_runner = get_backend("torch").load(result.artifact_path, options)
            ort_runner = build_onnx(result.onnx_path, Path(work), "ort", options)
            images = images_for(result.twin.spec, config.batch, seed=1)
            diff = float(np.max(np.abs(torch_runner.infer(images) - ort_runner.infer(images))))
            timed = interleaved({"ort": synced(ort_runner, images), "torch": synced(torch_runner, images)},
                                Timing(warmup=1, iterations=config.iterations, clock="cpu"), rounds=config.rounds)
            rows.append({"model": name, "verify_max_abs_err": result.manifest["verify"]["max_abs_err"],
                         "torch_vs_ort_max_abs": diff, "tolerance": result.manifest["verify"]["tolerance"],
                         "ort_ms": round(timed.typical("ort"), 2), "torch_ms": round(timed.typical("torch"), 2),
                         "torch_speedup_vs_ort": round(timed.speedup("ort", "torch"), 3),
                         "kernels": sorted({k["kernel"] for k in torch_runner.kernels.values()})})
            print(json.dumps(rows[-1]), flush=True)
    return {"batch": config.batch, "rounds": config.rounds, "iterations": config.iterations,
            "device": get_backend("torch").device_name(), "rows": rows}


def to_markdown(result: dict, command: str) -> str:
    lines = ["# Every supported model on the torch backend, beside ONNX Runtime", "", f"Command: `{command}`", "",
             f"batch {result['batch']}, {result['device']}, one thread, CPU clock, {result['rounds']} interleaved "
             f"rounds x {result['iterations']} runs; random weights.", "",
             "| model | verify max err (ORT vs timm) | torch vs ort max abs | tolerance | ort ms | torch ms | torch vs ort |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['verify_max_abs_err']:.1e} | {r['torch_vs_ort_max_abs']:.1e} | "
                     f"{r['tolerance']:g} | {r['ort_ms']:.1f} | {r['torch_ms']:.1f} | {r['torch_speedup_vs_ort']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(config: TorchModelsConfig) -> int:
    result = run(config)
    command = "python -m vitrt.benchmarks.torch_models " + " ".join(sys.argv[1:])
    text = to_markdown(result, command)
    print(text)
    if config.out:
        result_file(config.out, ".md").write_text(text)
        result_file(config.out, ".json").write_text(json.dumps({**result, "command": command}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(module_main(TorchModelsConfig, main, description=__doc__.splitlines()[0]))
