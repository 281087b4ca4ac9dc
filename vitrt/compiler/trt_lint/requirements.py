"""What a graph asks of the GPU machine that builds its engine, beyond TensorRT 10.0 on any GPU (``--no-build``
writes it into the manifest's ``engine_build.requires``). The facts come from the documents the lint cites
(:mod:`vitrt.compiler.trt_lint.rules`) and TensorRT's release notes."""

from __future__ import annotations

import onnx
from onnx import TensorProto

from vitrt.compiler.backends.base import BuildOptions
from vitrt.compiler.lower import model_opset

PARSER_OPSETS = {"10.0": 20, "10.1": 20, "10.15": 24}  # onnx-tensorrt docs/operators.md: opset 9 to N
FP8_COMPUTE_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) or newer
SPARSE_COMPUTE_CAPABILITY = (8, 0)  # 2:4 sparse tensor cores: Ampere or newer


def tensorrt_requirements(model: onnx.ModelProto, options: BuildOptions) -> list[str]:
    """What building ``model`` with ``options`` needs beyond TensorRT 10.0 on any GPU, one
    line each: a newer parser for an opset above 20, an FP8-capable GPU for FP8 Q/DQ, Ampere or newer for 2:4."""
    needs = []
    opset = model_opset(model, 0)
    if opset > PARSER_OPSETS["10.0"]:
        needs.append(f"ONNX opset {opset}: TensorRT 10.0/10.1's parser documents opsets up to "
                     f"{PARSER_OPSETS['10.1']}, 10.15's up to {PARSER_OPSETS['10.15']}: use a release after 10.1")
    fp8 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT8E4M3FN}
    scales = {t.name: t.dims for t in model.graph.initializer}
    fp8_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and
                 (len(n.input) > 2 and n.input[2] in fp8 or n.input[0] in fp8 or
                  any(a.name == "output_dtype" and a.i == TensorProto.FLOAT8E4M3FN for a in n.attribute))]
    if fp8_nodes:
        needs.append("FP8 Q/DQ: a GPU of compute capability >= %d.%d (Ada, Hopper or newer)" % FP8_COMPUTE_CAPABILITY)
    if any(n.input[0] in fp8 and list(scales.get(n.input[1], [])) not in ([], [1]) for n in fp8_nodes):
        needs.append("FP8 weights with per-channel scales: TensorRT 10.6 added per-channel scaling for FP8 GEMMs "
                     "on Hopper GPUs (release notes): build there with TensorRT >= 10.6")
    if options.sparse_weights:
        needs.append("2:4 sparse weights: sparse tensor cores need compute capability >= %d.%d (Ampere or newer); "
                     "older GPUs build the dense engine" % SPARSE_COMPUTE_CAPABILITY)
    return needs
