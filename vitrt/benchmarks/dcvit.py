"""DC-ViT appendix Table 8: whole-model latency with one block's Block / Attn / FFN / Attn+0.5·FFN removed.

For each block i of a ViT and each removal, the model with that part of block i removed is lowered (the
canonical graph drops the removed branch: heads = 0 removes attention, mlp = 0 the MLP, mlp / 2 keeps half
of the FFN's hidden units) and built once on the backend; then every seed is one round that visits all
variants (and the dense model) in a seed-shuffled order with seed-dependent random input images and takes
the median of a few timed runs. Reported: mean ± std over the seeds. Weights are random (fp32 latency does
not depend on their values).

    python -m vitrt.benchmarks.dcvit --model vit_small_patch16_224 --batch 1 --seeds 5 -o benchmarks/results/dcvit_table8
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import command_line, module_main, option
from vitrt.compiler.timing import CLOCKS, Timing, measure, synced

REMOVALS = ("Block", "Attn", "FFN", "Attn+0.5·FFN")


@dataclass(frozen=True)
class DcvitConfig:
    model: str = option("vit_small_patch16_224", "timm ViT (12 blocks in the paper: vit_base; vit_small on CPU)",
                        metavar="MODEL")
    backend: str = option("ort", "inference backend", choices=("ort", "trt"))
    img_size: int | None = option(None, "input image size (default: the model's)", type=int, metavar="N")
    batch: int = option(1, "batch size", type=int, metavar="N")
    seeds: int = option(5, "independent timing rounds (mean ± std over them)", type=int, metavar="N")
    iterations: int = option(5, "timed runs per variant per seed (their median is the seed's value)", type=int,
                             metavar="N")
    warmup: int = option(2, "warm-up runs per variant per seed", type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    clock: str = option("wall", "wall: median wall-clock latency; cpu: least CPU time of a single-threaded run, "
                        "robust on a shared machine (needs --threads 1)", choices=CLOCKS)
    out: Path | None = option(None, "write OUT.json and OUT.md",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")
    quiet: bool = option(False, "no progress output")


def removed(spec, index: int, removal: str):
    """``spec`` with ``removal`` applied to block ``index``."""
    b = spec.blocks[index]
    change = {"Block": dict(heads=0, mlp=0), "Attn": dict(heads=0), "FFN": dict(mlp=0),
              "Attn+0.5·FFN": dict(heads=0, mlp=b.mlp // 2)}[removal]
    blocks = list(spec.blocks)
    blocks[index] = b.__class__(**{**b.__dict__, **change})
    return spec.with_blocks(blocks)


def run_table(config: DcvitConfig, progress=None) -> dict:
    import torch

    from vitrt.compiler.backends import get_backend
    from vitrt.compiler.models import spec_of_timm
    from vitrt.compiler.progress import Progress
    from vitrt.compiler.twin import CanonicalViT
    from vitrt.benchmarks.harness import build_twin, check_counts, images_for
    from vitrt.benchmarks.lut_build import check_clock

    progress = progress or Progress(enabled=not config.quiet)
    check_counts(batch=config.batch, seeds=config.seeds, iterations=config.iterations, threads=config.threads)
    if config.warmup < 0:
        raise VitrtError(f"--warmup must be >= 0, got {config.warmup}")
    check_clock(config.clock, config.backend, config.threads)
    from vitrt.pipeline.driver import model_by_name

    spec = spec_of_timm(model_by_name(config.model, config.img_size))  # digits too: the table needs only its spec
    variants = [("dense", None, spec)] + [(f"{i}:{r}", (i, r), removed(spec, i, r))
                                          for i in range(spec.depth) for r in REMOVALS]
    backend = get_backend(config.backend)
    start = time.perf_counter()
    samples: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="vitrt-dcvit-") as tmp:
        artifacts = {}
        with progress.bar(len(variants), f"building {len(variants)} variants of {config.model}") as bar:
            for name, _, vspec in variants:
                torch.manual_seed(0)
                loaded = build_twin(CanonicalViT(vspec).eval(), Path(tmp) / name.replace(":", "_").replace("·", ""),
                                    name=name, backend=config.backend, batch=config.batch, threads=config.threads)
                artifacts[name] = loaded.artifact  # from the build: runners do not expose their artifact
                del loaded
                gc.collect()
                bar.update(1)
        build_s = time.perf_counter() - start
        from vitrt.compiler.backends import BuildOptions

        options = BuildOptions(threads=config.threads)
        timing = Timing(warmup=config.warmup, iterations=config.iterations, clock=config.clock)
        with progress.bar(config.seeds * len(variants), f"timing, {config.seeds} seeds") as bar:
            for seed in range(config.seeds):
                rng = np.random.default_rng(seed)
                for k in rng.permutation(len(variants)):
                    name, _, vspec = variants[k]
                    runner = backend.load(artifacts[name], options)
                    samples[name].append(measure(synced(runner, images_for(vspec, config.batch, seed)), timing))
                    del runner
                    bar.update(1)
    table = {r: [None] * spec.depth for r in REMOVALS}
    for name, key, _ in variants:
        if key is not None:
            table[key[1]][key[0]] = {"mean_ms": float(np.mean(samples[name])), "std_ms": float(np.std(samples[name])),
                                     "samples_ms": samples[name]}
    return {"model": config.model, "backend": config.backend, "device": backend.device_name(), "batch": config.batch,
            "clock": config.clock, "threads": config.threads or "runtime default",
            "seeds": config.seeds, "iterations": config.iterations, "warmup": config.warmup,
            "dense": {"mean_ms": float(np.mean(samples["dense"])), "std_ms": float(np.std(samples["dense"])),
                      "samples_ms": samples["dense"]},
            "table": table, "build_seconds": round(build_s, 1),
            "total_seconds": round(time.perf_counter() - start, 1)}


def format_table(result: dict) -> str:
    clock = {"wall": "median wall-clock", "cpu": "least single-thread CPU time", "cuda": "median CUDA-event"}.get(
        result["clock"], result["clock"])
    spread = result["seeds"] > 1  # one seed has no spread to show (its std would read ± 0.00)

    def cell(stats) -> str:
        return f"{stats['mean_ms']:.2f} ± {stats['std_ms']:.2f}" if spread else f"{stats['mean_ms']:.2f}"

    over = f"mean ± std over {result['seeds']} seeds" if spread else "one seed (no spread: pass --seeds 5)"
    lines = [f"Latency (ms, {clock}) of {result['model']} (batch {result['batch']}, {result['backend']} on "
             f"{result['device']}, threads {result['threads']}) with one block's part removed; {over}. "
             f"Dense model: {cell(result['dense'])} ms.", "",
             "| block | " + " | ".join(REMOVALS) + " |", "|---" * (len(REMOVALS) + 1) + "|"]
    depth = len(result["table"][REMOVALS[0]])
    for i in range(depth):
        cells = [cell(result["table"][r][i]) for r in REMOVALS]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(config: DcvitConfig, command: str) -> int:
    from vitrt.benchmarks.dcvit_record import record

    result = run_table(config)
    table = format_table(result)
    print(table)
    if config.out is not None:
        record(config.out, "vitrt.benchmarks.dcvit", f"DC-ViT appendix Table 8 on {result['backend']}", result, table,
               notes=f"Build {result['build_seconds']} s, total {result['total_seconds']} s.", command=command)
    return 0


if __name__ == "__main__":
    sys.exit(module_main(DcvitConfig, lambda config: main(config, command_line("python -m vitrt.benchmarks.dcvit")), description=__doc__.splitlines()[0]))
