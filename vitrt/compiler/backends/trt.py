"""TensorRT 10 / 11 backend: strongly typed network from the ONNX parser, plan + inspector JSON, IProfiler.

Kept small and strictly on the documented Python API, because no machine here has TensorRT to run it:
``Builder.create_network`` (STRONGLY_TYPED where the flag exists; TensorRT 11 networks always are),
``OnnxParser.parse_from_file``, ``IBuilderConfig`` (``SPARSE_WEIGHTS``, timing cache, ``DETAILED`` profiling
verbosity, workspace pool), ``build_serialized_network``, ``Runtime.deserialize_cuda_engine``,
``IEngineInspector`` (JSON), ``IExecutionContext.set_tensor_address`` + ``execute_async_v3`` and an
``IProfiler`` for per-layer times. Device buffers come from torch. Precision is never set by builder flags
(TensorRT 11 removed them): it is carried by the graph (casts, Q/DQ).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import BackendUnavailableError, VitrtError
from vitrt.compiler.backends.base import Backend, BuildOptions, Runner

# (min, opt, max) batch of the optimisation profile a dynamic-batch engine is built with; exporters read the max.
DYNAMIC_BATCH_PROFILE = (1, 8, 64)

INSTALL_HINT = ("TensorRT is not installed: install it with pip install 'vitrt[trt]' from NVIDIA's package index "
                "on a machine with an NVIDIA GPU, or use --backend ort")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError(INSTALL_HINT) from None
    if not hasattr(trt, "Builder"):  # type stubs alone (tensorrt-stubs) import as an empty namespace package
        raise BackendUnavailableError(INSTALL_HINT)
    return trt


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def sparse_layers(inspector_json: dict) -> list[str]:
    """Names of the layers whose chosen tactic is a sparse kernel (from the DETAILED inspector JSON)."""
    layers = inspector_json.get("Layers", [])
    return [layer.get("Name", "?") for layer in layers if isinstance(layer, dict)
            and "sparse" in str(layer.get("TacticName", "")).lower()]


class TrtBackend(Backend):
    name = "trt"
    artifact_name = "model.plan"

    def __init__(self):
        self.trt = import_tensorrt()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)

    def device_name(self) -> str:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"

    def build(self, onnx_path: Path, out_dir: Path, options: BuildOptions, log=None) -> Path:
        trt = self.trt
        builder = trt.Builder(self.logger)
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise VitrtError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if options.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
        if options.sparse_weights:
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        self._add_dynamic_batch_profile(builder, network, config)
        cache_path = Path(options.timing_cache) if options.timing_cache else None
        cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise VitrtError("TensorRT failed to build the engine (see the TensorRT log above)")
        artifact = Path(out_dir) / self.artifact_name
        _write_atomic(artifact, bytes(plan))
        if cache_path is not None:
            _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(bytes(plan))
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        _write_atomic(Path(out_dir) / "engine_inspector.json", info.encode())
        return artifact

    def _add_dynamic_batch_profile(self, builder, network, config) -> None:
        """A dynamic batch dim (-1) needs an optimisation profile: batch DYNAMIC_BATCH_PROFILE (1..64, opt 8)."""
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if network.get_input(i).shape[0] == -1]
        if not dynamic:
            return
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, *((batch, *rest) for batch in DYNAMIC_BATCH_PROFILE))
        config.add_optimization_profile(profile)

    def load(self, artifact: Path, options: BuildOptions) -> "TrtRunner":
        return TrtRunner(self, Path(artifact))


class TrtRunner(Runner):
    backend = "trt"

    def __init__(self, backend: TrtBackend, artifact: Path):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("the trt backend needs a CUDA device and torch with CUDA")
        trt = backend.trt
        self.trt, self.torch, self.device = trt, torch, backend.device_name()
        self.engine = trt.Runtime(backend.logger).deserialize_cuda_engine(Path(artifact).read_bytes())
        if self.engine is None:
            raise VitrtError(f"TensorRT could not deserialize '{artifact}' (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        first = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        self._batch = None if first[0] == -1 else first[0]
        self.stream = torch.cuda.Stream()

    @property
    def batch(self) -> int | None:
        return self._batch

    def _torch_dtype(self, name: str):
        return self.torch.from_numpy(np.empty(0, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def infer(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(images)).to("cuda", self._torch_dtype(self.inputs[0]))
        self.context.set_input_shape(self.inputs[0], tuple(x.shape))
        self.context.set_tensor_address(self.inputs[0], x.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise VitrtError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return outputs[self.outputs[0]].float().cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def layer_times_ms(self, images: np.ndarray, iterations: int) -> dict[str, float]:
        trt = self.trt

        class _Profiler(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)
                self.samples: dict[str, list[float]] = {}

            def report_layer_time(self, layer_name, ms):
                self.samples.setdefault(layer_name, []).append(ms)

        profiler = _Profiler()
        # The profiler stays attached (per-layer timing is the last thing a benchmark does).
        self.context.profiler = profiler
        for _ in range(iterations):
            self.infer(images)
        return {name: float(np.median(ms)) for name, ms in profiler.samples.items()}

