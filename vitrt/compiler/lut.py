"""The latency lookup table (NViT eq. 7's Lat(·)), with measured feedback from compiled engines.

A table holds, for one backend / device / batch size and per ``precision/sparsity`` key, grid-measured
latencies (milliseconds per batch) of the canonical block's two halves and of the non-block parts::

    attn  (emb, heads, qk, v, tokens)   norm1 → Q/K/V → per-head attention → proj → residual1
    mlp   (emb, mlp, tokens)            norm2 → fc1 → GELU → fc2 → residual2
    stem  (emb, patches)                patch conv → prefix tokens → position embedding   (patch size fixed)
    head  (emb, tokens)                 final norm → class token → head linear           (classes fixed)
    head_distilled (emb, tokens)        the same with the distillation head averaged in
    merge (emb, keys, tokens, merged)   token merging between attention and MLP (keys = heads · qk; optional)
    linear (tokens, k, n)               one linear layer x[B, tokens, k] · W[k, n] + b (optional, for low rank)
    lowrank (tokens, k, rank, n)        the same layer factored: (x · U[k, rank]) · V[rank, n] + b (optional)

    block_ms = attn(emb, heads, qk, v, tokens)   [0 when heads == 0: attention removed]
             + merge(emb, heads·qk, tokens, tokens - tokens_out)   [only when the block merges tokens]
             + mlp(emb, mlp, tokens_out)          [0 when mlp == 0; tokens_out = tokens left after merging]
             + Σ over its factored layers (lowrank(t, k, rank, n) - linear(t, k, n))
    model_ms = overhead + stem + Σ block_ms + head

The factored layers of a model are read from its spec (``spec.ranks``: canonical layer name -> rank, which the
low-rank transform records). ``merge``, ``linear`` and ``lowrank`` are optional sub-tables:
a table without ``merge`` predicts a merging block as attention + MLP alone (tables built before it existed), and
one without the low-rank pair refuses a model with factored layers.

Splitting the block into halves keeps the grid small (the halves share no dimension except emb and tokens),
makes DC-ViT's removed modules and token merging (the MLP runs on the merged tokens) exact compositions,
and keeps each half close to multilinear in its axes, which is what the interpolation assumes. ``overhead``
is the fixed per-call cost of the runtime (measured on an empty graph) that every timed subgraph paid once
and that is subtracted from each grid value.

**Refinement.** A compiled model's manifest carries the measured whole-model median and the profiler's
per-block times. A profiled layer that spans several blocks (TensorRT compiles a transformer into Myelin
``{ForeignNode[first...last]}`` regions; the manifest lists them as ``spanning_layers``) says nothing about how
its time splits: its time is distributed over the blocks it covers in proportion to the table's own per-block
predictions (:func:`distribute_spanning`), never given to the block its name starts with. The per-block times
are then scaled so that they add up to the measured median (the profiler sees kernel time only) and stored as
*measured points* with their provenance (manifest path, model, date); an emptied block (heads = mlp = 0, which has no
nodes and which the table predicts at 0 ms) and a group profiled at 0 ms are not stored. The measurement must have
run with the table's intra-op threads (the manifest's ``latency.threads``). A query
multiplies the grid prediction by a correction factor::

    log c(x) = Σ_i w_i(x) a_i / max(1, Σ_i w_i(x)),    w_i(x) = exp(-(d(x, x_i) / REFINE_RADIUS)²)

where d is the Euclidean distance in log2(dimension + 1) (the + 1 keeps a removed half, 0, defined) and the a_i
solve the linear system that makes the correction exact at every measured point: log c(x_j) = log(m_j / g_j), the
measured-over-grid ratio there. So a refined model predicts its own measurement, block by block, even where its
blocks are near each other (a plain weighted mean of the ratios, a_i = log(m_i / g_i), blended a pruned digits model's
blocks by up to 7 %). Points too close for the system to tell apart (singular values below REFINE_RCOND of the
largest: closer than ~1.5 % in one dimension) share their mean. An exact fit continues the slope between two
neighbours with different ratios, so log c(x) is clipped to the range of 0 (the grid) and the log ratios of the points
that correct x: never beyond what was measured nearby. A single point corrects its neighbours by its weight: ~2 % of
the correction for a large dimension 2× away in one axis (more for small ones: heads 1 → 2 gets 25 %); unrelated
blocks are unaffected. Points with the same ratio correct the space between them by that ratio (the max(1, ·)
normalisation). The grid itself is never overwritten, so a refinement can always be traced and undone.

File format: one JSON document (``format: "vitrt.lut"``), see :meth:`LatencyTable.to_dict`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.jsonfile import read_json
from vitrt.compiler.timing import CLOCKS

UNCHECKED = object()  # LatencyTable.check: an argument that is not compared
RUNTIME_DEFAULT_THREADS = "runtime default"  # the threads of a table or compile without --threads
BACKEND_NAMES = ("ort", "trt", "torch")

FORMAT = "vitrt.lut"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int4w")
SPARSITIES = ("dense", "2:4")
REFINE_RADIUS = 0.5  # log2 units: a point 2x away in one dimension gets weight e^-4 ≈ 0.018
# The correction's system: directions with singular values below this fraction of the largest are dropped, so points
# closer than ~1.5 % in one dimension (MLP 1520 and 1536), which no query tells apart, share their mean.
REFINE_RCOND = 1e-3
MIN_WEIGHT = 1e-6  # a measured point weighing less than this on a query does not correct it

# The sub-tables and their axes, in array order.
PART_AXES = {
    "attn": ("emb", "heads", "qk", "v", "tokens"),
    "mlp": ("emb", "mlp", "tokens"),
    "stem": ("emb", "patches"),
    "head": ("emb", "tokens"),
    "head_distilled": ("emb", "tokens"),
    "merge": ("emb", "keys", "tokens", "merged"),
    "linear": ("tokens", "k", "n"),
    "lowrank": ("tokens", "k", "rank", "n"),
}
REQUIRED_PARTS = ("attn", "mlp", "stem", "head", "head_distilled")
OPTIONAL_PARTS = ("merge", "linear", "lowrank")
BLOCK_KEY_FIELDS = ("emb", "heads", "qk", "v", "mlp", "tokens", "tokens_out")
STEM_KEY_FIELDS = ("emb", "patches")
HEAD_KEY_FIELDS = ("emb", "tokens", "distilled")


def table_key(precision: str, sparsity: str) -> str:
    return f"{precision}/{sparsity}"


@dataclass
class SubTable:
    """Values on a regular grid; ``ms`` has one axis per name in ``axes`` (NaN = not measured yet)."""

    axes: dict[str, list[int]]
    ms: np.ndarray
    _interp: Any = field(default=None, repr=False, compare=False)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)  # coords -> value, for this _interp

    @property
    def complete(self) -> bool:
        return bool(np.all(np.isfinite(self.ms)))

    def to_dict(self) -> dict:
        return {"axes": {k: list(v) for k, v in self.axes.items()},
                "ms": np.where(np.isfinite(self.ms), np.round(self.ms, 5), np.nan).tolist()}

    def lookup(self, point: dict[str, float], *, clamp: bool, what: str) -> float:
        """Multilinear interpolation; outside the grid raise (or clamp to its edge when ``clamp``)."""
        coords = []
        for name, values in self.axes.items():
            x = float(point[name])
            lo, hi = values[0], values[-1]
            if not lo <= x <= hi:
                if not clamp:
                    raise VitrtError(f"{what}: {name}={point[name]:g} is outside the table's grid [{lo}, {hi}]; "
                                     "rebuild the table with a wider grid (or, for vitrt lut query, pass --clamp)")
                x = min(max(x, lo), hi)
            coords.append(x)
        if not self.complete:
            raise VitrtError(f"{what}: the table is incomplete (an interrupted build); resume it with vitrt lut build")
        if self._interp is None:
            from scipy.interpolate import RegularGridInterpolator

            # Axes with one value have nothing to interpolate; RegularGridInterpolator needs >= 2 per axis there.
            grid = [np.asarray(v, dtype=np.float64) for v in self.axes.values()]
            values = self.ms
            for axis, g in enumerate(grid):
                if len(g) == 1:
                    grid[axis] = np.array([g[0], g[0] + 1.0])
                    values = np.concatenate([values, values], axis=axis)
            self._interp = RegularGridInterpolator(grid, values, method="linear")
            self._memo = {}
        # Searches (pruning, vitrt optimize) ask for the same points thousands of times: interpolate each once.
        key = tuple(coords)
        if key not in self._memo:
            self._memo[key] = float(self._interp(np.asarray([coords]))[0])
        # Grid values have the per-call overhead subtracted, so a tiny subgraph timed on a loaded machine can
        # come out at or below zero; the floor keeps predictions positive and multiplicative refinement defined
        # (a refined model's correction would otherwise be skipped and its prediction stay off).
        return max(self._memo[key], MIN_GRID_MS)


MIN_GRID_MS = 1e-4
# Axes along which a larger value is more work (``merged`` is not: merging more tokens costs about the same).
WORK_AXES = ("emb", "heads", "qk", "v", "tokens", "mlp", "patches", "keys", "k", "n", "rank")
INVERSION_TOLERANCE = 0.10  # a grid value its larger neighbour undercuts by more than this is reported


def inversions(sub: SubTable, tolerance: float = INVERSION_TOLERANCE) -> tuple[int, list[dict]]:
    """Neighbouring grid values along a work axis where the larger size is faster by more than ``tolerance``.

    Returns (pairs compared, inversions); each inversion is ``{"axis", "at" (the smaller point), "larger",
    "faster_by"}``. Timings on a loaded machine make them, and so can a real kernel effect (a size that tiles
    better): the build reports them so that whoever reads the table can tell the two apart by timing again."""
    names, compared, found = list(sub.axes), 0, []
    for axis, name in enumerate(names):
        values = sub.axes[name]
        if name not in WORK_AXES or len(values) < 2:
            continue
        small = np.take(sub.ms, range(len(values) - 1), axis=axis)
        large = np.take(sub.ms, range(1, len(values)), axis=axis)
        usable = np.isfinite(small) & np.isfinite(large) & (small > MIN_GRID_MS)  # below the floor: no ratio
        compared += int(usable.sum())
        for index in zip(*np.nonzero(usable & (large < small * (1 - tolerance)))):
            at = {n: sub.axes[n][i] for n, i in zip(names, index)}
            found.append({"axis": name, "at": at, "larger": values[index[axis] + 1],
                          "faster_by": round(float(1 - large[index] / small[index]), 3)})
    return compared, found


def inversion_note(compared: int, found: list[dict]) -> str | None:
    """One line on a table's inversions (None without any): how many, the worst, and what to do."""
    if not found:
        return None
    worst = max(found, key=lambda inv: inv["faster_by"])
    where = ", ".join(f"{n} {v}" for n, v in worst["at"].items() if n != worst["axis"])
    return (f"{len(found)} of {compared} neighbouring grid values are faster at the larger size by more than "
            f"{INVERSION_TOLERANCE:.0%} (worst: {worst.get('part', '')} {worst['axis']} {worst['at'][worst['axis']]} → "
            f"{worst['larger']}, {worst['faster_by']:.0%} faster, at {where}): timings on a loaded machine, or a real "
            "kernel effect; time them again (a new -o, more --iterations) to tell which")


