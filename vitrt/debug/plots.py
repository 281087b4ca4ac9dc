"""The debugging PNGs: error growth along the depth (compare) and per-layer sensitivity (sensitivity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitrt.debug.metrics import Comparison

KIND_STYLE = {"stream": ("tab:blue", "o"), "attention": ("tab:orange", "^"), "mlp": ("tab:green", "s"),
              "qdq": ("tab:gray", "."), "head": ("tab:red", "D")}


def _save(fig, out: Path) -> None:
    import matplotlib.pyplot as plt

    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_growth(comparison: Comparison, out: Path, title: str = "") -> None:
    """Top: every point's max |Δ| / max |reference| in computation order, by kind, with the tolerance's relative
    allowance and the first point over it marked. Bottom: the residual stream's relative L2 error after each block
    and each block's growth."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5))
    stats = comparison.stats
    x = np.arange(len(stats))
    floor = 1e-12
    for kind, (color, marker) in KIND_STYLE.items():
        idx = [i for i, s in enumerate(stats) if s.point.kind == kind]
        if idx:
            top.scatter(x[idx], [max(stats[i].rel, floor) for i in idx], s=14, color=color, marker=marker,
                        label=kind)
    logits = comparison.logits
    if logits is not None and logits.ref_max:
        top.axhline(comparison.tolerance / logits.ref_max, color="black", linestyle="--", linewidth=1,
                    label="allowed (tolerance / max |logits|)")
    first = comparison.first_exceeding()
    if first is not None:
        i = stats.index(first)
        top.axvline(i, color="tab:red", linewidth=1, alpha=0.6)
        top.annotate(f"first over: {first.point.name}", (i, max(first.rel, floor)), fontsize=8, xytext=(5, 5),
                     textcoords="offset points")
    ticks = [i for i, s in enumerate(stats) if s.point.kind == "stream" or s.point.name == "logits"]
    top.set_xticks(ticks, [stats[i].point.name.replace(".output", "") for i in ticks], rotation=60, fontsize=7)
    top.set(yscale="log", ylabel="relative L2 error", title=title[:140])
    top.grid(alpha=0.3)
    top.legend(fontsize=7, ncol=3)
    rows = comparison.block_growth()
    if rows:
        blocks = [r["block"] for r in rows]
        bottom.plot(blocks, [r["rel_out"] for r in rows], marker="o", label="stream rel L2 error after the block")
        bottom.bar(blocks, [r["growth"] for r in rows], alpha=0.4, color="tab:orange", label="growth in the block")
        top_row = comparison.largest_contributor()
        if top_row["block"] == "stem":  # the error came in before block 0
            bottom.annotate("largest: the stem, before block 0", (blocks[0], rows[0]["rel_out"]), fontsize=8,
                            xytext=(5, 5), textcoords="offset points")
        else:
            bottom.annotate(f"largest: blocks.{top_row['block']}", (top_row["block"], top_row["growth"]),
                            fontsize=8, xytext=(5, 5), textcoords="offset points")
        bottom.axhline(0, color="black", linewidth=0.6)
        bottom.set(xlabel="block", ylabel="relative L2 error", xticks=blocks)
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7)
    _save(fig, out)


def plot_sensitivity(rows: list[dict], out: Path, title: str, metric: str) -> None:
    """Horizontal bars of ``metric`` per layer, most sensitive first (at most 40 layers shown)."""
    plt = _pyplot()
    shown = rows[:40]
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(shown) + 1.5))
    ax.barh(range(len(shown)), [r[metric] for r in shown], color="tab:purple")
    ax.set_yticks(range(len(shown)), [r["layer"] for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=metric.replace("_", " "), title=title[:120])
    ax.grid(alpha=0.3, axis="x")
    _save(fig, out)
