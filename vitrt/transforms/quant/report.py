"""What a quantized compile adds to OUT: the manifest's ``quantization`` section and ``scale_table.json``."""

from __future__ import annotations

from vitrt.transforms.base import ReportContext, StageReport
from vitrt.transforms.quant.graph_pass import MIN_OPSET
from vitrt.transforms.quant.plan import QuantPlan

# Why int4w's float activations have the type they have, per type (the target decides:
# vitrt.compiler.target.TargetConfig.activation_dtype).
INT4_ACTIVATIONS_WHY = {
    "fp16": "W4A16 for TensorRT: block-wise INT4 weights with FP16 activations (LayerNorm in FP32) is "
            "TensorRT's and Model Optimizer's INT4 weight-only scheme",
    "fp32": "FP32 activations for ONNX Runtime's CPU provider, which runs this form faster than W4A16 "
            "(benchmarks/results/quantization.md, 'INT4 activations')",
}


def report(plan: QuantPlan, ctx: ReportContext) -> StageReport:
    dtypes = {e.dtype for e in plan.table.entries.values()}
    opset = max([ctx.target.opset] + [MIN_OPSET[d] for d in dtypes])
    section = plan.report(opset)
    if plan.precision == "int4w":
        activations = ctx.target.activation_dtype
        section.update(activations=activations, activations_why=INT4_ACTIVATIONS_WHY[activations])
    return StageReport(section, {"scale_table.json": plan.table.save})
