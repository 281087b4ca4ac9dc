"""The backend interface: build an artifact from ONNX, load a runner, infer, benchmark, per-block latency.

Backends are looked up lazily by name (:func:`get_backend`) so that importing vitrt never imports
TensorRT or CUDA. Per-block latency is reported under canonical groups — ``stem``, ``blocks.{i}``,
``head`` — whatever the backend renamed or fused its layers into (see :func:`canonical_group`). A layer that
covers several groups (TensorRT's Myelin ``{ForeignNode[first...last]}``) is not given to any one group: it is
reported as a *spanning* layer with its first and last group (:func:`layer_span`), and the latency-table
refinement distributes its time by the table's own per-block predictions (:meth:`LatencyTable.refine`).
"""

from __future__ import annotations

import importlib
import re
import statistics
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.timing import CLOCK_TIMERS, Timing, samples_ms
from vitrt.compiler.timing import typical_ms as typical_of

_BACKENDS = {"ort": "vitrt.compiler.backends.ort:OrtBackend", "trt": "vitrt.compiler.backends.trt:TrtBackend",
             "torch": "vitrt.compiler.backends.torch_backend:TorchBackend"}
BACKEND_NAMES = tuple(_BACKENDS)
FIXED_DEVICE = {"ort": "cpu", "trt": "cuda"}  # where these run; torch takes a device (cpu, cuda, cuda:N)

# A canonical name inside a backend layer name: not preceded by a word char or '.', ended by a separator.
_CANONICAL = re.compile(r"(?:^|[^\w.])(blocks\.\d+|patch_embed|prefix_tokens|pos_embed|norm|head_dist|head)(?=[./_\s\]}),+]|$)")
# TensorRT names a Myelin-compiled region after its first and last layer: "{ForeignNode[first...last]}".
_FOREIGN_NODE = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")


def canonical_group(layer_name: str) -> str | None:
    """Map a backend layer name to ``stem`` / ``blocks.{i}`` / ``head``; None when the name says nothing.

    Backends fuse layers and join or wrap their names (TensorRT: ``"blocks.0.attn.q + blocks.0.attn.q.bias_add"``,
    ``"{ForeignNode[blocks.2.attn.q...blocks.2.attn.av]}"``; ONNX Runtime: ``"blocks.0.attn.q/MatMulAddFusion"``);
    the first canonical name that appears decides.
    """
    match = _CANONICAL.search(layer_name)
    return None if match is None else _group_of_match(match.group(1))


def layer_span(layer_name: str) -> tuple[str, str] | None:
    """(first, last) canonical group of a backend layer that covers more than one group, else None.

    ``{ForeignNode[blocks.0.attn.q...blocks.11.mlp.fc2]}`` spans blocks.0 .. blocks.11; a fused name that joins
    layers of two groups (``"blocks.0.residual2 + blocks.1.norm1"``) spans both.
    """
    foreign = _FOREIGN_NODE.search(layer_name)
    if foreign is not None:
        groups = [g for g in (canonical_group(foreign.group(1)), canonical_group(foreign.group(2))) if g]
    else:
        groups = [_group_of_match(m.group(1)) for m in _CANONICAL.finditer(layer_name)]
    groups = sorted(set(groups), key=_group_order)
    return (groups[0], groups[-1]) if len(groups) > 1 else None


def _group_of_match(name: str) -> str:
    if name.startswith("blocks."):
        return name
    return "stem" if name in ("patch_embed", "prefix_tokens", "pos_embed") else "head"


def attribute_layers(layer_ms: dict[str, float], group_of) -> tuple[dict[str, float], list[dict]]:
    """Per-layer times -> (ms per canonical group, spanning layers). ``group_of(layer)`` names the group of a layer
    that covers one; a layer covering several is listed with its ``first`` and ``last`` group instead."""
    groups: dict[str, float] = {}
    spanning = []
    for layer, ms in layer_ms.items():
        span = layer_span(layer)
        if span is not None:
            spanning.append({"layer": layer, "ms": round(float(ms), 5), "first": span[0], "last": span[1]})
            continue
        group = group_of(layer) or "other"
        groups[group] = groups.get(group, 0.0) + ms
    return dict(sorted(groups.items(), key=lambda kv: _group_order(kv[0]))), spanning


