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

Ratios between variants (speedups) are taken from :func:`interleaved`, which visits the candidates in
shuffled order round after round so that drift and other load hit all of them alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vitrt.compiler.errors import VitrtError

CLOCKS = ("wall", "cpu")
_CLOCK_FNS = {"wall": time.perf_counter, "cpu": time.thread_time}


@dataclass(frozen=True)
class Timing:
    warmup: int = 2
    iterations: int = 5
    min_seconds: float = 0.0  # keep sampling until this much wall time has passed (tiny subgraphs)
    clock: str = "wall"

    def __post_init__(self):
        if self.clock not in CLOCKS:
            raise VitrtError(f"unknown clock '{self.clock}': choose one of {', '.join(CLOCKS)}")
        if self.iterations < 1 or self.warmup < 0:
            raise VitrtError("timing needs >= 1 iteration and >= 0 warm-up runs")


def samples_ms(call: Callable[[], object], timing: Timing, *, synchronize: Callable[[], None] | None = None,
               progress: Callable[[int], None] | None = None) -> list[float]:
    """Warm up, then time ``call`` ``timing.iterations`` times (more if ``min_seconds`` is not reached), in ms."""
    sync = synchronize or (lambda: None)
    clock = _CLOCK_FNS[timing.clock]
    for _ in range(timing.warmup):
        call()
    sync()
    samples, start = [], time.perf_counter()
    while len(samples) < timing.iterations or time.perf_counter() - start < timing.min_seconds:
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


def interleaved(candidates: dict[str, Callable[[], object]], timing: Timing, rounds: int = 5, seed: int = 0,
                synchronize: Callable[[], None] | None = None, progress: Callable[[int], None] | None = None
                ) -> dict[str, list[float]]:
    """Per-round typical times (ms) of each candidate; each round visits the candidates in shuffled order.

    Compare variants with the medians of these lists (:func:`ratio`), never with separate runs.
    """
    rng = np.random.default_rng(seed)
    names = list(candidates)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            name = names[i]
            per_round[name].append(measure(candidates[name], timing, synchronize=synchronize))
            if progress is not None:
                progress(1)
    return per_round


def ratio(per_round: dict[str, list[float]], reference: str, candidate: str) -> float:
    """Speedup of ``candidate`` over ``reference``: the median over rounds of the per-round ratios."""
    return float(np.median(np.asarray(per_round[reference]) / np.asarray(per_round[candidate])))


def synced(runner, images: np.ndarray) -> Callable[[], None]:
    """A runner's timed call followed by its synchronisation (a GPU runner's work is asynchronous)."""
    call = runner.timed_call(images)

    def run():
        call()
        runner.synchronize()
    return run
