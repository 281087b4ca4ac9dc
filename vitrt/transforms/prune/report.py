"""What a pruning compile adds to OUT: the manifest section, the plan as JSON (``pruning_plan.json``, with
``pruning_plan.npz`` beside it when the plan carries fine-tuned weights) and the per-block dims plot."""

from __future__ import annotations

from pathlib import Path

from vitrt.transforms.base import Finished, ReportContext, StageReport
from vitrt.transforms.prune.plan import PruningPlan
from vitrt.transforms.prune.planner import report_fields


def plot_dims(plan: PruningPlan, path: Path, title: str = "") -> None:
    """Per-block dims before (outline) and after (bars), like NViT's Fig. 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("heads", "qk", "v", "mlp")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    blocks = range(plan.depth)
    after = plan.block_dims()
    for ax, kind in zip(axes, kinds):
        before = [getattr(b, kind) for b in plan.original_blocks]
        ax.bar(blocks, before, color="none", edgecolor="grey", label="dense")
        ax.bar(blocks, [d[kind] for d in after], color="tab:blue", alpha=0.8, label="pruned")
        ax.set_title(kind.upper() + (" per head" if kind in ("qk", "v") else ""))
        ax.set_xlabel("block")
        ax.set_xticks(list(blocks))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}  EMB {len(plan.emb)}/{plan.original_emb}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(plan: PruningPlan, ctx: ReportContext) -> StageReport:
    return StageReport(report_fields(plan), {"pruning_plan.json": plan.save,
                                             "pruning_dims.png": lambda path: plot_dims(plan, path, ctx.model)})


def finish(plan: PruningPlan, section: dict, finished: Finished) -> dict:
    """With --bench: the dense model's latency, measured side by side with the pruned one."""
    versus = finished.versus_dense
    if versus is not None:
        stages = versus["stages"]
        section["dense_latency"] = {"median_ms": versus["dense_median_ms"], "speedup": versus["speedup"],
                                    "scope": "pruning alone" if stages == ["prune"] else
                                             f"the whole compile ({', '.join(stages)}) against the dense model",
                                    "method": versus["method"]}
    return {}
