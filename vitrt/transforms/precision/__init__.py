"""Precision typing: the float graph becomes FP16 (TensorRT 11 takes precision only from the graph), with
LayerNorm and Softmax kept in FP32.

    plan.py        PrecisionPlan: dtype and the ops kept in fp32
    graph_pass.py  Fp16Pass: retypes tensors and constants, Casts around the kept ops
    twin.py        fp16_twin: the same on the torch twin
"""

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