def factored_layers(spec) -> dict[int, dict[str, tuple[int, int, int, int]]]:
    """Per block index: factored layer -> (tokens it runs on, k, rank, n), from ``spec.ranks``."""
    out: dict[int, dict] = {}
    for name, rank in spec.ranks.items():
        tokens, k, n = spec.linear_dims(name)
        out.setdefault(int(name.split(".")[1]), {})[name] = (tokens, k, rank, n)
    return out


def _block_point(emb, heads, qk, v, mlp, tokens, tokens_out) -> dict:
    return {"emb": emb, "heads": heads, "qk": qk if heads else 0, "v": v if heads else 0, "mlp": mlp,
            "tokens": tokens, "tokens_out": tokens if tokens_out is None else tokens_out}


def _merge_lookup(parts, *, emb, keys, tokens, tokens_out, clamp) -> float:
    """One block's token-merge cost from the ``merge`` sub-table (the block and the model's merge part share it)."""
    return parts["merge"].lookup({"emb": emb, "keys": keys, "tokens": tokens, "merged": tokens - tokens_out},
                                 clamp=clamp, what="token merge")


def measured_threads(latency: dict):
    """The intra-op threads a manifest's measurement ran with, as :meth:`LatencyTable.check` takes them: the int
    of --threads, None for the runtime's default (recorded as ``runtime default (N cores)``), UNCHECKED where the
    manifest does not say."""
    threads = latency.get("threads")
    if threads is None:
        return UNCHECKED
    return threads if isinstance(threads, int) and not isinstance(threads, bool) else None


