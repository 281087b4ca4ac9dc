"""Token-merge outputs for OUT: the merged-patch picture and the measured speedup over the dense graph.

* ``token_merge.png`` — a digits test image (resized to the model's input) and, per patch, the final token it
  was merged into (the paper's Fig. 7 idea), traced through the torch twin;
* with ``--bench``: ``token_merge_bench.json`` and ``manifest['token_merge']['measured']`` — the dense graph
  (the graph the pass received) and the compiled graph in ONNX Runtime, timed alternately in one process
  (medians), so that the ratio is taken side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def alternate_benchmark(sessions: dict, images: np.ndarray, iterations: int, warmup: int = 2) -> dict:
    """Median ms of each ONNX Runtime session, timed in turn (a, b, a, b, …) so that load noise hits all alike."""
    feeds = {name: {s.get_inputs()[0].name: images} for name, s in sessions.items()}
    for _ in range(max(warmup, 1)):
        for name, s in sessions.items():
            s.run(None, feeds[name])
    samples = {name: [] for name in sessions}
    for _ in range(iterations):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: float(np.median(v)) for name, v in samples.items()}


def ort_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session with the ort backend's settings (ORT_ENABLE_ALL)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    source = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, so,
                                providers=["CPUExecutionProvider"])


def digits_image(img_size: int, in_chans: int, index: int = 0):
    """One digits test image as a [1, C, img, img] tensor in [-1, 1] (bilinear resize)."""
    import torch

    from vitrt.calib.digits import digits_split

    image = digits_split(img_size)[1].images[index: index + 1]
    if image.shape[1] != in_chans:
        image = image.mean(1, keepdim=True).expand(-1, in_chans, -1, -1)
    return image.contiguous().to(torch.float32)


def draw_merges(ax, image, sources: np.ndarray, grid: int, title: str) -> None:
    """Patches coloured by the final token holding them, drawn over the image; borders between tokens."""
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.15, 1.0, size=(int(sources.max()) + 1, 3))
    tokens = sources.reshape(grid, grid)
    picture = np.asarray(image, dtype=np.float32)
    picture = (picture - picture.min()) / max(float(np.ptp(picture)), 1e-6)
    size = picture.shape[0]
    cell = size / grid
    overlay = colours[tokens]
    ax.imshow(picture, cmap="gray", extent=(0, size, size, 0))
    ax.imshow(overlay, alpha=0.55, extent=(0, size, size, 0), interpolation="nearest")
    for y in range(grid):
        for x in range(grid):
            if x + 1 < grid and tokens[y, x] != tokens[y, x + 1]:
                ax.plot([(x + 1) * cell] * 2, [y * cell, (y + 1) * cell], color="k", lw=0.6)
            if y + 1 < grid and tokens[y, x] != tokens[y + 1, x]:
                ax.plot([x * cell, (x + 1) * cell], [(y + 1) * cell] * 2, color="k", lw=0.6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def merge_figure(path: Path, panels: list[tuple[object, str]], image_index: int = 0) -> None:
    """Write a PNG: the digits image, then one panel per (merging twin, title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitrt.calib.tome import trace_sources

    first = panels[0][0]
    image = digits_image(first.spec.img, first.spec.in_chans, image_index)
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 3.2))
    gray = image[0].mean(0).numpy()
    axes[0].imshow(gray, cmap="gray")
    axes[0].set_title("input (digits test image)", fontsize=8)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for ax, (twin, title) in zip(axes[1:], panels):
        sources = trace_sources(twin, image)[0].numpy()
        draw_merges(ax, gray, sources, twin.spec.grid, f"{title}\n{len(np.unique(sources))} patch tokens left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def register_outputs(ctx, plan, dense) -> None:
    """Add the picture (always) and, when ``dense`` (the pre-merge ONNX) is given, the measured speedup."""
    record = ctx.manifest["token_merge"]

    def write_png(path: Path) -> None:
        merge_figure(path, [(ctx.twin, _describe(plan))])
        record["picture"] = path.name

    ctx.files["token_merge.png"] = write_png
    if dense is None:
        return
    options = ctx.options

    def write_bench(path: Path) -> None:
        import onnx

        from vitrt.compiler.verify import verification_inputs

        compiled = onnx.load(str(path.parent / "model.onnx"))
        batch = options.batch
        images = verification_inputs(plan_spec(compiled), batch, seed=options.seed)
        ms = alternate_benchmark({"dense": ort_session(dense, options.threads),
                                  "merged": ort_session(compiled, options.threads)},
                                 images, iterations=options.bench_iters, warmup=min(options.bench_warmup, 3))
        flops_reduction = record["flops_before"] / record["flops_after"]
        speedup = ms["dense"] / ms["merged"]
        measured = {"backend": "ort", "batch": batch, "iterations": options.bench_iters, "dense_median_ms": round(ms["dense"], 3),
                    "merged_median_ms": round(ms["merged"], 3), "speedup": round(speedup, 4),
                    "flops_reduction": round(flops_reduction, 4),
                    "speedup_over_flops_reduction": round(speedup / flops_reduction, 4),
                    "method": "dense and merged ONNX Runtime sessions timed alternately in one process; medians"}
        record["measured"] = measured
        path.write_text(json.dumps(measured, indent=2) + "\n")

    ctx.files["token_merge_bench.json"] = write_bench


def plan_spec(model):
    from vitrt.compiler.spec import ViTSpec

    return ViTSpec.from_onnx(model)


def _describe(plan) -> str:
    s = plan.schedule
    parts = [f"r={s.r}" if s.r is not None else "explicit r"]
    skip = next((b.index for b in plan.blocks if b.merges), len(plan.blocks))
    parts.append(f"skip {skip}")
    if s.window:
        parts.append(f"LGTM w={s.window}")
    return ", ".join(parts)
