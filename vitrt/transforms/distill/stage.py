"""The distill transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import ReportContext, StageReport, Transform
from vitrt.transforms.distill import planner
from vitrt.transforms.distill.graph_pass import DistillPass


def report(plan, ctx: ReportContext) -> StageReport:
    return StageReport(dict(plan.record))


TRANSFORM = Transform(name="distill", manifest_key="distillation", section="distill",
                      enabled=lambda options, target: options.enabled, plan=planner.plan, graph_pass=DistillPass,
                      report=report)