def empty_block(block) -> bool:
    """A block that computes nothing (DC-ViT's whole-block removal: no attention, no MLP): it has no nodes, so no
    profiled time, and the table predicts 0 ms for it."""
    return not block.heads and not block.mlp


def _stored_ms(ms: float) -> float:
    """A refined time as stored: 5 decimals, but a positive time below that keeps 3 significant digits (rounded to
    0 it would make the table unloadable)."""
    return round(ms, 5) or float(f"{ms:.3g}")


def _log_coords(keys: list[dict], fields) -> np.ndarray:
    """[len(keys), len(fields)]: the refinement's coordinates, log2(dimension + 1)."""
    return np.log2(np.asarray([[float(k[f]) for f in fields] for k in keys]) + 1.0)


def _weights(coords: np.ndarray, x: np.ndarray) -> np.ndarray:
    """w_i(x) of the module docstring for every row of ``coords``; 0 below MIN_WEIGHT."""
    weights = np.exp(-(np.linalg.norm(coords - x, axis=1) / REFINE_RADIUS) ** 2)
    return np.where(weights < MIN_WEIGHT, 0.0, weights)


def model_groups(spec) -> list[str]:
    """The canonical groups of a model in execution order: ``stem``, ``blocks.0`` .. ``blocks.{depth-1}``, ``head``."""
    return ["stem", *(f"blocks.{i}" for i in range(spec.depth)), "head"]


