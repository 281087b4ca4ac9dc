"""TensorRT 10 / 11 backend: a strongly typed network from the ONNX parser, the plan, the inspector's JSON.

No machine here has TensorRT, so this code is kept small, type-checked with mypy against ``tensorrt-stubs`` 10.13
(``tests/test_trt_typecheck.py``) and written strictly on the documented Python API. Precision is never set
by builder flags (TensorRT 11 removed them): the graph carries it (casts, Q/DQ). Every call that reports
failure by its return value is checked and turned into a one-line :class:`VitrtError`. The runner is in
:mod:`vitrt.compiler.backends.trt_runner`.

Every TensorRT call the two modules make, and the TensorRT releases whose Python bindings define it (read from
``python/src`` of NVIDIA/TensorRT at the tags v10.0.0, v10.13.0 and v11.1; "10.0-11.1" means all three):

=======================================================================  ==========  ==========================
call                                                                     releases    failure is reported by
=======================================================================  ==========  ==========================
``Logger(Logger.WARNING)``                                               10.0-11.1
``Builder(logger)``, ``Builder.create_network(flags)``                   10.0-11.1
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``                         10.0-11.1   (11.x: always on)
``INetworkDefinition.num_inputs`` / ``get_input(i)``; ``ITensor.name`` /
``ITensor.shape``                                                        10.0-11.1
``OnnxParser(network, logger)``, ``parse_from_file(path)``               10.0-11.1   bool
``OnnxParser.num_errors`` / ``get_error(i)``                             10.0-11.1
``Builder.create_builder_config()``                                      10.0-11.1
``IBuilderConfig.profiling_verbosity = ProfilingVerbosity.DETAILED``     10.0-11.1
``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``    10.0-11.1
``IBuilderConfig.set_flag(BuilderFlag.SPARSE_WEIGHTS)``                  10.0-11.1
``Builder.create_optimization_profile()``                                10.0-11.1
``IOptimizationProfile.set_shape(name, min, opt, max)``, ``Dims(list)``  10.0-11.1   (raises)
``IBuilderConfig.add_optimization_profile(profile)``                     10.0-11.1   index, -1 on failure
``IBuilderConfig.create_timing_cache(bytes)``                            10.0-11.1   None (unreadable bytes)
``IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)``        10.0-11.1   bool
``IBuilderConfig.get_timing_cache()``, ``ITimingCache.serialize()``      10.0-11.1
``Builder.build_serialized_network(network, config)``                    10.0-11.1   None
``Runtime(logger)``, ``Runtime.deserialize_cuda_engine(bytes)``          10.0-11.1   None
``ICudaEngine.create_engine_inspector()``                                10.0-11.1
``EngineInspector.get_engine_information(LayerInformationFormat.JSON)``  10.0-11.1
``ICudaEngine.create_execution_context()``                               10.0-11.1   None
``ICudaEngine.num_io_tensors`` / ``get_tensor_name(i)`` /
``get_tensor_mode(name)`` / ``get_tensor_dtype(name)`` /
``get_tensor_shape(name)``; ``TensorIOMode.INPUT``                       10.0-11.1
``ICudaEngine.get_tensor_profile_shape(name, 0)``                        10.0-11.1
``DataType.{FLOAT, HALF, BF16, INT8, INT32, INT64, BOOL, UINT8, FP8}``   10.0-11.1
``IExecutionContext.set_input_shape(name, shape)``                       10.0-11.1   bool
``IExecutionContext.get_tensor_shape(name)``                             10.0-11.1
``IExecutionContext.set_tensor_address(name, ptr)``                      10.0-11.1   bool
``IExecutionContext.execute_async_v3(stream)``                           10.0-11.1   bool
``IExecutionContext.profiler = IProfiler | None``; ``IProfiler``
subclass with ``report_layer_time(name, ms)``                            10.0-11.1
=======================================================================  ==========  ==========================

Sparse tactics are read from the inspector's ``HasSparseWeights`` field (DETAILED verbosity), never guessed from
tactic names.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vitrt.compiler.backends.base import Backend, BuildOptions
from vitrt.compiler.backends.trt_runner import TrtRunner, dims
from vitrt.compiler.errors import BackendUnavailableError, VitrtError

if TYPE_CHECKING:  # the stubs type every call; at run time each method imports tensorrt itself (lazily)
    import tensorrt as trt

INSTALL_HINT = ("TensorRT is not installed: install it with pip install 'vitrt[trt]' from NVIDIA's package index "
                "on a machine with an NVIDIA GPU, or use --backend ort")


def tensorrt_available() -> bool:
    """True when the TensorRT runtime imports; its type stubs alone (``tensorrt-stubs``, a dev dependency) install an
    empty ``tensorrt`` namespace package, which does not count."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def require_tensorrt() -> None:
    """Raise the one-line install hint when the TensorRT runtime is missing."""
    if not tensorrt_available():
        raise BackendUnavailableError(INSTALL_HINT)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def sparse_layers(inspector_json: dict) -> list[str]:
    """Names of the layers the engine runs with sparse weights: the inspector's ``HasSparseWeights`` field
    (DETAILED profiling verbosity; layers that do not report it are not sparse-weight layers)."""
    layers = inspector_json.get("Layers", [])
    return [str(layer.get("Name", "?")) for layer in layers
            if isinstance(layer, dict) and str(layer.get("HasSparseWeights", 0)) in ("1", "True", "true")]


