"""DC-ViT appendix Table 9: the time of one update of the synthetic images, per model.

One update is :meth:`vitrt.calib.synthesis.Inversion.step` — exactly what ``vitrt synth`` runs per iteration:
the jittered / flipped batch through the frozen model, cross entropy + TV + L2, the backward pass to the pixels,
an Adam step and the clamp — on a batch of 50 images (DC-ViT's generation batch), timed by the shared timing loop
after warm-up. The paper times one RTX 3090; this is the CPU here (weights are random: the time does not depend
on their values). ``--clock cpu`` runs torch on one thread and takes the least CPU time of that thread (robust on
a shared machine); ``--clock wall`` the median wall time with torch's default threads.

    python -m vitrt.benchmarks.dcvit_table9 --clock cpu -o benchmarks/results/dcvit_table9
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import module_main, option

PAPER_MS = {"vit_tiny_patch16_224": 296.2, "vit_small_patch16_224": 526.5, "vit_base_patch16_224": 985.5,
            "vit_large_patch16_224": 3204.2, "deit_base_patch16_224": 302.4}  # Table 9, one RTX 3090
DIGITS = "digits-reference"


@dataclass(frozen=True)
class Table9Config:
    models: str = option("vit_tiny_patch16_224,vit_small_patch16_224,deit_small_patch16_224,digits-reference",
                         "comma-separated timm model names (digits-reference: the shipped digits ViT)",
                         metavar="M1,M2,..")
    batch: int = option(50, "images updated together (DC-ViT: 50)", type=int, metavar="N")
    iterations: int = option(3, "timed updates per model", type=int, metavar="N")
    warmup: int = option(1, "untimed updates first", type=int, metavar="N")
    clock: str = option("cpu", "cpu: least single-thread CPU time (torch on 1 thread); wall: median wall time",
                        choices=("cpu", "wall"))
    out: Path | None = option(None, "write OUT.json and OUT.md",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")
    quiet: bool = option(False, "no progress output")


def time_model(name: str, config: Table9Config) -> dict:
    import torch

    from vitrt.calib.synthesis import Inversion, SynthesisConfig, balanced_labels, model_for_synthesis, pixel_bounds
    from vitrt.compiler.timing import Timing, samples_ms, typical_ms

    torch.manual_seed(0)
    twin, mean, std, _ = model_for_synthesis(name)
    synthesis = SynthesisConfig(images=config.batch, batch_size=config.batch)
    inversion = Inversion(twin, synthesis, pixel_bounds(mean, std, twin.spec.in_chans))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch, twin.spec.in_chans, twin.spec.img, twin.spec.img, generator=generator)
    images.requires_grad_(True)
    labels = balanced_labels(config.batch, twin.spec.num_classes, 0)
    optimizer, schedule = inversion.optimizer(images)
    timing = Timing(warmup=config.warmup, iterations=config.iterations, clock=config.clock)
    samples = samples_ms(lambda: inversion.step(images, labels, optimizer, schedule, generator), timing)
    ms = typical_ms(samples, config.clock)
    return {"model": name, "img": twin.spec.img, "batch": config.batch, "ms": round(ms, 1),
            "samples_ms": [round(s, 1) for s in samples], "paper_ms_rtx3090": PAPER_MS.get(name),
            "seconds_per_2000_iterations": round(ms * 2000 / 1000, 1)}


def run(config: Table9Config) -> dict:
    import torch

    from vitrt.compiler.backends.ort import cpu_name
    from vitrt.compiler.progress import progress_for

    progress = progress_for(config)
    threads = torch.get_num_threads()
    if config.clock == "cpu":
        torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    try:
        for name in [m.strip() for m in config.models.split(",") if m.strip()]:
            with progress.step(f"timing one synthetic-image update of {name} (batch {config.batch})"):
                rows.append(time_model(name, config))
            progress.log(f"{name}: {rows[-1]['ms']:.1f} ms per update")
    finally:
        torch.set_num_threads(threads)
    return {"rows": rows, "clock": config.clock, "torch_threads": 1 if config.clock == "cpu" else threads,
            "device": cpu_name(), "iterations": config.iterations,
            "warmup": config.warmup, "seconds": round(time.perf_counter() - start, 1)}


def format_table(result: dict) -> str:
    clock = {"cpu": "least single-thread CPU time", "wall": "median wall time"}[result["clock"]]
    lines = [f"Time of one update of the synthetic images (ms, {clock}; torch threads {result['torch_threads']}; "
             f"{result['device']}).", "",
             "| model | input | batch | ms per update (here, CPU) | s per 2,000 updates | paper (RTX 3090) ms |",
             "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        paper = f"{r['paper_ms_rtx3090']:.1f}" if r["paper_ms_rtx3090"] else "—"
        lines.append(f"| {r['model']} | {r['img']}² | {r['batch']} | {r['ms']:.1f} | {r['seconds_per_2000_iterations']:.0f} "
                     f"| {paper} |")
    return "\n".join(lines)


def benchmark(config: Table9Config) -> int:
    from vitrt.benchmarks.dcvit_record import record

    result = run(config)
    print(format_table(result))
    if config.out is not None:
        record(config.out, "vitrt.benchmarks.dcvit_table9", "DC-ViT appendix Table 9 on CPU: one update of the synthetic images", result,
               format_table(result), notes=f"{result['iterations']} timed updates after {result['warmup']} warm-up "
               f"per model; {result['seconds']} s in all.")
    return 0


def main(argv=None) -> int:
    return module_main(Table9Config, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