def distribute_spanning(groups: dict[str, float], spanning: list[dict], order: list[str],
                        predicted: dict[str, float]) -> dict[str, float]:
    """``groups`` plus each spanning layer's ms shared over the groups ``first`` .. ``last`` it covers, in proportion
    to ``predicted`` (the table's per-group predictions)."""
    out = dict(groups)
    index = {g: i for i, g in enumerate(order)}
    for layer in spanning:
        first, last = layer.get("first"), layer.get("last")
        if first not in index or last not in index or index[first] > index[last]:
            raise VitrtError(f"spanning layer '{layer.get('layer')}' covers {first} .. {last}, which is not a range of "
                             f"the model's groups {order[0]} .. {order[-1]}")
        covered = order[index[first]: index[last] + 1]
        total = sum(predicted[g] for g in covered)
        for g in covered:
            out[g] = out.get(g, 0.0) + float(layer["ms"]) * predicted[g] / total
    return out


@dataclass
class LatencyTable:
    """One backend / device / batch; sub-tables per ``precision/sparsity`` key; refined measured points."""

    backend: str
    device: str
    batch: int
    tables: dict[str, dict[str, SubTable]]
    overhead_ms: float = 0.0
    patch: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    clock: str = "wall"  # "wall": median wall-clock latency; "cpu": least CPU time of a single-threaded run
    meta: dict = field(default_factory=dict)  # created, libraries, grid preset, threads, build seconds, ...
    points: list[dict] = field(default_factory=list)  # refined measured points, with provenance
    # (kind, key, distilled) -> (the points it was solved for, their fit or None): see _correction_fit
    _fits: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # --- queries -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return sorted(self.tables)

    def _parts(self, precision: str, sparsity: str) -> dict[str, SubTable]:
        key = table_key(precision, sparsity)
        if key not in self.tables:
            raise VitrtError(f"the latency table has no '{key}' entries (it has {', '.join(self.keys()) or 'none'}); "
                             f"build one with vitrt lut build --precision {precision} --sparsity {sparsity}")
        return self.tables[key]

    def check(self, *, backend=None, batch=None, precision="fp32", sparsity="dense", device=None, clock=None,
              threads=UNCHECKED) -> None:
        """Raise VitrtError when this table cannot answer for that backend / batch / precision / sparsity (and, where
        given, device, clock and intra-op threads: what a measurement compared with it must share), naming every
        mismatch in one message."""
        problems = []  # every mismatch in one message: a user should not discover them one run at a time
        if threads is not UNCHECKED and self.threads != (threads or RUNTIME_DEFAULT_THREADS):
            def said(t):
                return f"{t} intra-op thread(s)" if isinstance(t, int) else "the runtime's default threads"
            fix = f"pass --threads {self.threads}" if isinstance(self.threads, int) else "leave --threads out"
            problems.append(f"the latency table was timed with {said(self.threads)}, the measurement would use "
                            f"{said(threads or RUNTIME_DEFAULT_THREADS)}; {fix}, or build a table with those threads")
        if clock is not None and clock != self.clock:
            problems.append(f"the latency table holds {self.clock}-clock times, the measurement is {clock}-clock; "
                            f"measure with --bench-clock {self.clock}, or use a table built with --clock {clock}")
        if backend is not None and backend != self.backend:
            problems.append(f"the latency table was built for backend '{self.backend}', not '{backend}'; "
                            f"build one with vitrt lut build --backend {backend}")
        if batch is not None and int(batch) != self.batch:
            problems.append(f"the latency table was built for batch {self.batch}, not {batch}; "
                            f"build one with vitrt lut build --batch {batch}")
        if device is not None and device != self.device:
            problems.append(f"the latency table was measured on '{self.device}', not '{device}'; build one on this device")
        if problems:
            raise VitrtError("; also, ".join(problems))
        self._parts(precision, sparsity)

    @property
    def threads(self):
        """The intra-op threads the table was timed with (an int, or ``runtime default``)."""
        return self.meta.get("threads", RUNTIME_DEFAULT_THREADS)

    def grid_block_ms(self, *, emb, heads, qk, v, mlp, tokens, tokens_out=None, precision="fp32",
                      sparsity="dense", clamp=False) -> float:
        """The block latency from the grid alone (no refinement)."""
        parts = self._parts(precision, sparsity)
        tokens_out = tokens if tokens_out is None else tokens_out
        if tokens_out > tokens or tokens_out < 1:
            raise VitrtError(f"block query: tokens_out={tokens_out} must be in 1..tokens ({tokens})")
        total = 0.0
        if heads:
            total += parts["attn"].lookup({"emb": emb, "heads": heads, "qk": qk, "v": v, "tokens": tokens},
                                          clamp=clamp, what="attention")
            if tokens_out < tokens and "merge" in parts:
                total += _merge_lookup(parts, emb=emb, keys=heads * qk, tokens=tokens, tokens_out=tokens_out,
                                       clamp=clamp)
        if mlp:
            total += parts["mlp"].lookup({"emb": emb, "mlp": mlp, "tokens": tokens_out}, clamp=clamp, what="MLP")
        return total

    def block_ms(self, *, emb, heads, qk, v, mlp, tokens, tokens_out=None, precision="fp32", sparsity="dense",
                 clamp=False) -> float:
        """Predicted latency (ms per batch) of one block; heads == 0 / mlp == 0 mean that half is removed."""
        base = self.grid_block_ms(emb=emb, heads=heads, qk=qk, v=v, mlp=mlp, tokens=tokens, tokens_out=tokens_out,
                                  precision=precision, sparsity=sparsity, clamp=clamp)
        point = _block_point(emb, heads, qk, v, mlp, tokens, tokens_out)
        return base * self._correction("block", point, precision, sparsity)

    def stem_ms(self, *, emb, patches, precision="fp32", sparsity="dense", clamp=False) -> float:
        base = self._parts(precision, sparsity)["stem"].lookup({"emb": emb, "patches": patches}, clamp=clamp,
                                                                what="stem")
        return base * self._correction("stem", {"emb": emb, "patches": patches}, precision, sparsity)

    def head_ms(self, *, emb, tokens, distilled=False, precision="fp32", sparsity="dense", clamp=False) -> float:
        part = "head_distilled" if distilled else "head"
        base = self._parts(precision, sparsity)[part].lookup({"emb": emb, "tokens": tokens}, clamp=clamp, what=part)
        point = {"emb": emb, "tokens": tokens, "distilled": int(distilled)}
        return base * self._correction("head", point, precision, sparsity)

    def model_ms(self, spec, *, precision="fp32", sparsity="dense", clamp=False) -> float:
        """Whole-model prediction for a ViTSpec: runtime overhead + stem + Σ blocks + head."""
        return sum(self.model_breakdown(spec, precision=precision, sparsity=sparsity, clamp=clamp).values())

    def merge_ms(self, spec, *, precision="fp32", sparsity="dense", clamp=False) -> float:
        """The token-merge part of :meth:`model_ms`: Σ merge(emb, heads·qk, tokens, merged) over the merging blocks
        (0 for a table without the ``merge`` sub-table, which predicts no merge cost)."""
        parts = self._parts(precision, sparsity)
        if "merge" not in parts:
            return 0.0
        return sum(_merge_lookup(parts, emb=spec.emb, keys=b.heads * b.qk, tokens=b.tokens, tokens_out=b.out_tokens,
                                 clamp=clamp)
                   for b in spec.blocks if b.heads and b.out_tokens < b.tokens)

    def model_breakdown(self, spec, *, precision="fp32", sparsity="dense", clamp=False) -> dict[str, float]:
        """Predicted ms per canonical group (``overhead``, ``stem``, ``blocks.{i}``, ``head``)."""
        self.check_spec(spec)
        out = {"overhead": self.overhead_ms,
               "stem": self.stem_ms(emb=spec.emb, patches=spec.num_patches, precision=precision, sparsity=sparsity,
                                    clamp=clamp)}
        factored = factored_layers(spec)
        for i, b in enumerate(spec.blocks):
            out[f"blocks.{i}"] = self.block_ms(emb=spec.emb, heads=b.heads, qk=b.qk, v=b.v, mlp=b.mlp, tokens=b.tokens,
                                               tokens_out=b.tokens_out, precision=precision, sparsity=sparsity,
                                               clamp=clamp)
            for layer, (t, k, rank, n) in factored.get(i, {}).items():
                out[f"blocks.{i}"] += self.lowrank_delta_ms(tokens=t, k=k, rank=rank, n=n, precision=precision,
                                                            sparsity=sparsity, clamp=clamp, layer=layer)
        last = spec.blocks[-1].out_tokens
        out["head"] = self.head_ms(emb=spec.emb, tokens=last, distilled=spec.distilled, precision=precision,
                                   sparsity=sparsity, clamp=clamp)
        return out

    def inversions(self, tolerance: float = INVERSION_TOLERANCE) -> tuple[int, list[dict]]:
        """:func:`inversions` over every key and part (each inversion gains ``key`` and ``part``)."""
        compared, found = 0, []
        for key, parts in self.tables.items():
            for part, sub in parts.items():
                n, part_found = inversions(sub, tolerance)
                compared += n
                found += [{"key": key, "part": part, **inv} for inv in part_found]
        return compared, found

    def record_inversions(self) -> str | None:
        """Store :meth:`inversions` in ``meta["inversions"]``; the one-line note on them (None without any)."""
        compared, found = self.inversions()
        self.meta["inversions"] = {"tolerance": INVERSION_TOLERANCE, "compared": compared, "found": found}
        return inversion_note(compared, found)

    def lowrank_delta_ms(self, *, tokens, k, rank, n, precision="fp32", sparsity="dense", clamp=False,
                         layer="a factored layer") -> float:
        """What factoring one linear layer x[B, tokens, k] · W[k, n] to rank ``rank`` adds (negative: saves)."""
        parts = self._parts(precision, sparsity)
        if "linear" not in parts or "lowrank" not in parts:
            raise VitrtError(f"{layer} is factored (low rank), but the latency table's {table_key(precision, sparsity)} "
                             "entries have no linear / lowrank sub-tables; build them with vitrt lut build "
                             "(fp32/dense, a grid with 'features' and 'rank' axes)")
        point = {"tokens": tokens, "k": k, "n": n}
        dense = parts["linear"].lookup(point, clamp=clamp, what=f"{layer} (linear)")
        factored = parts["lowrank"].lookup({**point, "rank": rank}, clamp=clamp, what=f"{layer} (low rank)")
        return factored - dense

    def check_spec(self, spec) -> None:
        """Raise VitrtError when the table's stem / head were measured for another patch, channels or classes."""
        for name in ("patch", "in_chans", "num_classes"):
            if getattr(spec, name) != getattr(self, name):
                raise VitrtError(f"the latency table's stem/head were measured with {name}={getattr(self, name)}, "
                                 f"the model has {name}={getattr(spec, name)}; build a table whose grid has "
                                 f"{name}={getattr(spec, name)} (vitrt lut build --grid digits for the digits "
                                 "reference, coarse or dense for ImageNet ViTs)")

    # --- refinement ----------------------------------------------------------------------------
    def _correction(self, kind: str, point: dict, precision: str, sparsity: str) -> float:
        """The module docstring's c(x): 1 without measured points near ``point``."""
        fields = {"block": BLOCK_KEY_FIELDS, "stem": STEM_KEY_FIELDS, "head": HEAD_KEY_FIELDS}[kind]
        fit = self._correction_fit(kind, fields, point["distilled"] if kind == "head" else None, precision, sparsity)
        if fit is None:
            return 1.0
        coords, solution, ratios = fit
        weights = _weights(coords, _log_coords([point], fields)[0])
        total = float(weights.sum())
        if not total:
            return 1.0
        near = ratios[weights > 0]
        low, high = min(0.0, float(near.min())), max(0.0, float(near.max()))
        return math.exp(min(max(float(weights @ solution) / max(1.0, total), low), high))

    def _correction_fit(self, kind: str, fields, distilled, precision: str, sparsity: str):
        """(coordinates, a_i, log ratios) of the measured points of one kind, key (and head variant); None without
        any.

        Solved once per set of points: searches query thousands of times between refinements."""
        key = table_key(precision, sparsity)
        group = [p for p in self.points if p["kind"] == kind and p["table"] == key
                 and (kind != "head" or p["key"]["distilled"] == distilled)]
        stamp = [(p["key"], tuple(p["ms"])) for p in group]
        cache = (kind, key, distilled)
        if cache in self._fits and self._fits[cache][0] == stamp:
            return self._fits[cache][1]
        measured, ratios = [], []
        for p in group:
            base = self._grid_value(kind, p["key"], precision, sparsity)
            if base > 0:
                measured.append(p["key"])
                # The mean keeps the total: identical blocks of one model share a point, and their observations
                # were scaled to add up to the measured model latency.
                ratios.append(math.log(float(np.mean(p["ms"])) / base))
        fit = None
        if measured:
            coords = _log_coords(measured, fields)
            system = np.stack([_weights(coords, x) for x in coords])
            system /= np.maximum(1.0, system.sum(axis=1, keepdims=True))
            solution = np.linalg.lstsq(system, np.asarray(ratios), rcond=REFINE_RCOND)[0]
            fit = (coords, solution, np.asarray(ratios))
        self._fits[cache] = (stamp, fit)
        return fit

    def _grid_value(self, kind: str, key: dict, precision: str, sparsity: str) -> float:
        if kind == "block":
            return self.grid_block_ms(emb=key["emb"], heads=key["heads"], qk=key["qk"], v=key["v"], mlp=key["mlp"],
                                      tokens=key["tokens"], tokens_out=key["tokens_out"], precision=precision,
                                      sparsity=sparsity, clamp=True)
        parts = self._parts(precision, sparsity)
        if kind == "stem":
            return parts["stem"].lookup(key, clamp=True, what="stem")
        return parts["head_distilled" if key["distilled"] else "head"].lookup(key, clamp=True, what="head")

    def add_point(self, kind: str, key: dict, ms: float, *, precision="fp32", sparsity="dense",
                  source: dict | None = None) -> None:
        """Record a measured value for a block / stem / head configuration (merged with earlier ones); ``ms`` must be
        a positive finite number, as the loader requires."""
        table = table_key(precision, sparsity)
        self._parts(precision, sparsity)
        ms = float(ms)
        if not 0 < ms < math.inf:
            raise VitrtError(f"a refined {kind} point of {ms:g} ms is not a positive latency; it cannot be stored")
        for p in self.points:
            if p["kind"] == kind and p["table"] == table and p["key"] == key:
                p["ms"].append(_stored_ms(ms))
                if source and source not in p["sources"]:
                    p["sources"].append(source)
                return
        self.points.append({"kind": kind, "table": table, "key": dict(key), "ms": [_stored_ms(ms)],
                            "sources": [source] if source else []})

    def refine(self, manifest: dict, *, source: str | None = None, precision="fp32", sparsity="dense") -> dict:
        """Fold a compiled model's measured per-block latency into the table; returns a summary.

        Needs ``latency`` (median_ms, per_block_ms, batch, backend, device, clock; threads where recorded) and
        ``spec_after``. The profiler's per-group times are scaled so that overhead + stem + Σ blocks + head equals the
        measured typical time (``typical_ms``: the median, the least time on the cpu clock; the median in older
        manifests).
        """
        from vitrt.compiler.spec import ViTSpec

        latency = manifest.get("latency") if isinstance(manifest, dict) else None
        if not latency or not (latency.get("per_block_ms") or latency.get("spanning_layers")) \
                or "median_ms" not in latency:
            raise VitrtError("the manifest has no measured latency with per_block_ms: compile with --bench")
        if "spec_after" not in manifest:
            raise VitrtError("the manifest has no spec_after: it was not written by vitrt compile")
        spec = ViTSpec.from_dict(manifest["spec_after"])
        if factored_layers(spec):
            raise VitrtError("the manifest's model has factored (low-rank) layers, which the table's block points do "
                             "not describe: refining with it is not supported")
        self.check(backend=latency.get("backend", manifest.get("backend")), batch=latency.get("batch"),
                   precision=precision, sparsity=sparsity, device=latency.get("device"),
                   clock=latency.get("clock", "wall"), threads=measured_threads(latency))
        self.check_spec(spec)
        groups = {k: float(v) for k, v in (latency.get("per_block_ms") or {}).items()}
        spanning = latency.get("spanning_layers") or []
        order = model_groups(spec)
        if spanning:  # a layer covering several blocks: share its time by the table's predictions
            predicted = self.model_breakdown(spec, precision=precision, sparsity=sparsity, clamp=True)
            groups = distribute_spanning(groups, spanning, order, predicted)
        # An emptied block (whole-block removal) has no nodes and so no profiled time; the table predicts 0 ms for
        # it whatever is stored, so it is neither required nor refined. Time a profiler gave it counts as 'other'.
        keys = {"stem": ("stem", {"emb": spec.emb, "patches": spec.num_patches}),
                **{f"blocks.{i}": ("block", _block_point(spec.emb, b.heads, b.qk, b.v, b.mlp, b.tokens, b.tokens_out))
                   for i, b in enumerate(spec.blocks) if not empty_block(b)},
                "head": ("head", {"emb": spec.emb, "tokens": spec.blocks[-1].out_tokens,
                                  "distilled": int(spec.distilled)})}
        missing = [g for g in order if g in keys and g not in groups]
        if missing:
            raise VitrtError(f"the manifest's per_block_ms lacks {', '.join(missing)}: benchmark it again with --bench")
        # Unattributed nodes ('other') are spread over the groups in proportion, by scaling only the named ones.
        profiled = sum(groups[k] for k in keys)
        measured = float(latency.get("typical_ms", latency["median_ms"]))
        target = measured - self.overhead_ms
        if profiled <= 0 or target <= 0:
            raise VitrtError("the manifest's latency figures are not positive; benchmark it again with --bench")
        scale = target / profiled
        before = self.model_ms(spec, precision=precision, sparsity=sparsity, clamp=True)
        provenance = {"source": str(source) if source else None, "model": manifest.get("model"),
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "measured_median_ms": measured,  # the clock's typical time (the name predates the cpu clock)
                      "attribution": f"{len(spanning)} layer(s) spanning several blocks shared by the table's "
                                     "predictions" if spanning else "per-layer profiler names"}
        for done in self.meta.get("refinements", []):  # the same measurement twice would count as two
            if source and done.get("source") == str(source) and done.get("measured_median_ms") == \
                    provenance["measured_median_ms"]:
                raise VitrtError(f"'{source}' (measured {provenance['measured_median_ms']:g} ms) is already folded "
                                 "into this table; benchmark the model again for a new measurement")
        for group, (kind, key) in keys.items():
            if groups[group] > 0:  # a group profiled at 0 ms (below the profiler's resolution) tells nothing
                self.add_point(kind, key, groups[group] * scale, precision=precision, sparsity=sparsity,
                               source=provenance)
        after = self.model_ms(spec, precision=precision, sparsity=sparsity, clamp=True)
        self.meta.setdefault("refinements", []).append({**provenance, "predicted_before_ms": round(before, 4),
                                                        "predicted_after_ms": round(after, 4)})
        return {"model": manifest.get("model"), "measured_ms": measured,
                "predicted_before_ms": before, "predicted_after_ms": after, "attribution": provenance["attribution"]}

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "backend": self.backend, "device": self.device, "batch": self.batch,
            "overhead_ms": round(self.overhead_ms, 5),
            "patch": self.patch, "in_chans": self.in_chans, "num_classes": self.num_classes, "clock": self.clock,
            "units": "milliseconds per batch; grid values have the runtime overhead subtracted",
            "meta": self.meta,
            "tables": {key: {name: part.to_dict() for name, part in parts.items()} for key, parts in self.tables.items()},
            "points": self.points,
        }

    def save(self, path) -> None:
        """Write atomically (a temporary sibling renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), allow_nan=True) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency table") -> "LatencyTable":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VitrtError(f"{where} is not a vitrt latency table (no \"format\": \"{FORMAT}\"); "
                             "make one with vitrt lut build")
        if data.get("version") != FORMAT_VERSION:
            raise VitrtError(f"{where} has table format version {data.get('version')!r}; this vitrt reads "
                             f"version {FORMAT_VERSION}: rebuild it with vitrt lut build")
        try:
            tables = {}
            for key, parts in data["tables"].items():
                precision, _, sparsity = key.partition("/")
                if precision not in PRECISIONS or sparsity not in SPARSITIES:
                    raise ValueError(f"unknown table key '{key}'")
                tables[key] = {}
                for name, part in parts.items():
                    if name not in PART_AXES:
                        raise ValueError(f"unknown sub-table '{name}'")
                    axes = {a: [int(x) for x in part["axes"][a]] for a in PART_AXES[name]}
                    ms = np.asarray(part["ms"], dtype=np.float64)
                    shape = tuple(len(v) for v in axes.values())
                    if ms.shape != shape:
                        raise ValueError(f"{key} {name} values have shape {ms.shape}, the axes need {shape}")
                    for a, v in axes.items():
                        if not v or any(x >= y for x, y in zip(v, v[1:])):
                            raise ValueError(f"{key} {name} axis '{a}' is empty or not strictly increasing")
                    if np.any(ms[np.isfinite(ms)] < 0) or np.any(np.isinf(ms)):
                        raise ValueError(f"{key} {name} has negative or infinite latencies")
                    if any(x < 0 for v in axes.values() for x in v):
                        raise ValueError(f"{key} {name} has a negative axis value")
                    tables[key][name] = SubTable(axes, ms)
                absent = set(REQUIRED_PARTS) - set(tables[key])
                if absent:
                    raise ValueError(f"{key} lacks sub-table(s) {', '.join(sorted(absent))}")
            points = list(data.get("points", []))
            for p in points:
                if p["kind"] not in ("block", "stem", "head") or p["table"] not in tables or not p["ms"]:
                    raise ValueError("a refined point is malformed")
                if any(isinstance(m, bool) or not (isinstance(m, (int, float)) and 0 < m < math.inf) for m in p["ms"]):
                    raise ValueError("a refined point has a latency that is not a positive number")
                if not isinstance(p.get("sources"), list):
                    raise ValueError("a refined point has no list of sources")
                fields = {"block": BLOCK_KEY_FIELDS, "stem": STEM_KEY_FIELDS, "head": HEAD_KEY_FIELDS}[p["kind"]]
                if not isinstance(p["key"], dict) or any(not isinstance(p["key"].get(f), (int, float)) or p["key"][f] < 0
                                                         for f in fields):
                    raise ValueError(f"a refined {p['kind']} point lacks one of {', '.join(fields)}")
            for name in ("batch", "patch", "in_chans", "num_classes"):
                if isinstance(data[name], bool) or not isinstance(data[name], int) or data[name] < 1:
                    raise ValueError(f"'{name}' is {data[name]!r}, not a positive integer")
            overhead = data.get("overhead_ms", 0.0)
            if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or not 0 <= overhead < math.inf:
                raise ValueError(f"'overhead_ms' is {overhead!r}, not a finite number >= 0")
            if data.get("clock", "wall") not in CLOCKS or data["backend"] not in BACKEND_NAMES:
                raise ValueError(f"clock '{data.get('clock')}' / backend '{data['backend']}' is not one of "
                                 f"{'/'.join(CLOCKS)} / {'/'.join(BACKEND_NAMES)}")
            table = cls(backend=str(data["backend"]), device=str(data["device"]), batch=int(data["batch"]),
                        tables=tables, overhead_ms=float(data.get("overhead_ms", 0.0)), patch=int(data["patch"]),
                        in_chans=int(data["in_chans"]), num_classes=int(data["num_classes"]),
                        clock=str(data.get("clock", "wall")),
                        meta=dict(data.get("meta", {})), points=points)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            msg = str(exc) if isinstance(exc, ValueError) else f"missing or invalid field {exc}"
            raise VitrtError(f"{where} is malformed: {msg}; rebuild it with vitrt lut build") from None
        if not tables:
            raise VitrtError(f"{where} has no tables; rebuild it with vitrt lut build")
        return table

    @classmethod
    def load(cls, path) -> "LatencyTable":
        data = read_json(path, "latency table", "make one with vitrt lut build")
        return cls.from_dict(data, where=f"latency table '{path}'")
