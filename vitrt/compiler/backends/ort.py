"""ONNX Runtime on CPU: the embedded default backend.

The artifact (``model.ort.onnx``) is the model after ONNX Runtime's extended graph optimisations (MatMul+Add
→ Gemm, GELU / LayerNorm / attention-scale fusions), saved so that loading it needs no re-optimisation and
so that a person can see what actually runs. Per-block latency comes from ONNX Runtime's own profiler; fused
nodes whose generated names carry no canonical name are attributed through the data flow to the block of
the node that produces their input.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx

from vitrt.compiler.backends.base import Backend, BuildOptions, Runner, canonical_group


def cpu_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model} ({os.cpu_count()} threads)"


LEVELS = ("basic", "extended", "all")


def ort_session(model, *, threads: int | None = None, level: str = "all", optimized_path: Path | None = None,
                profile_prefix: str | None = None):
    """The one way vitrt opens an ONNX Runtime CPU session.

    ``model``: an ``onnx.ModelProto``, serialized bytes or a path. ``level``: graph optimisations (basic for
    verification, extended when writing the backend artifact, all for running it). Optimisers that would
    defeat explicit quantization are disabled for quantized graphs (:func:`disabled_optimizers`).
    """
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"unknown ONNX Runtime optimisation level '{level}'")
    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.log_severity_level = 3
    # ONNX Runtime fuses an int4 weight's DequantizeLinear + MatMul into MatMulNBits and, by default (accuracy level
    # 4), quantizes the activations to int8 inside it: a different function from the int4-weight / fp32-activation
    # graph --verify checks (0.03 on the digits logits). Level 0 keeps the activations fp32: what was verified ships.
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if isinstance(model, onnx.ModelProto):
        proto, source = model, model.SerializeToString()
    elif isinstance(model, bytes):
        proto, source = onnx.load_from_string(model), model
    else:
        from vitrt.compiler.onnx_file import read_onnx

        proto, source = read_onnx(model), str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(proto))


def disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """ONNX Runtime rewrites that defeat explicit quantization.

    MatMulAddFusion (level 1) turns ``DequantizeLinear -> MatMul -> Add(bias)`` into a float Gemm before the
    QDQ fusions (level 2) see it, so the integer kernel (MatMulIntegerToFloat) is never chosen: off for graphs
    with integer Q/DQ. The CPU provider has no float8 kernels: QDQ propagation would move FP8 Q/DQ across
    Transpose / Reshape and the QDQ fusions would build MatMulIntegerToFloat on float8 inputs (either fails to
    load), so graphs with float8 initializers keep their Q/DQ as written (run as float emulation).
    """
    if any(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in model.graph.initializer):
        return ["QDQPropagationTransformer", "QDQSelectorActionTransformer"]
    if any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        return ["MatMulAddFusion"]
    return []


class OrtBackend(Backend):
    name = "ort"
    artifact_name = "model.ort.onnx"

    def build(self, onnx_path: Path, out_dir: Path, options: BuildOptions, log=None) -> Path:
        artifact = Path(out_dir) / self.artifact_name
        ort_session(onnx_path, threads=options.threads, level="extended", optimized_path=artifact)
        return artifact

    def load(self, artifact: Path, options: BuildOptions) -> "OrtRunner":
        return OrtRunner(Path(artifact), options, self.device_name())

    def device_name(self) -> str:
        return cpu_name()


class OrtRunner(Runner):
    backend = "ort"

    def __init__(self, artifact: Path, options: BuildOptions, device: str):
        self._artifact, self.options, self.device = artifact, options, device
        self.session = ort_session(artifact, threads=options.threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self._batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self._groups: dict[str, str] | None = None

    @property
    def batch(self) -> int | None:
        return self._batch

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    def layer_times_ms(self, images: np.ndarray, iterations: int) -> dict[str, float]:
        # The profile goes to a temporary directory, never beside the artifact or into the working directory.
        with tempfile.TemporaryDirectory(prefix="vitrt-ort-profile-") as tmp:
            session = ort_session(self._artifact, threads=self.options.threads,
                                  profile_prefix=str(Path(tmp) / "profile"))
            return _profiled_times(session, self.input_name, images, iterations)

    def group_of(self, layer: str) -> str | None:
        if self._groups is None:
            self._groups = dataflow_groups(onnx.load(str(self._artifact), load_external_data=False))
        return self._groups.get(layer) or canonical_group(layer)


def _profiled_times(session, input_name: str, images: np.ndarray, iterations: int) -> dict[str, float]:
    feed = {input_name: np.ascontiguousarray(images, dtype=np.float32)}
    for _ in range(iterations + 1):  # the first run warms up; medians below make it irrelevant
        session.run(None, feed)
    profile = Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink(missing_ok=True)
    samples: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            samples.setdefault(event["name"][: -len("_kernel_time")], []).append(event["dur"] / 1000.0)
    return {node: float(np.median(ms)) for node, ms in samples.items()}


def dataflow_groups(model: onnx.ModelProto) -> dict[str, str]:
    """Canonical group of every node: by its own name, else by the producer of its first computed input."""
    producer_group: dict[str, str] = {}
    groups: dict[str, str] = {}
    for node in model.graph.node:  # saved models are topologically sorted
        group = canonical_group(node.name)
        if group is None:
            group = next((producer_group[i] for i in node.input if i in producer_group), None)
        if group is not None:
            groups[node.name] = group
            for out in node.output:
                producer_group[out] = group
    return groups
