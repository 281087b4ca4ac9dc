"""The TensorRT runner: device buffers bound once per input shape, GPU compute time, per-layer profiling apart.

    infer(images)        host -> device copy, enqueue, device -> host copy (the whole round trip)
    timed_call(images)   the input staged once; the call enqueues only (what a timing loop measures)
    benchmark(images)    GPU compute time of each enqueue from CUDA events (as trtexec's "GPU Compute Time"),
                         the host<->device copies timed apart (``transfers_ms``), then per-layer times
    layer_times_ms()     a separate pass with an IProfiler attached, detached afterwards

For each input shape the runner allocates the input and output buffers once (torch tensors on the GPU; TensorRT
I/O types map through torch, BF16 and FP8 included) and binds them to the execution context; with
``cuda_graph`` it also captures the enqueue into a CUDA graph and replays it. A captured graph holds the
context's shape-dependent state as it was at capture, so each captured shape gets an execution context of its
own (its own activation memory, an engine's worth per shape), never re-bound to another shape: replaying the
graph of batch 1 after batch 8 ran cannot meet batch 8's state. The TensorRT calls are listed in
:mod:`vitrt.compiler.backends.trt`; every one that reports failure by its return value is checked.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from vitrt.compiler.backends.base import BuildOptions, Runner
from vitrt.compiler.errors import BackendUnavailableError, VitrtError
from vitrt.compiler.timing import Timing, samples_ms

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

TRANSFER_RUNS = 5  # host<->device copies timed this many times each (median)
GPU_TIMER = "CUDA events around execute_async_v3 (GPU compute time, as trtexec reports it; copies excluded)"


def dims(shape: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (-1 for a dynamic dim)."""
    return tuple(int(shape[i]) for i in range(len(shape)))


def torch_dtype(dtype: trt.DataType) -> torch.dtype:
    """The torch dtype of a TensorRT I/O tensor type (TensorRT's own ``nptype`` has no BF16 / FP8)."""
    import tensorrt as trt
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
             trt.DataType.INT8: torch.int8, trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64,
             trt.DataType.BOOL: torch.bool, trt.DataType.UINT8: torch.uint8, trt.DataType.FP8: torch.float8_e4m3fn}
    if dtype not in table:
        raise VitrtError(f"the engine has an I/O tensor of TensorRT type {dtype}, which has no torch type (INT4 / FP4 "
                         "I/O is not supported): keep the graph's inputs and outputs in a float type")
    return table[dtype]


@dataclass
class Binding:
    """The device buffers of one input shape, bound to the context when that shape runs."""

    shape: tuple[int, ...]
    input: torch.Tensor
    outputs: dict[str, torch.Tensor]
    context: trt.IExecutionContext  # the runner's shared one; a context of its own when its enqueue is captured
    graph: torch.cuda.CUDAGraph | None = None


