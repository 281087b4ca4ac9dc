"""The TensorRT lint's rules as data: each rule's id, severity, category, what it checks and where that is written.

Severity: an ``error`` is something TensorRT's ONNX parser or builder refuses (or, for Q/DQ, a form TensorRT does
not run as quantized); a ``warning`` is a graph TensorRT builds but runs slower than it could (a fusion it cannot
make). Categories: ``operator`` (the ONNX-TensorRT parser's operator list and per-op restrictions), ``qdq``
(explicit quantization: NvInfer.h and the quantization guide; the Q/DQ pass's postcondition) and ``fusion``.

The checks themselves are in :mod:`vitrt.compiler.trt_lint.ops`, :mod:`~vitrt.compiler.trt_lint.qdq` and
:mod:`~vitrt.compiler.trt_lint.fusion`, one function per rule id; the operator list
and the per-op restrictions they read are data in :mod:`vitrt.compiler.trt_lint.operators`.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING = "error", "warning"
OPERATOR, QDQ, FUSION = "operator", "qdq", "fusion"


@dataclass(frozen=True)
class Source:
    """Where a rule is written down: the document, the place in it, and the TensorRT versions it was read from."""

    document: str
    section: str
    tensorrt: str
    url: str

    def to_dict(self) -> dict:
        return {"document": self.document, "section": self.section, "tensorrt": self.tensorrt, "url": self.url}

    def __str__(self) -> str:
        return f"{self.document}, {self.section} (TensorRT {self.tensorrt})"


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    category: str
    summary: str
    source: Source


OPERATORS_MD = Source("ONNX-TensorRT parser operator list (onnx/onnx-tensorrt docs/operators.md)",
                      "Operator Support Matrix", "10.15: opset 9-24 (10.0/10.1: opset 9-20)",
                      "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md")
NVINFER_QDQ = Source("NvInfer.h", "class IQuantizeLayer / class IDequantizeLayer", "10.13, 11.1",
                     "https://github.com/NVIDIA/TensorRT/blob/main/include/NvInfer.h")
NVINFER_GATHER = Source("NvInfer.h", "class IGatherLayer, GatherMode::kND and setNbElementWiseDims", "10.13, 11.1",
                        "https://github.com/NVIDIA/TensorRT/blob/main/include/NvInfer.h")
QUANT_SCHEMES = Source("TensorRT developer guide, Working with Quantized Types", "Quantization Schemes (INT4: per-block "
                       "scales, block sizes {64, 128}, block dimension one of the last two; INT4 weights only)",
                       "10.x latest, 11.0",
                       "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-schemes.html")
ONNX_TRT_INT4 = Source("ONNX-TensorRT parser (onnx/onnx-tensorrt onnxOpImporters.cpp, QuantizeLinear / "
                       "DequantizeLinear import)", "'INT4 requires an even last-dimension due to packing "
                       "restrictions'", "10.1 (later releases document odd-count packing; not assumed here)",
                       "https://github.com/onnx/onnx-tensorrt/blob/release/10.1-GA/onnxOpImporters.cpp")
QDQ_PLACEMENT = Source("TensorRT developer guide, Working with Quantized Types", "Q/DQ layer-placement recommendations "
                       "(quantize the inputs of weighted operations; activations per tensor, weights per output "
                       "channel)", "10.x, 11.0",
                       "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html")
ONNX_QDQ = Source("ONNX operator specification", "QuantizeLinear / DequantizeLinear since-versions (per-axis 13, "
                  "float8 19, int4 and block_size 21); y_scale and y_zero_point have the same shape", "all",
                  "https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html")
FUSED_ATTENTION = Source("TensorRT developer guide, Working with Transformers", "Fused Attention: Q or K multiplied "
                         "with the attention scale before the first batched MatMul", "10.14+ latest, 11.0",
                         "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/"
                         "transformers-fused-attention.html")
MHA_FUSION = Source("TensorRT developer guide, Multi-Head Attention Fusion", "the inputs of both batched MatMuls are "
                    "FP16, BF16 or INT8 (Q/DQ before the first BMM and after the Softmax); the pattern is "
                    "BMM1 -> [scale, mask] -> Softmax -> BMM2", "8.6-10.x",
                    "https://docs.nvidia.com/deeplearning/tensorrt/developer-guide/index.html#mha-fusion")
W4A16 = Source("TensorRT Model Optimizer support matrix", "W4A16: block-wise INT4 weights, FP16 activations "
               "(TensorRT deployment)", "10.x",
               "https://nvidia.github.io/Model-Optimizer/guides/0_support_matrix.html")

_RULES = (
    # --- the parser's operator list and per-op restrictions ----------------------------------------------------
    Rule("opset-range", ERROR, OPERATOR, "the default-domain opset is in the parser's documented range", OPERATORS_MD),
    Rule("op-unsupported", ERROR, OPERATOR, "every node is an ONNX operator the parser supports (custom domains need "
         "a plugin)", OPERATORS_MD),
    Rule("input-constant", ERROR, OPERATOR, "inputs the parser needs at build time are initializers / Constant nodes "
         "(Reduce* axes, Squeeze / Unsqueeze axes, TopK K, CumSum axis, OneHot depth, Dropout training_mode)",
         OPERATORS_MD),
    Rule("attribute-value", ERROR, OPERATOR, "attributes have a value the parser supports (TopK sorted = 1, ScatterND "
         "reduction none, LSTM input_forget / layout 0, Resize antialias 0, pooling dilations all ones)",
         OPERATORS_MD),
    Rule("topk-k", ERROR, OPERATOR, "TopK's K is a constant below 3840", OPERATORS_MD),
    Rule("output-unsupported", ERROR, OPERATOR, "no optional output the parser does not produce is used "
         "(LayerNormalization: only Y; MaxPool: no Indices)", OPERATORS_MD),
    Rule("int4-packing", ERROR, OPERATOR, "an INT4 weight has an even last dimension (the parser packs two values "
         "per byte; a parser limit, not the Q/DQ form, so not the Q/DQ pass's postcondition): a head with an odd "
         "number of classes stays float (--quant-exclude head)", ONNX_TRT_INT4),
    Rule("dropout-training", ERROR, OPERATOR, "Dropout's training_mode evaluates to False", OPERATORS_MD),
    Rule("gathernd-batch-dims", ERROR, OPERATOR, "GatherND: 0 <= batch_dims < rank(data), the first batch_dims "
         "dims of data and indices equal (no broadcast), the last dim of indices static", NVINFER_GATHER),
    # --- explicit quantization -----------------------------------------------------------------------------------
    Rule("qdq-opset", ERROR, QDQ, "the opset has the Q/DQ form used (int8 13, float8 19, int4 / block_size 21)",
         ONNX_QDQ),
    Rule("qdq-scale", ERROR, QDQ, "every scale is a constant with finite values > 0 and rank <= 2", NVINFER_QDQ),
    Rule("qdq-zero-point", ERROR, QDQ, "every zero point is a constant of zeros with the scale's shape", NVINFER_QDQ),
    Rule("qdq-types", ERROR, QDQ, "quantized types are INT8, FP8 E4M3 or INT4 (a QuantizeLinear without zero point "
         "makes UINT8); DequantizeLinear outputs (its scale type) FLOAT, FLOAT16 or BFLOAT16", NVINFER_QDQ),
    Rule("qdq-per-channel", ERROR, QDQ, "per-channel scales only on constants (weights), one per element of the "
         "quantization axis; activations per tensor", NVINFER_QDQ),
    Rule("qdq-block", ERROR, QDQ, "block quantization only for INT4 / FP8 / FP4 weights, along one of the last two "
         "dims, scale of the input's rank with that dim divided by the block", NVINFER_QDQ),
    Rule("qdq-int4", ERROR, QDQ, "INT4 is weight-only (a DequantizeLinear of a constant) and block-wise with block "
         "size 64 or 128", QUANT_SCHEMES),
    Rule("qdq-pairs", ERROR, QDQ, "every QuantizeLinear feeds only DequantizeLinear nodes with the same scale and "
         "zero point", NVINFER_QDQ),
    Rule("qdq-weight-axis", ERROR, QDQ, "a per-channel weight is quantized per output channel: MatMul B[K, N] along "
         "axis 1, Conv W[O, C, kh, kw] along axis 0", QDQ_PLACEMENT),
    Rule("qdq-placement", WARNING, QDQ, "Q/DQ sit on the inputs of MatMul / Gemm / Conv, never on their outputs (or "
         "bias Add); LayerNormalization, Softmax and Erf take no dequantized input", QDQ_PLACEMENT),
    # --- fusions TensorRT can only make on the right pattern --------------------------------------------------------
    Rule("fusion-attention-scale", WARNING, FUSION, "the attention scale is applied to Q or K before the first "
         "attention MatMul, not to its output", FUSED_ATTENTION),
    Rule("fusion-attention-cast", WARNING, FUSION, "no Cast between the first attention MatMul and the second "
         "(both take FP16 / BF16 / INT8 / FP8 inputs)", MHA_FUSION),
    Rule("fusion-int4-activations", WARNING, FUSION, "INT4 weights meet FP16 / BF16 activations (W4A16), not FP32",
         W4A16),
)

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}
QDQ_RULES = tuple(rule.id for rule in _RULES if rule.category == QDQ)
