"""What a low-rank compile adds to OUT: the manifest's ``lowrank`` section and the plan (``lowrank_plan.json`` with
its factors in ``lowrank_plan.npz``), which ``--lowrank-plan`` applies again."""

from __future__ import annotations

from vitrt.transforms.base import ReportContext, StageReport
from vitrt.transforms.lowrank.plan import LowRankPlan


def report(plan: LowRankPlan, ctx: ReportContext) -> StageReport:
    section = {**plan.summary(), "align": plan.align, "meta": dict(plan.meta),
               "layers": [{"name": layer.name, "k": layer.k, "n": layer.n, "rank": layer.rank,
                           "energy": round(layer.energy, 6), **({"reason": layer.reason} if layer.reason else {})}
                          for layer in plan.layers]}
    return StageReport(section, {"lowrank_plan.json": plan.save})