SPANNING_NOTE = ("profiled layers span several blocks (e.g. a TensorRT Myelin ForeignNode): per_block_ms holds only "
                 "the layers of one block; the latency-table refinement distributes the spanning layers' time over "
                 "their blocks by the table's own per-block predictions")


@dataclass
class LatencyStats:
    backend: str
    device: str
    batch: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    iterations: int
    per_block_ms: dict[str, float] = field(default_factory=dict)
    clock: str = "wall"  # the timing loop's clock (vitrt.compiler.timing): wall, cpu or cuda (CUDA events)
    spanning_layers: list[dict] = field(default_factory=list)  # layers covering several groups (layer_span)
    timer: str = "wall clock"  # what the samples measure ("cuda events": GPU compute time, as trtexec reports)
    transfers_ms: dict[str, float] = field(default_factory=dict)  # host<->device copies, timed apart (GPU backends)
    typical_ms: float | None = None  # the clock's summary (vitrt.compiler.timing.typical_ms); None: the median

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000.0 / self.median_ms

    @property
    def typical(self) -> float:
        """What a latency table holds for this clock: the median of wall / CUDA times, the least CPU time."""
        return self.median_ms if self.typical_ms is None else self.typical_ms

    @classmethod
    def from_samples(cls, samples_ms: list[float], *, backend: str, device: str, batch: int,
                     clock: str = "wall") -> "LatencyStats":
        data = np.asarray(samples_ms, dtype=np.float64)
        return cls(backend=backend, device=device, batch=batch, median_ms=float(np.median(data)),
                   p90_ms=float(np.percentile(data, 90)), p99_ms=float(np.percentile(data, 99)),
                   mean_ms=float(statistics.fmean(data)), iterations=len(data), clock=clock,
                   typical_ms=typical_of(list(data), clock), timer=CLOCK_TIMERS[clock])

    def to_dict(self) -> dict:
        return {"backend": self.backend, "device": self.device, "batch": self.batch,
                "median_ms": round(self.median_ms, 4), "p90_ms": round(self.p90_ms, 4), "p99_ms": round(self.p99_ms, 4),
                "mean_ms": round(self.mean_ms, 4), "typical_ms": round(self.typical, 4), "iterations": self.iterations,
                "images_per_s": round(self.images_per_s, 2), "clock": self.clock,
                "per_block_ms": {k: round(v, 4) for k, v in self.per_block_ms.items()}, "timer": self.timer,
                **({"transfers_ms": {k: round(v, 4) for k, v in self.transfers_ms.items()}} if self.transfers_ms else {}),
                **({"spanning_layers": self.spanning_layers, "per_block_note": SPANNING_NOTE}
                   if self.spanning_layers else {})}


@dataclass(frozen=True)
class BuildOptions:
    sparse_weights: bool = False  # let TensorRT choose 2:4 sparse tactics
    timing_cache: Path | None = None  # TensorRT timing cache file (read; rewritten after a successful build)
    workspace_mb: int | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads (None: its default); torch: set_num_threads
    batch_profile: tuple[int, int, int] | None = None  # (min, opt, max) batch of a dynamic-batch engine
    cuda_graph: bool = False  # TensorRT, torch on CUDA: run each input shape through a captured CUDA graph
    device: str = "cpu"  # torch backend: cpu, cuda, cuda:N or cuda:local
    torch_compile: str = "off"  # torch backend: off, default or max-autotune (torch.compile modes)


