"""What a token-merging compile adds to OUT: the manifest section, ``token_merge.png`` (which patches of a digits
image merged, traced through the merged fp32 twin of this stage) and, with ``--bench``, the measured speedup over
the dense graph (``token_merge_bench.json``; timed side by side by the compile)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vitrt.compiler.cost import vit_flops
from vitrt.transforms.base import Finished, ReportContext, StageReport
from vitrt.transforms.tome.schedule import MergePlan
from vitrt.transforms.tome.twin import trace_sources


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
    """Write a PNG: the digits image, then one panel per (merging fp32 twin, title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def describe(plan: MergePlan) -> str:
    s = plan.schedule
    parts = [f"r={s.r}" if s.r is not None else "explicit r"]
    skip = next((b.index for b in plan.blocks if b.merges), len(plan.blocks))
    parts.append(f"skip {skip}")
    if s.window:
        parts.append(f"LGTM w={s.window}")
    return ", ".join(parts)


def report(plan: MergePlan, ctx: ReportContext) -> StageReport:
    section = plan.to_dict()
    section["flops_before"] = vit_flops(ctx.twin_before.spec)
    section["flops_after"] = vit_flops(ctx.twin_after.spec)
    section["flops_fraction"] = round(section["flops_after"] / section["flops_before"], 4)
    files = {}
    if plan.merges_anything:
        def write_png(path: Path) -> None:
            merge_figure(path, [(ctx.twin_after, describe(plan))])

        section["picture"] = "token_merge.png"
        files["token_merge.png"] = write_png
    return StageReport(section, files)


def finish(plan: MergePlan, section: dict, finished: Finished) -> dict:
    """With --bench: the speedup over the dense graph, from the compile's side-by-side timing. It times the whole
    compile, so with other stages (pruning, quantization, ...) the speedup and the FLOPs reduction beside it are
    the whole compile's (``scope`` names the stages), never token merging's alone against another baseline."""
    versus = finished.versus_dense
    if versus is None or not plan.merges_anything:
        return {}
    stages = versus["stages"]
    flops_reduction = versus["flops_dense"] / versus["flops_compiled"]
    measured = {"dense_median_ms": versus["dense_median_ms"],
                "merged_median_ms": versus["compiled_median_ms"], "speedup": versus["speedup"],
                "flops_reduction": round(flops_reduction, 4),
                "speedup_over_flops_reduction": round(versus["speedup"] / flops_reduction, 4),
                "scope": "token merging alone" if stages == ["tome"] else
                         f"the whole compile ({', '.join(stages)}) against the dense model",
                "method": versus["method"]}
    section["measured"] = measured
    return {"token_merge_bench.json": lambda path: path.write_text(json.dumps(measured, indent=2) + "\n")}
