"""The Pareto front of a search and its report: ``pareto.md`` / ``pareto.json`` / ``pareto.png``.

A recipe's point is its estimate at the largest fine-tuning budget it reached (predicted latency, held-out top-1,
held-out cross-entropy). The front is the set no other point beats: faster, and more accurate — top-1 first, the
cross-entropy where top-1 ties (on a few hundred held-out images many recipes tie, at 100 % most often). Front
points are compiled from their recipes and measured side by side (:mod:`vitrt.search.measure`): measured latency
and the table's prediction in the same run, and top-1 of the built engine on the test split.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from vitrt.compiler.timing import NOISE_NOTE
from vitrt.search.evaluate import Estimate
from vitrt.search.measure import noise_marks


def best_per_recipe(estimates: list[Estimate]) -> list[Estimate]:
    """Each recipe's estimate at its largest budget (refused ones left out)."""
    best: dict[str, Estimate] = {}
    for e in estimates:
        if e.ok and e.holdout_top1 is not None and (e.recipe.key not in best or e.epochs > best[e.recipe.key].epochs):
            best[e.recipe.key] = e
    return list(best.values())


def accuracy_score(e: Estimate) -> tuple[float, float]:
    """What "more accurate" means on the front: higher held-out top-1, then lower held-out cross-entropy."""
    return e.holdout_top1, -(e.holdout_loss if e.holdout_loss is not None else float("inf"))


def pareto(points: list[Estimate]) -> list[Estimate]:
    """Non-dominated points (lower predicted latency, higher :func:`accuracy_score`), fastest first."""
    front, best = [], None
    for e in sorted(points, key=lambda e: (e.predicted_ms, tuple(-x for x in accuracy_score(e)))):
        if best is None or accuracy_score(e) > best:
            front.append(e)
            best = accuracy_score(e)
    return front


def thin(front: list[Estimate], limit: int, must: list[Estimate]) -> list[Estimate]:
    """At most ``limit`` front points spread along it, the ``must`` ones among them (they count towards the limit;
    the rest are spread evenly over the other points, both ends first)."""
    if len(front) <= limit:
        return front
    kept = {i for i, e in enumerate(front) if any(e is m for m in must)}
    others = [i for i in range(len(front)) if i not in kept]
    slots = max(0, limit - len(kept))
    if slots == 1:
        kept.add(others[0])
    elif slots > 1:
        step = (len(others) - 1) / (slots - 1)
        kept |= {others[round(i * step)] for i in range(slots)}
    return [e for i, e in enumerate(front) if i in kept]