def trtexec_command(onnx_name: str, inputs: dict[str, list[int]], options: BuildOptions) -> str:
    """The trtexec command line that builds the engine :meth:`TrtBackend.build` would build from ``onnx_name``
    (for ``--no-build``: the engine is built on the GPU machine). ``inputs`` maps each graph input to its shape
    without the batch dimension. Flags as documented for trtexec in TensorRT 10 ("Command-Line Programs"):
    a strongly typed network (precision comes from the graph), 2:4 sparse tactics when the graph has them, the
    batch profile of a dynamic batch, the timing cache, and the layer information :func:`sparse_layers` reads."""
    flags = [f"--onnx={onnx_name}", "--stronglyTyped", "--saveEngine=model.plan", "--profilingVerbosity=detailed",
             "--exportLayerInfo=engine_inspector.json"]
    if options.sparse_weights:
        flags.append("--sparsity=enable")
    if options.batch_profile is not None:
        for flag, batch in zip(("--minShapes", "--optShapes", "--maxShapes"), options.batch_profile):
            flags.append(flag + "=" + ",".join(f"{name}:{'x'.join(map(str, [batch, *shape]))}"
                                               for name, shape in inputs.items()))
    if options.timing_cache is not None:  # absolute: the command runs after `cd OUT`
        flags.append(f"--timingCacheFile={shlex.quote(str(Path(options.timing_cache).absolute()))}")
    if options.workspace_mb:
        flags.append(f"--memPoolSize=workspace:{options.workspace_mb}M")
    return " ".join(["trtexec", *flags])


class TrtBackend(Backend):
    name = "trt"
    artifact_name = "model.plan"

    def __init__(self) -> None:
        require_tensorrt()
        import tensorrt as trt

        self.logger = trt.Logger(trt.Logger.WARNING)

    def device_name(self) -> str:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"

    def build(self, onnx_path: Path, out_dir: Path, options: BuildOptions, log=None) -> Path:
        import tensorrt as trt

        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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
        self._add_batch_profile(builder, network, config, options.batch_profile)
        cache_path = Path(options.timing_cache) if options.timing_cache else None
        cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)  # None for bytes it cannot read (TensorRT's samples check)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise VitrtError(f"TensorRT refused the timing cache '{cache_path}' (made by another TensorRT version or "
                             "GPU?): delete it or pass another --timing-cache")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise VitrtError("TensorRT failed to build the engine (see the TensorRT log above)")
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(bytes(plan))
        if engine is None:
            raise VitrtError("TensorRT could not deserialize the engine it has just built")
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        artifact = Path(out_dir) / self.artifact_name
        _write_atomic(artifact, bytes(plan))
        _write_atomic(Path(out_dir) / "engine_inspector.json", info.encode())
        if cache_path is not None:  # only now: the build succeeded and the cache holds its tactics
            _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        return artifact

    def _add_batch_profile(self, builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                           batch_profile: tuple[int, int, int] | None) -> None:
        """A dynamic batch dim (-1) needs an optimisation profile: (min, opt, max) batch from the target."""
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if dims(network.get_input(i).shape)[0] == -1]
        if not dynamic:
            return
        import tensorrt as trt

        if batch_profile is None:
            raise VitrtError("the graph has a dynamic batch dimension but no batch profile was given "
                             "(--dynamic-batch with --min-batch / --batch / --max-batch)")
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            rest = list(dims(tensor.shape)[1:])
            low, opt, high = ([b, *rest] for b in batch_profile)
            profile.set_shape(tensor.name, trt.Dims(low), trt.Dims(opt), trt.Dims(high))
        if config.add_optimization_profile(profile) < 0:
            raise VitrtError(f"TensorRT refused the batch profile min/opt/max = {batch_profile}")

    def load(self, artifact: Path, options: BuildOptions) -> TrtRunner:
        return TrtRunner(Path(artifact), self.logger, self.device_name(), options)