class Runner(ABC):
    """A loaded artifact with a fixed input shape (static batch) or a dynamic batch."""

    backend: str
    device: str
    clock: str = "wall"  # the clock its benchmark() reads: GPU runners time CUDA events ("cuda")

    @property
    @abstractmethod
    def batch(self) -> int | None:
        """The compiled batch size, or None for a dynamic batch."""

    @abstractmethod
    def infer(self, images: np.ndarray) -> np.ndarray:
        """images [B, C, H, W] float32 -> logits [B, classes] float32."""

    @abstractmethod
    def layer_times_ms(self, images: np.ndarray, iterations: int) -> dict[str, float]:
        """Typical time per backend layer (its own names) over ``iterations`` runs, from the backend's profiler."""

    def per_block_ms(self, images: np.ndarray, iterations: int = 10) -> dict[str, float]:
        """Per-layer profiler times summed into canonical groups (``stem``, ``blocks.{i}``, ``head``, ``other``);
        layers that span several groups are left out (see :meth:`block_times`)."""
        return self.block_times(images, iterations)[0]

    def block_times(self, images: np.ndarray, iterations: int = 10) -> tuple[dict[str, float], list[dict]]:
        """(ms per canonical group, spanning layers) from one profiled pass (:func:`attribute_layers`)."""
        return attribute_layers(self.layer_times_ms(images, iterations), self.group_of)

    def group_of(self, layer: str) -> str | None:
        return canonical_group(layer)

    def synchronize(self) -> None:
        """Wait for queued work (GPU backends); timing calls this before reading the clock."""

    def timed_call(self, images: np.ndarray):
        """The call the timing loop measures (a backend may exclude host/device copies from it)."""
        return lambda: self.infer(images)

    timer = "wall clock"  # what latency_samples measures

    def latency_samples(self, images: np.ndarray, timing: Timing, progress=None) -> list[float]:
        """Latency samples (ms) of :meth:`timed_call` from the shared timing loop (a GPU runner times the device)."""
        return samples_ms(self.timed_call(images), timing, synchronize=self.synchronize, progress=progress)

    def transfer_ms(self, images: np.ndarray) -> dict[str, float]:
        """Host<->device copy times that :meth:`latency_samples` leaves out (none for a CPU backend)."""
        return {}

    def benchmark(self, images: np.ndarray, *, warmup: int = 10, iterations: int = 50, min_seconds: float = 0.0,
                  per_block: bool = True, progress=None, clock: str | None = None) -> LatencyStats:
        """Latency through the shared timing loop (:mod:`vitrt.compiler.timing`) on ``clock`` (default: the runner's
        own — wall, or CUDA events for a GPU runner that declares ``clock = "cuda"``; ``cpu`` needs a single-threaded
        CPU runtime, :func:`~vitrt.compiler.timing.check_clock`), then per-block profiler times."""
        clock = clock or self.clock
        samples = self.latency_samples(images, Timing(warmup, iterations, min_seconds, clock=clock), progress)
        stats = LatencyStats.from_samples(samples, backend=self.backend, device=self.device, batch=len(images),
                                          clock=clock)
        if clock == self.clock:
            stats.timer = self.timer  # the runner's own words for its clock (e.g. the input copy excluded)
        stats.transfers_ms = self.transfer_ms(images)
        if per_block:
            stats.per_block_ms, stats.spanning_layers = self.block_times(images, iterations=max(3, iterations // 5))
        return stats


class Backend(ABC):
    name: str
    artifact_name: str

    @abstractmethod
    def build(self, onnx_path: Path, out_dir: Path, options: BuildOptions, log=None) -> Path:
        """Build the backend artifact from ``onnx_path`` into ``out_dir``; return its path."""

    @abstractmethod
    def load(self, artifact: Path, options: BuildOptions) -> Runner:
        """Load a built artifact for inference."""

    @abstractmethod
    def device_name(self) -> str:
        """The device the backend runs on, e.g. 'CPU: AMD EPYC 7B13 (2 threads)' or 'NVIDIA H100 80GB HBM3'."""


def get_backend(name: str, device: str | None = None) -> Backend:
    """Instantiate a backend by name; raises VitrtError for unknown names or missing runtimes.

    ``device`` (``cpu``, ``cuda``, ``cuda:N``) selects the device of a backend that runs on several (torch);
    the others run where they run (ort: CPU, trt: the current CUDA device) and refuse another one."""
    if name not in _BACKENDS:
        raise VitrtError(f"unknown backend '{name}': choose one of {', '.join(BACKEND_NAMES)}")
    module_name, class_name = _BACKENDS[name].split(":")
    fixed = FIXED_DEVICE.get(name)
    if fixed is not None and device is not None and device.split(":")[0] != fixed:
        raise VitrtError(f"backend '{name}' runs on {fixed} only; --device {device} needs --backend torch")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls() if fixed is not None else cls(device or "cpu")


def _group_order(group: str) -> tuple[int, int]:
    if group == "stem":
        return (0, 0)
    if group.startswith("blocks."):
        return (1, int(group.split(".")[1]))
    return (2, 0 if group == "head" else 1)
