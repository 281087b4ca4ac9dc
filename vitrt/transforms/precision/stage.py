"""The precision transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import ReportContext, StageReport, Transform
from vitrt.transforms.precision.graph_pass import Fp16Pass
from vitrt.transforms.precision.plan import PrecisionPlan


def plan(twin, ctx, options) -> PrecisionPlan:
    return PrecisionPlan(ctx.target.precision)


def report(plan: PrecisionPlan, ctx: ReportContext) -> StageReport:
    return StageReport(plan.report())


TRANSFORM = Transform(name="precision", manifest_key="precision", section=None,
                      enabled=lambda options, target: target.precision == "fp16", plan=plan, graph_pass=Fp16Pass,
                      report=report)
