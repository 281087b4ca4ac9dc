"""``vitrt lut merge``: join the partial tables of a sharded build (and tables of other precision/sparsity keys)
into one latency table.

Every part must come from the same kind of measurement — backend, device, batch, clock, library versions, grid,
threads, patch / classes — or the merge is refused with one line naming the part and what differs. Within one
``precision/sparsity`` key the parts must be the N shards of one build (indices 0..N-1, each complete, each
grid point measured by exactly one shard); a complete unsharded table of another key joins as it is. The merged
values are the shards' own measured values, copied; the runtime overhead (measured once per part and already
subtracted from that part's values) becomes the median of the parts', and every part's is kept in
``meta.parts``.
"""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lut import LatencyTable

# What every part must share (attribute or meta key -> how the refusal names it).
AGREE = {"backend": "backend", "device": "device", "batch": "batch", "clock": "clock", "patch": "patch size",
         "in_chans": "input channels", "num_classes": "classes"}
AGREE_META = {"libraries": "library versions", "grid": "grid", "threads": "threads"}


def _check_agreement(parts: list[tuple[Path, LatencyTable]]) -> None:
    first_path, first = parts[0]
    for path, table in parts:
        if table.points:  # any part, the first too: the merged table keeps no refined points
            raise VitrtError(f"'{path}' holds refined points: merge the grid parts first, then refine the merged table")
    for path, table in parts[1:]:
        for attr, what in AGREE.items():
            if getattr(table, attr) != getattr(first, attr):
                raise VitrtError(f"'{path}' differs from '{first_path}' in {what}: {getattr(table, attr)!r} vs "
                                 f"{getattr(first, attr)!r}; merge only parts of one build")
        for key, what in AGREE_META.items():
            if table.meta.get(key) != first.meta.get(key):
                raise VitrtError(f"'{path}' differs from '{first_path}' in {what}; merge only parts of one build")


def _merge_key(key: str, parts: list[tuple[Path, LatencyTable]]):
    """The sub-tables of one key from its shards (or one unsharded table)."""
    shards = [(p, t, t.meta.get("shard")) for p, t in parts]
    for path, table, shard in shards:
        if not table.meta.get("complete"):
            raise VitrtError(f"'{path}' is an unfinished build ({key}): resume it with the same vitrt lut build command")
    if len(shards) == 1 and shards[0][2] is None:
        return shards[0][1].tables[key]
    if any(shard is None for _, _, shard in shards):
        raise VitrtError(f"the {key} parts mix a whole table with shards; merge the shards of one build")
    counts = {shard["count"] for _, _, shard in shards}
    if len(counts) != 1:
        raise VitrtError(f"the {key} shards come from builds split {sorted(counts)} ways; merge the shards of one build")
    count = counts.pop()
    indices = sorted(shard["index"] for _, _, shard in shards)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        what = ", ".join(([f"shard(s) {missing} missing"] if missing else []) +
                         ([f"shard(s) {repeated} repeated"] if repeated else []))
        raise VitrtError(f"the {key} shards are not the {count} parts of one build ({what})")
    merged = {}
    for name, sub in shards[0][1].tables[key].items():
        ms = np.full(sub.ms.shape, np.nan)
        for path, table, _ in shards:
            values = table.tables[key][name].ms
            measured = np.isfinite(values)
            if np.any(measured & np.isfinite(ms)):
                raise VitrtError(f"'{path}' measured {key} {name} points another shard measured too")
            ms[measured] = values[measured]
        if not np.all(np.isfinite(ms)):
            raise VitrtError(f"the {key} shards leave {int((~np.isfinite(ms)).sum())} {name} point(s) unmeasured")
        merged[name] = type(sub)(dict(sub.axes), ms)
    return merged


def merge_tables(paths: list[Path]) -> LatencyTable:
    """One table from the parts at ``paths`` (see the module docstring)."""
    if not paths:
        raise VitrtError("vitrt lut merge needs the part files")
    parts = [(Path(p), LatencyTable.load(p)) for p in paths]
    _check_agreement(parts)
    by_key: dict[str, list] = {}
    for path, table in parts:
        if len(table.tables) != 1:
            raise VitrtError(f"'{path}' holds several precision/sparsity keys; merge single-key build outputs")
        by_key.setdefault(next(iter(table.tables)), []).append((path, table))
    tables = {key: _merge_key(key, group) for key, group in sorted(by_key.items())}
    first = parts[0][1]
    meta = {k: first.meta[k] for k in ("libraries", "grid_preset", "grid", "threads") if k in first.meta}
    meta.update({
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": True,
        "build_seconds": round(sum(float(t.meta.get("build_seconds", 0.0)) for _, t in parts), 1),
        "provenance": {k: v for _, t in parts for k, v in t.meta.get("provenance", {}).items()},
        "parts": [{"file": str(p), "key": next(iter(t.tables)), "shard": t.meta.get("shard"),
                   "overhead_ms": t.overhead_ms, "created": t.meta.get("created"),
                   "build_seconds": t.meta.get("build_seconds")} for p, t in parts],
        "overhead": "median of the parts' measured per-call overheads (each part's values had its own subtracted)",
    })
    merged = LatencyTable(backend=first.backend, device=first.device, batch=first.batch, tables=tables,
                          overhead_ms=float(statistics.median(t.overhead_ms for _, t in parts)), patch=first.patch,
                          in_chans=first.in_chans, num_classes=first.num_classes, clock=first.clock, meta=meta)
    merged.record_inversions()  # across the shards' seams too, which no part could compare
    return merged
