"""The ONNX-TensorRT parser's operator list and per-op restrictions, as data.

Read from ``docs/operators.md`` of onnx/onnx-tensorrt in its TensorRT 10.15 release ("TensorRT 10.15 supports
operators in the inclusive range of opset 9 to opset 24"; the 10.0 and 10.1 releases said opset 9 to 20). Only
the facts are kept: which operators the parser imports (``Y``), which it refuses (``N``) and the restrictions
of its last column that a graph can violate. An operator the list does not name at all is unknown to the
parser and treated as unsupported. Ops of a non-default domain need a TensorRT plugin.
"""

from __future__ import annotations

OPSET_RANGE = (9, 24)

SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

UNSUPPORTED = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")

# op -> ((input index, input name, the list's wording), ...): inputs that must be known when the engine is built.
CONSTANT_INPUTS: dict[str, tuple[tuple[int, str, str], ...]] = {
    **{op: ((1, "axes", "`axes` must be an initializer"),) for op in _REDUCE},
    "Squeeze": ((1, "axes", "`axes` must be resolvable to a constant"),),
    "Unsqueeze": ((1, "axes", "`axes` must be resolvable to a constant"),),
    "TopK": ((1, "K", "`K` input must be less than 3840 (a constant)"),),
    "CumSum": ((1, "axis", "`axis` must be a build-time constant"),),
    "OneHot": ((1, "depth", "`depth` must be a build-time constant"),),
    "Dropout": ((2, "training_mode", "`is_training` must be an initializer and evaluate to False"),),
    "STFT": ((1, "frame_step", "`frame_step` and `window` must be an initializer"),
             (2, "window", "`frame_step` and `window` must be an initializer")),
}

# op -> {attribute: (value when absent, allowed value, the list's wording)}
ATTRIBUTE_VALUES: dict[str, dict[str, tuple[object, object, str]]] = {
    "TopK": {"sorted": (1, 1, "`sorted` must be 1")},
    "ScatterND": {"reduction": ("none", "none", "`reduction` other than `none` is not supported")},
    "LSTM": {"input_forget": (0, 0, "`input_forget` attribute must be 0"),
             "layout": (0, 0, "`layout` attribute must be 0")},
    "Resize": {"antialias": (0, 0, "Antialiasing is not supported"),
               "keep_aspect_ratio_policy": ("stretch", "stretch", "Supported aspect ratio policy: `stretch`")},
}
ALL_ONES_ATTRIBUTES: dict[str, tuple[str, str]] = {  # op -> (attribute, the list's wording)
    op: ("dilations", "`dilations` must be empty or all ones") for op in ("AveragePool", "MaxPool", "LpPool")
}

# op -> (number of outputs the parser produces, the list's wording)
OUTPUTS: dict[str, tuple[int, str]] = {
    "LayerNormalization": (1, "Only the first output `Y` is supported"),
    "MaxPool": (1, "`Indices` output tensor unsupported"),
}

TOPK_MAX_K = 3840  # "`K` input must be less than 3840"
