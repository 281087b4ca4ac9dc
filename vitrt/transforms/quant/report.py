"""What a quantized compile adds to OUT: the manifest's ``quantization`` section and ``scale_table.json``."""

from __future__ import annotations

from vitrt.transforms.base import ReportContext, StageReport
from vitrt.transforms.quant.graph_pass import MIN_OPSET
from vitrt.transforms.quant.plan import QuantPlan


def report(plan: QuantPlan, ctx: ReportContext) -> StageReport:
    dtypes = {e.dtype for e in plan.table.entries.values()}
    opset = max([ctx.target.opset] + [MIN_OPSET[d] for d in dtypes])
    return StageReport(plan.report(opset), {"scale_table.json": plan.table.save})
