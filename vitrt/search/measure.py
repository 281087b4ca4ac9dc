"""Compiled variants measured side by side: latency on the single-thread CPU clock (and the wall clock) in
interleaved rounds of one process against a reference, top-1 of the built artifact through its runner, size.

Both clocks come from the shared timing loop (:func:`vitrt.compiler.timing.interleaved`); a speedup is the median
of the per-round ratios. Runners are ONNX Runtime sessions with one intra-op thread, so the CPU time of the calling
thread is the whole computation (``Timing(clock="cpu")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.timing import NOISE_MARK, Timing, interleaved, opposite, synced


@dataclass
class Measured:
    name: str
    cpu_ms: float
    wall_ms: float
    speedup_cpu: float
    speedup_wall: float
    top1: float | None
    onnx_bytes: int
    params: int
    flops: int

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in vars(self).items()}


def load_runner(out: Path, threads: int = 1):
    """The built artifact of a compile output, loaded with ``threads`` intra-op threads; (runner, manifest)."""
    import json

    from vitrt.compiler.backends import BuildOptions, get_backend

    manifest = json.loads((Path(out) / "manifest.json").read_text())
    backend = get_backend(manifest["backend"])
    return backend.load(Path(out) / manifest["artifact"], BuildOptions(threads=threads)), manifest


def measure(outs: dict[str, Path], reference: str, *, test=None, rounds: int = 5, iterations: int = 5,
            threads: int = 1, seed: int = 0, progress=None) -> dict[str, Measured]:
    """Every compile output in ``outs`` (name -> OUT), timed side by side with ``reference`` (one of them)."""
    from vitrt.calib.evaluate import runner_accuracy

    loaded = {name: load_runner(out, threads) for name, out in outs.items()}
    batch = {m["input_shape"][0] for _, m in loaded.values()}
    if len(batch) != 1 or not isinstance(next(iter(batch)), int):
        raise ValueError(f"variants must share one static batch, got {sorted(map(str, batch))}")
    spec_img = loaded[reference][1]["input_shape"]
    images = np.random.default_rng(seed).standard_normal(tuple(spec_img), np.float32)
    calls = {name: synced(runner, images) for name, (runner, _) in loaded.items()}
    timed = {}
    for clock in ("cpu", "wall"):
        bar = progress.bar(rounds * len(calls), f"timing {len(calls)} engines side by side ({clock} clock)") \
            if progress is not None else None
        timed[clock] = interleaved(calls, Timing(warmup=2, iterations=iterations, clock=clock), rounds=rounds,
                                   seed=seed, progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
    out = {}
    for name, (runner, manifest) in loaded.items():
        top1 = runner_accuracy(runner, test) if test is not None else None
        out[name] = Measured(name, timed["cpu"].typical(name), timed["wall"].typical(name),
                             timed["cpu"].speedup(reference, name), timed["wall"].speedup(reference, name), top1,
                             (Path(outs[name]) / "model.onnx").stat().st_size, manifest["params"]["after"],
                             manifest["flops"]["after"])
    return out


def noise_marks(reference: dict, measured: dict) -> dict[str, str]:
    """clock -> NOISE_MARK where ``measured``'s paired speedup and its time beside ``reference``'s point opposite
    ways (:func:`vitrt.compiler.timing.opposite`), else ""; both are :meth:`Measured.to_dict` rows."""
    return {clock: NOISE_MARK if opposite(reference[f"{clock}_ms"], measured[f"{clock}_ms"],
                                          measured[f"speedup_{clock}"]) else "" for clock in ("cpu", "wall")}
