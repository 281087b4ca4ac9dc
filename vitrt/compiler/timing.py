"""The one timing loop: warm-up, samples on a wall or CPU clock, and interleaved side-by-side comparison.

Every latency vitrt reports — ``compile --bench``, ``vitrt bench``, the latency-table builder, every benchmark
— comes from :func:`measure` or :func:`interleaved`.

Clocks:

* ``wall``: elapsed time per call (``time.perf_counter``), summarised by the median; what a server sees.
* ``cpu``: CPU time of the calling thread per call (``time.thread_time``), summarised by the *minimum*. On a
  machine shared with other jobs, wall-clock latency of a 2-thread run varies 2-3x with the load; the CPU
  time a single-threaded run consumes varies far less, and what load remains (a busy SMT sibling, caches
  evicted by other jobs) only ever adds CPU time, so the minimum estimates the undisturbed cost. It needs a
  runtime that computes on the caller's thread (ONNX Runtime with one intra-op thread).
* ``cuda``: GPU time between two CUDA events recorded on the current stream around the call
  (``torch.cuda.Event(enable_timing=True)``, ``elapsed_time`` after the end event completes), summarised by the
  median: the device's compute time without host-side jitter. Only for work queued on the current CUDA stream.

Ratios between variants (speedups) are taken from :func:`interleaved`, which visits the candidates in
shuffled order round after round so that drift and other load hit all of them alike; a speedup is the
median of the per-round ratios.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vitrt.compiler.errors import OptionError

CLOCKS = ("wall", "cpu", "cuda")
CLOCK_TIMERS = {"wall": "wall clock", "cpu": "CPU time of the calling thread (single-threaded runtime)",
                "cuda": "CUDA events around the call on the current stream (GPU time)"}  # what the samples measure
_CLOCK_FNS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _cuda_events_ms(call: Callable[[], object]) -> float:
    """One call timed by CUDA events on the current stream (the end event is waited for)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


@dataclass(frozen=True)
class Timing:
    warmup: int = 2
    iterations: int = 5
    min_seconds: float = 0.0  # keep sampling until this much wall time has passed (tiny subgraphs)
    clock: str = "wall"

    def __post_init__(self):
        if self.clock not in CLOCKS:
            raise OptionError(f"unknown clock '{self.clock}': choose one of {', '.join(CLOCKS)}")
        if self.iterations < 1 or self.warmup < 0:
            raise OptionError("timing needs >= 1 iteration and >= 0 warm-up runs")


def on_gpu(backend: str, device: str | None = None) -> bool:
    """Whether ``backend`` on ``device`` computes on a GPU (TensorRT always; torch on a CUDA device)."""
    return backend == "trt" or (backend == "torch" and (device or "cpu").startswith("cuda"))


def default_clock(backend: str, device: str | None = None) -> str:
    """The clock a runner benchmarks on by default: CUDA events on a GPU (its compute time), else wall."""
    return "cuda" if on_gpu(backend, device) else "wall"


def check_clock(clock: str, backend: str, threads: int | None, device: str | None = None,
                flag: str = "--clock") -> None:
    """Refuse a clock that cannot see the runtime's work (one line).

    ``cpu`` reads the calling thread's CPU time: only a single-threaded CPU runtime computes there (ONNX Runtime
    or torch with one intra-op thread). ``cuda`` reads CUDA events around the call: a GPU runtime (TensorRT, or
    torch on a CUDA device), each timed on the stream it enqueues on (``Runner.latency_samples``)."""
    gpu = on_gpu(backend, device)
    if clock == "cpu" and (backend not in ("ort", "torch") or threads != 1 or gpu):
        raise OptionError(f"{flag} cpu measures the caller thread's CPU time: it needs --threads 1 and a CPU "
                          "backend (--backend ort, or torch on --device cpu)")
    if clock == "cuda" and not gpu:
        raise OptionError(f"{flag} cuda reads CUDA events: it needs a GPU backend (--backend trt, or --backend torch "
                          "--device cuda)")


def samples_ms(call: Callable[[], object], timing: Timing, *, synchronize: Callable[[], None] | None = None,
               progress: Callable[[int], None] | None = None) -> list[float]:
    """Warm up, then time ``call`` ``timing.iterations`` times (more if ``min_seconds`` is not reached), in ms."""
    sync = synchronize or (lambda: None)
    for _ in range(timing.warmup):
        call()
    sync()
    samples, start = [], time.perf_counter()
    while len(samples) < timing.iterations or time.perf_counter() - start < timing.min_seconds:
        if timing.clock == "cuda":
            samples.append(_cuda_events_ms(call))
        else:
            clock = _CLOCK_FNS[timing.clock]
            t0 = clock()
            call()
            sync()
            samples.append((clock() - t0) * 1000.0)
        if progress is not None:
            progress(1)
    return samples


def typical_ms(samples: list[float], clock: str) -> float:
    """The summary statistic of ``clock``: median of wall times, minimum of CPU times (see module doc)."""
    return float(np.min(samples) if clock == "cpu" else np.median(samples))


def measure(call: Callable[[], object], timing: Timing, **kwargs) -> float:
    """The typical time of ``call`` in ms on ``timing.clock``."""
    return typical_ms(samples_ms(call, timing, **kwargs), timing.clock)


@dataclass
class Interleaved:
    """Raw samples (ms) of every candidate, round by round, from one :func:`interleaved` run."""

    samples: dict[str, list[list[float]]]
    clock: str

    def per_round(self, name: str) -> list[float]:
        """The typical time of each round (median wall time, least CPU time)."""
        return [typical_ms(round_samples, self.clock) for round_samples in self.samples[name]]

    def typical(self, name: str) -> float:
        """The median over rounds of the per-round typical times."""
        return float(np.median(self.per_round(name)))

    def percentile(self, name: str, q: float) -> float:
        return float(np.percentile([s for round_samples in self.samples[name] for s in round_samples], q))

    def speedup(self, reference: str, candidate: str) -> float:
        """How many times faster ``candidate`` is than ``reference``: the median of the per-round ratios."""
        return float(np.median(np.asarray(self.per_round(reference)) / np.asarray(self.per_round(candidate))))


def opposite(reference_ms: float, ms: float, speedup: float) -> bool:
    """Whether a paired speedup (:meth:`Interleaved.speedup`) and the typical times beside it point opposite ways
    (one says faster, the other slower): with few rounds on a loaded machine both statistics are sound and still
    disagree — the difference is then within the run's noise, which a report must say rather than print both."""
    return (reference_ms / ms - 1.0) * (speedup - 1.0) < 0


NOISE_MARK = "†"
NOISE_NOTE = (f"{NOISE_MARK}: the speedup (the median of the per-round ratios, paired round by round) and the times "
              "(the median over rounds) point opposite ways — the difference is within this run's noise; rerun with "
              "more --rounds")


def interleaved(candidates: dict[str, Callable[[], object]], timing: Timing, rounds: int = 5, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> Interleaved:
    """Time every candidate ``rounds`` times; each round visits the candidates in a shuffled order.

    Compare variants with :meth:`Interleaved.speedup` / :meth:`Interleaved.typical`, never with separate runs.
    """
    rng = np.random.default_rng(seed)
    names = list(candidates)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            name = names[i]
            samples[name].append(samples_ms(candidates[name], timing))
            if progress is not None:
                progress(1)
    return Interleaved(samples, timing.clock)


def synced(runner, images: np.ndarray) -> Callable[[], None]:
    """A runner's timed call followed by its synchronisation (a GPU runner's work is asynchronous)."""
    call = runner.timed_call(images)

    def run():
        call()
        runner.synchronize()
    return run