def write_report(out: Path, result: dict) -> None:
    """pareto.json (everything), pareto.md (the table and the command), pareto.png (accuracy vs latency)."""
    (out / "pareto.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "pareto.md").write_text(markdown(result) + "\n")
    plot(result, out / "pareto.png")


def _pct(x):
    return "—" if x is None else f"{100 * x:.2f} %"


def _ms(x):
    return "—" if x is None else f"{x:.3f}"


def _error(predicted, measured) -> str:
    return "—" if predicted is None else f"{100 * (predicted / measured - 1):+.1f} %"


def _loss(x):
    return "—" if x is None else f"{x:.4f}"


def predicted_ms(point: dict, scale: float) -> float:
    """A front point's predicted ms: the table's (merge-calibrated) time x ``scale``; older results: as searched."""
    return point["table_ms"] * scale if "table_ms" in point else point["predicted_ms"]


def _max_median(errors: list[float]) -> str:
    return f"max |error| {100 * max(errors):.1f} %, median {100 * statistics.median(errors):.1f} %"


def chosen_line(chosen: dict | None, verify: dict | None) -> str:
    """What was chosen and where it was written; nothing is claimed that was not written."""
    if chosen is None:
        return "Chosen: none — no recipe met the goal; no engine or recipe was written."
    if not verify:
        checked = "not verified"
    else:
        err = verify.get("max_abs_err")
        checked = ("verified" if verify.get("ok") else "VERIFICATION FAILED") + (
            f", max abs error {err:.1e}" if isinstance(err, (int, float)) else "")
    return f"Chosen: {chosen['label']} — OUT/engine ({checked}), OUT/recipe.json."


def markdown(result: dict) -> str:
    dense, goal = result["dense"], result["goal"]
    lines = [f"# vitrt optimize: {result['model']}", "", "Command:", "", "```bash", result["command"], "```", "",
             f"Goal: {goal}. Backend {result['backend']}, batch {result['batch']}; latency predicted by "
             f"`{result['lut']}` ({result['lut_clock']} clock) and measured side by side on the single-thread CPU "
             f"clock (wall clock beside it). Held-out split: {result['holdout_images']} images of the training data "
             f"(never trained on); test: {result['test_images']} images.",
             f"Search: {result['search_seconds'] / 60:.1f} min, whole run {result['total_seconds'] / 60:.1f} min; "
             f"{len(result['estimates'])} estimates of {result['recipes']} recipes "
             f"({result['dominated']} dropped as dominated by the table before any accuracy estimate).", "",
             "## Measured Pareto front", "",
             "| recipe | fine-tune epochs / stage | predicted ms | measured ms (cpu) | error | table alone | "
             "predicted speedup | speedup (cpu) | speedup error | wall ms | speedup (wall) | held-out top-1 | "
             "held-out loss | test top-1 | test drop (pt) | params | ONNX KB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    scale = result.get("front_scale", result.get("lut_scale", 1.0))
    noisy = False
    for p in result["front"]:
        m = p["measured"]
        mark = " **(chosen)**" if p.get("chosen") else ""
        drop = None if m["top1"] is None or dense["test_top1"] is None else 100 * (dense["test_top1"] - m["top1"])
        speedup = dense["predicted_ms"] / p["predicted_ms"]
        predicted = predicted_ms(p, scale)
        noise = noise_marks(dense["measured"], m)
        noisy = noisy or any(noise.values())
        lines.append(f"| {p['label']}{mark} | {p['epochs']} | {_ms(predicted)} | {_ms(m['cpu_ms'])} | "
                     f"{_error(predicted, m['cpu_ms'])} | {_error(p.get('table_alone_ms'), m['cpu_ms'])} | "
                     f"{speedup:.2f}x | {m['speedup_cpu']:.2f}x{noise['cpu']} | "
                     f"{100 * (speedup / m['speedup_cpu'] - 1):+.1f} % | "
                     f"{_ms(m['wall_ms'])} | {m['speedup_wall']:.2f}x{noise['wall']} | {_pct(p['holdout_top1'])} | "
                     f"{_loss(p.get('holdout_loss'))} | {_pct(m['top1'])} | "
                     f"{'—' if drop is None else f'{round(drop, 2) + 0.0:.2f}'} | "  # no '-0.00'
                     f"{m['params']:,} | {m['onnx_bytes'] / 1024:.0f} |")
    d = dense["measured"]
    table_dense, offset = result.get("dense_table_ms"), result.get("table_offset_ms", 0.0)
    lines += [f"| dense fp32 (reference) | — | {_ms((table_dense + offset) * scale if table_dense else None)} | "
              f"{_ms(d['cpu_ms'])} | (calibration) | {_error(table_dense, d['cpu_ms'])} | 1.00x | 1.00x | — | "
              f"{_ms(d['wall_ms'])} | 1.00x | {_pct(dense['holdout_top1'])} | "
              f"{_loss(dense.get('holdout_loss'))} | {_pct(d['top1'])} | 0.00 | {d['params']:,} | "
              f"{d['onnx_bytes'] / 1024:.0f} |", ""] + ([NOISE_NOTE, ""] if noisy else [])
    front = result["front"]
    if front:
        errors = [abs(predicted_ms(p, scale) / p["measured"]["cpu_ms"] - 1) for p in front]
        alone = [abs(p["table_alone_ms"] / p["measured"]["cpu_ms"] - 1) for p in front if "table_alone_ms" in p]
        speed = [abs(dense["predicted_ms"] / p["predicted_ms"] / p["measured"]["speedup_cpu"] - 1) for p in front]
        worst = front[errors.index(max(errors))]
        lines.append(f"Prediction error on the {len(front)} front points: {_max_median(errors)} ({worst['label']} the "
                     f"largest). A prediction is the table's time for the compiled engine's spec, calibrated on "
                     f"engines of this model timed at the start of the search — + {offset:.3f} ms a run (what the "
                     f"smallest pruned engine measured beyond the table), its token-merge part x "
                     f"{result.get('merge_factor', 1.0):.2f} (what the merging one measured) — times {scale:.3f}: "
                     f"the dense engine's time measured in this same timing run over its calibrated table time (one "
                     f"factor for the machine at that moment, which makes the dense row exact by construction)." +
                     (f" The table alone (no calibration at all) is off by {_max_median(alone)}." if alone else ""))
        lines.append(f"Predicted speedup over dense against the speedup measured side by side with the dense engine "
                     f"(median of per-round ratios): {_max_median(speed)}.")
    replayable = [p for p in front if p.get("recipe")]
    if replayable:
        lines += ["", "Each front point compiles again from its recipe: `vitrt compile --recipe OUT/RECIPE -o ENGINE`.",
                  ""] + [f"* {p['label']} ({p['epochs']} epochs): `{p['recipe']}`" for p in replayable]
    chosen = result.get("chosen")
    lines += ["", chosen_line(chosen, result.get("engine_verify")), "",
              "## Every estimate", "",
              f"Predicted times here use the calibration made at the start of the search (x "
              f"{result.get('lut_scale', 1.0):.3f}), the one the search ranked with; the front above is re-scaled by "
              f"the dense engine timed beside it (x {scale:.3f}), so the same recipe can read differently.", "",
              "| recipe | epochs | predicted ms (search) | predicted speedup | held-out top-1 | params | note |",
              "|---|---|---|---|---|---|---|"]
    for e in sorted(result["estimates"], key=lambda e: (e["predicted_ms"] or 1e9, e["epochs"])):
        speed = "—" if not e["predicted_ms"] else f"{dense['predicted_ms'] / e['predicted_ms']:.2f}x"
        lines.append(f"| {e['label']} | {e['epochs']} | {_ms(e['predicted_ms'])} | {speed} | {_pct(e['holdout_top1'])} | "
                     f"{e['params'] or '—'} | {e['refused'][:80]} |")
    lines += ["", "## Dropped before any accuracy estimate (latency table)", "",
              "| recipe | predicted ms | why |", "|---|---|---|"]
    for key, note in sorted(result["structural"]["notes"].items()):
        lines.append(f"| {result['labels'].get(key, key)} | {_ms(result['structural']['predicted_ms'].get(key))} | "
                     f"{note} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = result["dense"]
    fig, ax = plt.subplots(figsize=(8, 5))
    est = [e for e in result["estimates"] if e["predicted_ms"] and e["holdout_top1"] is not None]
    ax.scatter([dense["predicted_ms"] / e["predicted_ms"] for e in est], [100 * e["holdout_top1"] for e in est],
               s=10, c=[e["epochs"] for e in est], cmap="viridis", alpha=0.6, label="estimates (held-out, predicted)")
    front = result["front"]
    ax.plot([p["measured"]["speedup_cpu"] for p in front], [100 * p["measured"]["top1"] for p in front if
                                                           p["measured"]["top1"] is not None] or [0] * len(front),
            "o-", color="tab:red", label="front, measured (test, cpu-clock speedup)")
    ax.axhline(100 * (dense["measured"]["top1"] or dense["holdout_top1"]), color="grey", lw=0.8, ls="--",
               label="dense (test)")
    ax.set(xlabel="speedup over dense fp32", ylabel="top-1 %", title=f"{result['model']}: {result['goal']}")
    shown = [100 * p["measured"]["top1"] for p in front if p["measured"]["top1"] is not None]
    floor = min(shown, default=50.0) - 5
    hidden = sum(1 for e in est if 100 * e["holdout_top1"] < floor)
    if hidden:  # pruned twins before fine-tuning sit near chance: they would flatten everything else
        ax.set_ylim(bottom=floor)
        ax.text(0.01, 0.01, f"{hidden} estimate(s) below {floor:.0f} % not shown (pruned, before fine-tuning)",
                transform=ax.transAxes, fontsize=7, color="grey")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
