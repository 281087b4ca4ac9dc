"""What a quantized compile adds to OUT: the manifest's ``quantization`` section and ``scale_table.json``."""

from __future__ import annotations

from vitrt.compiler.graph import typed_qdq_opset
from vitrt.transforms.base import ReportContext, StageReport
from vitrt.transforms.quant.graph_pass import MIN_OPSET
from vitrt.transforms.quant.plan import QuantPlan

# Why the float tensors between the quantized ops have the type they have (the target decides:
# vitrt.compiler.target.TargetConfig.activation_dtype), per (weight-only?, type).
ACTIVATIONS_WHY = {
    (True, "fp16"): "W4A16 for TensorRT: block-wise INT4 weights with FP16 activations (LayerNorm in FP32) is "
                    "TensorRT's and Model Optimizer's INT4 weight-only scheme",
    (True, "fp32"): "FP32 activations for ONNX Runtime's CPU provider, which runs this form faster than W4A16 "
                    "(benchmarks/results/quantization.md, 'INT4 activations')",
    (False, "fp16"): "FP16 between the quantized layers for TensorRT: a strongly typed engine runs each layer in "
                     "its graph's type, so LayerNorm (kept FP32), GELU, Softmax, residual Adds and any layer left "
                     "unquantized would otherwise run in FP32 (Model Optimizer's high_precision_dtype default); "
                     "the Q/DQ scales are FP16 too, hence opset >= 19",
    (False, "fp32"): "FP32 between the quantized layers for ONNX Runtime's CPU provider (its quantized kernels "
                     "take FP32 scales and the CPU has no faster FP16 arithmetic)",
}


def report(plan: QuantPlan, ctx: ReportContext) -> StageReport:
    dtypes = {e.dtype for e in plan.table.entries.values()}
    activations = ctx.target.activation_dtype
    opset = max([ctx.target.opset] + [MIN_OPSET[d] for d in dtypes])
    if activations != "fp32":  # the precision pass types the Q/DQ scales too
        opset = typed_qdq_opset(activations, opset)
    section = plan.report(opset)
    section.update(activations=activations, activations_why=ACTIVATIONS_WHY[plan.precision == "int4w", activations])
    return StageReport(section, {"scale_table.json": plan.table.save})
