"""The precision transform as one row of the compile's STAGES table (vitrt.pipeline.stages)."""

from __future__ import annotations

from vitrt.transforms.base import ReportContext, StageReport, Transform
from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
from vitrt.transforms.precision.plan import DTYPES, PrecisionPlan, plan_for


def plan(twin, ctx, options) -> PrecisionPlan:
    """Typing to the target's activation type at the target's opset (no stage that runs before typing raises the
    opset when the activations are typed: Q/DQ raises it only for int8 / fp8 / int4w, and int4w's W4A16 is fp16,
    which every op's schema has)."""
    return plan_for(ctx.target.activation_dtype, ctx.target.opset)


def report(plan: PrecisionPlan, ctx: ReportContext) -> StageReport:
    return StageReport(plan.report())


TRANSFORM = Transform(name="precision", manifest_key="precision", section=None,
                      enabled=lambda options, target: target.activation_dtype in DTYPES, plan=plan,
                      graph_pass=PrecisionTypingPass, report=report)