class TrtRunner(Runner):
    backend = "trt"
    clock = "cuda"
    timer = GPU_TIMER

    def __init__(self, artifact: Path, logger: trt.Logger, device: str, options: BuildOptions) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("the trt backend needs a CUDA device and torch with CUDA")
        self.device = device
        engine = trt.Runtime(logger).deserialize_cuda_engine(Path(artifact).read_bytes())
        if engine is None:
            raise VitrtError(f"TensorRT could not deserialize '{artifact}' (built by another TensorRT version?)")
        context = engine.create_execution_context()
        if context is None:
            raise VitrtError("TensorRT could not create an execution context (out of GPU memory?)")
        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self.outputs:
            raise VitrtError(f"'{artifact}' has inputs {inputs} and outputs {self.outputs}; vitrt engines take one "
                             "image input")
        self.input_name = inputs[0]
        self.dtypes = {n: torch_dtype(engine.get_tensor_dtype(n)) for n in names}
        first = dims(engine.get_tensor_shape(self.input_name))
        self._batch = None if first[0] == -1 else first[0]
        self.cuda_graph = options.cuda_graph
        self.stream = torch.cuda.Stream()
        self._bindings: dict[tuple[int, ...], Binding] = {}
        self._active: tuple[int, ...] | None = None

    @property
    def batch(self) -> int | None:
        return self._batch

    # --- buffers and enqueue ------------------------------------------------------------------------------------
    def _bind(self, shape: tuple[int, ...]) -> Binding:
        """The buffers of ``shape`` (allocated on first use), bound to the context."""
        import torch

        binding = self._bindings.get(shape)
        if binding is None:
            context = self._new_context() if self.cuda_graph and self._bindings else self.context
            self._set_input_shape(context, shape)
            outputs = {name: torch.empty(dims(context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                         device="cuda") for name in self.outputs}
            binding = Binding(shape, torch.empty(shape, dtype=self.dtypes[self.input_name], device="cuda"), outputs,
                              context)
            self._bindings[shape] = binding
            self._activate(binding)
            if self.cuda_graph:
                self._capture(binding)
        elif binding.context is self.context and self._active != shape:  # a captured one stays bound to its shape
            self._activate(binding)
        return binding

    def _new_context(self) -> trt.IExecutionContext:
        context = self.engine.create_execution_context()
        if context is None:
            raise VitrtError("TensorRT could not create an execution context (out of GPU memory?)")
        return context

    def _set_input_shape(self, context: trt.IExecutionContext, shape: tuple[int, ...]) -> None:
        if not context.set_input_shape(self.input_name, shape):
            profile = ""
            if self._batch is None:
                low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
                profile = f" (the engine's profile takes {list(dims(low))} .. {list(dims(high))})"
            raise VitrtError(f"TensorRT rejected input shape {list(shape)} for '{self.input_name}'{profile}")

    def _activate(self, binding: Binding) -> None:
        self._set_input_shape(binding.context, binding.shape)
        for name, tensor in [(self.input_name, binding.input), *binding.outputs.items()]:
            if not binding.context.set_tensor_address(name, tensor.data_ptr()):
                raise VitrtError(f"TensorRT refused the device address of tensor '{name}'")
        if binding.context is self.context:
            self._active = binding.shape

    def _execute(self, binding: Binding) -> None:
        if not binding.context.execute_async_v3(self.stream.cuda_stream):
            raise VitrtError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _capture(self, binding: Binding) -> None:
        """Capture the enqueue of ``binding`` into a CUDA graph (after one plain enqueue, which finishes TensorRT's
        shape-dependent setup outside the capture)."""
        import torch

        self._execute(binding)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._execute(binding)
        binding.graph = graph

    def _enqueue(self, binding: Binding) -> None:
        """Queue one inference of the bound buffers on the runner's stream (graph replay when captured)."""
        import torch

        self._bind(binding.shape)
        if binding.graph is None:
            self._execute(binding)
            return
        with torch.cuda.stream(self.stream):
            binding.graph.replay()

    def _stage(self, images: np.ndarray) -> Binding:
        """Bind the buffers of ``images``' shape and copy ``images`` into the input buffer."""
        import torch

        binding = self._bind(tuple(int(d) for d in images.shape))
        with torch.cuda.stream(self.stream):
            binding.input.copy_(torch.from_numpy(np.ascontiguousarray(images)))
        return binding

    # --- the Runner interface -------------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> np.ndarray:
        import torch

        binding = self._stage(images)
        self._enqueue(binding)
        with torch.cuda.stream(self.stream):
            logits = binding.outputs[self.outputs[0]].float().cpu()
        return logits.numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def timed_call(self, images: np.ndarray) -> Callable[[], None]:
        """The enqueue alone: the input is staged once, outputs stay on the device."""
        binding = self._stage(images)
        self.synchronize()
        return lambda: self._enqueue(binding)

    def latency_samples(self, images: np.ndarray, timing: Timing, progress=None) -> list[float]:
        """GPU compute time of each timed enqueue: the shared timing loop's ``cuda`` clock (CUDA events on the
        current stream, made the runner's stream here); another clock times :meth:`timed_call` as any runner."""
        import torch

        if timing.clock != "cuda":
            return super().latency_samples(images, timing, progress)

        binding = self._stage(images)
        self.synchronize()
        with torch.cuda.stream(self.stream):
            return samples_ms(lambda: self._enqueue(binding), timing, synchronize=self.synchronize,
                              progress=progress)

    def transfer_ms(self, images: np.ndarray) -> dict[str, float]:
        """Median host->device (input) and device->host (first output) copy times, from CUDA events."""
        import torch

        binding = self._bind(tuple(int(d) for d in images.shape))
        source = torch.from_numpy(np.ascontiguousarray(images)).to(self.dtypes[self.input_name]).pin_memory()
        output = binding.outputs[self.outputs[0]]
        target = torch.empty(output.shape, dtype=output.dtype).pin_memory()
        return {"h2d_ms": self._copy_ms(lambda: binding.input.copy_(source, non_blocking=True)),
                "d2h_ms": self._copy_ms(lambda: target.copy_(output, non_blocking=True))}

    def _copy_ms(self, copy: Callable[[], object]) -> float:
        import torch

        times = []
        for _ in range(TRANSFER_RUNS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.stream):
                start.record(self.stream)
                copy()
                end.record(self.stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
        return float(statistics.median(times))

    def layer_times_ms(self, images: np.ndarray, iterations: int) -> dict[str, float]:
        """Median time per TensorRT layer over ``iterations`` plain enqueues with an IProfiler attached; the
        profiler is detached afterwards, so later inferences are not profiled."""
        import tensorrt as trt

        class LayerTimes(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)
                self.samples: dict[str, list[float]] = {}

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                self.samples.setdefault(layer_name, []).append(ms)

        binding = self._stage(images)
        profiler = LayerTimes()
        binding.context.profiler = profiler
        try:
            for _ in range(iterations):
                self._execute(binding)  # never a graph replay: the profiler reports only on enqueue
                self.synchronize()
        finally:
            binding.context.profiler = None  # type: ignore[assignment]  # the stubs omit None, the binding takes it
        return {name: float(np.median(ms)) for name, ms in profiler.samples.items()}
