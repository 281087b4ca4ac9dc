"""Build a latency table by timing the canonical block halves, stem and head on a grid, on a real backend.

Every timed subgraph is emitted by the lowering's own emitter (``emit_block`` / ``emit_stem`` /
``emit_head``) from a torch twin module with random weights, so the table times exactly the nodes the
compiler emits for that configuration::

    attn point:  x[B, tokens, emb] ─► emit_block(heads=h, qk, v, mlp=0) ─► y     (norm1 … residual1)
    mlp point:   x[B, tokens, emb] ─► emit_block(heads=0, mlp=m)        ─► y     (norm2 … residual2)
    stem point:  images[B, 3, p·g, p·g] ─► emit_stem ─► tokens                   (patches = g²)
    head point:  x[B, tokens, emb] ─► emit_head ─► logits

Each point: lower → ``backend.build`` → ``backend.load`` → ``runner.benchmark`` (median of a few timed
runs). The runtime's fixed per-call overhead (an empty graph's latency) is measured once and subtracted.
The output file is rewritten atomically as points finish; a rerun with the same arguments resumes it.
"""

from __future__ import annotations

import dataclasses

import datetime
import itertools
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lut import PART_AXES, LatencyTable, SubTable, table_key
from vitrt.compiler.timing import Timing, check_clock, typical_ms

# Grid presets. "coarse" builds on a 2-core CPU in minutes; "dense" is NViT's grid (heads {1,3,6,9,12},
# qk/v 16..64, MLP in steps of 128 up to 3072) for a GPU; "tiny" is for tests (patch 8, 10 classes).
GRIDS = {
    "coarse": {
        "emb": [192, 384, 768], "heads": [1, 3, 6, 12], "qk": [32, 64], "v": [32, 64],
        "tokens": [50, 100, 150, 198], "mlp": [384, 768, 1536, 3072], "patches": [49, 196],
        "patch": 16, "num_classes": 1000,
    },
    "dense": {
        "emb": [192, 384, 768], "heads": [1, 3, 6, 9, 12], "qk": [16, 32, 48, 64], "v": [16, 32, 48, 64],
        "tokens": [50, 100, 150, 198], "mlp": list(range(128, 3072 + 1, 128)), "patches": [49, 100, 196],
        "patch": 16, "num_classes": 1000,
    },
    "tiny": {
        "emb": [32, 64], "heads": [1, 2], "qk": [16, 32], "v": [16, 32], "tokens": [9, 17], "mlp": [64, 128],
        "patches": [4, 16], "patch": 8, "num_classes": 10,
    },
}
GRID_FIELDS = ("emb", "heads", "qk", "v", "tokens", "mlp", "patches", "patch", "num_classes")



LUT_TIMING = Timing(warmup=2, iterations=5, min_seconds=0.1)  # tiny subgraphs repeat for 0.1 s


def grid_of(preset) -> dict:
    """A preset name or an explicit grid dict (all of GRID_FIELDS) → a validated grid dict."""
    grid = GRIDS.get(preset) if isinstance(preset, str) else preset
    if grid is None:
        raise VitrtError(f"unknown grid preset '{preset}': choose one of {', '.join(GRIDS)}")
    missing = [f for f in GRID_FIELDS if f not in grid]
    if missing:
        raise VitrtError(f"grid lacks {', '.join(missing)}")
    for name in ("emb", "heads", "qk", "v", "tokens", "mlp", "patches"):
        values = grid[name]
        if not values or any(int(x) <= 0 for x in values) or list(values) != sorted(set(values)):
            raise VitrtError(f"grid axis '{name}' must be strictly increasing positive ints, got {values}")
        if name == "patches" and any(math.isqrt(p) ** 2 != p for p in values):
            raise VitrtError(f"grid axis 'patches' must hold square numbers, got {values}")
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in grid.items()}


def part_axes(grid: dict, part: str) -> dict[str, list[int]]:
    return {a: list(grid[a]) for a in PART_AXES[part]}


# --- subgraphs -----------------------------------------------------------------------------------
def _export(graph, opset: int):
    import onnx
    import onnx_graphsurgeon as gs

    from vitrt.compiler.lower import ir_version_for

    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model.ir_version = ir_version_for(opset)
    model.producer_name = "vitrt.lut"
    onnx.checker.check_model(model)
    return model


def _tokens_graph(batch: int, tokens: int, emb: int, opset: int, weights: dict):
    import onnx_graphsurgeon as gs

    from vitrt.compiler.lower import GraphEmitter

    graph = gs.Graph(name="lut", opset=opset)
    x = gs.Variable("x", dtype=np.float32, shape=(batch, tokens, emb))
    graph.inputs = [x]
    return graph, GraphEmitter(graph, weights), x


def block_model(*, batch: int, emb: int, tokens: int, heads=0, qk=0, v=0, mlp=0, seed=0, opset=17):
    """One canonical block (``heads == 0`` / ``mlp == 0`` leave out that half), random weights."""
    import torch

    from vitrt.compiler.lower import emit_block
    from vitrt.compiler.spec import BlockSpec
    from vitrt.compiler.twin import CanonicalBlock
    from vitrt.compiler.weights import module_initializers

    torch.manual_seed(seed)
    spec = BlockSpec(heads=heads, qk=qk if heads else 0, v=v if heads else 0, mlp=mlp, tokens=tokens,
                     scale=1.0 / math.sqrt(qk) if heads else 1.0)
    block = CanonicalBlock(emb, spec, 1e-6)
    graph, e, x = _tokens_graph(batch, tokens, emb, opset, module_initializers(block, "blocks.0"))
    y = emit_block(e, x, 0, block)
    y.name, y.shape = "y", (batch, tokens, emb)
    graph.outputs = [y]
    return _export(graph, opset), np.random.default_rng(seed).standard_normal((batch, tokens, emb), np.float32)


def half_block_model(part: str, *, batch: int, emb: int, tokens: int, heads=0, qk=0, v=0, mlp=0, seed=0,
                     opset=17):
    """The canonical attention half (``part='attn'``) or MLP half (``'mlp'``) of one block, random weights."""
    if part == "attn":
        return block_model(batch=batch, emb=emb, tokens=tokens, heads=heads, qk=qk, v=v, seed=seed, opset=opset)
    return block_model(batch=batch, emb=emb, tokens=tokens, mlp=mlp, seed=seed, opset=opset)


def _stem_head_twin(emb: int, patches: int, grid: dict, distilled: bool = False):
    import torch

    from vitrt.compiler.spec import BlockSpec, ViTSpec
    from vitrt.compiler.twin import CanonicalViT

    side = math.isqrt(patches)
    prefix = 1 + int(distilled)
    spec = ViTSpec(emb=emb, patch=grid["patch"], img=grid["patch"] * side, in_chans=3, prefix_tokens=prefix,
                   num_classes=grid["num_classes"], distilled=distilled,
                   blocks=(BlockSpec(heads=0, qk=0, v=0, mlp=1, tokens=prefix + patches, scale=1.0),))
    with torch.no_grad():
        twin = CanonicalViT(spec)
        for p in (twin.cls_token, twin.pos_embed):
            p.normal_(0, 0.02)
    return twin


def stem_model(*, batch: int, emb: int, patches: int, grid: dict, seed=0, opset=17):
    import onnx_graphsurgeon as gs
    import torch

    from vitrt.compiler.lower import GraphEmitter, emit_stem
    from vitrt.compiler.weights import twin_initializers

    torch.manual_seed(seed)
    twin = _stem_head_twin(emb, patches, grid)
    spec = twin.spec
    graph = gs.Graph(name="lut", opset=opset)
    images = gs.Variable("images", dtype=np.float32, shape=(batch, 3, spec.img, spec.img))
    graph.inputs = [images]
    y = emit_stem(GraphEmitter(graph, twin_initializers(twin)), images, spec, batch)
    y.name, y.shape = "y", (batch, spec.tokens, emb)
    graph.outputs = [y]
    return _export(graph, opset), np.random.default_rng(seed).standard_normal((batch, 3, spec.img, spec.img), np.float32)


def head_model(*, batch: int, emb: int, tokens: int, grid: dict, distilled=False, seed=0, opset=17):
    import torch

    from vitrt.compiler.lower import emit_head
    from vitrt.compiler.weights import twin_initializers

    torch.manual_seed(seed)
    twin = _stem_head_twin(emb, 4, grid, distilled)
    graph, e, x = _tokens_graph(batch, tokens, emb, opset, twin_initializers(twin))
    y = emit_head(e, x, twin.spec)
    y.name, y.shape = "y", (batch, grid["num_classes"])
    graph.outputs = [y]
    return _export(graph, opset), np.random.default_rng(seed).standard_normal((batch, tokens, emb), np.float32)


def overhead_model(opset=17):
    """The cheapest graph a runtime can run: its latency is the fixed per-call overhead."""
    import onnx_graphsurgeon as gs

    graph = gs.Graph(name="lut_overhead", opset=opset)
    x = gs.Variable("x", dtype=np.float32, shape=(1,))
    graph.inputs = [x]
    y = gs.Variable("y", dtype=np.float32, shape=(1,))
    graph.nodes.append(gs.Node("Neg", "neg", inputs=[x], outputs=[y]))
    graph.outputs = [y]
    return _export(graph, opset), np.ones((1,), np.float32)


def part_model(part: str, point: dict, *, batch: int, grid: dict, seed=0):
    if part in ("attn", "mlp"):
        return half_block_model(part, batch=batch, seed=seed, **point)
    if part == "stem":
        return stem_model(batch=batch, grid=grid, seed=seed, **point)
    return head_model(batch=batch, grid=grid, distilled=part == "head_distilled", seed=seed, **point)


# --- timing ----------------------------------------------------------------------------------
class Timer:
    """Times ONNX models on one backend: build the artifact, load a runner, median of a few runs."""

    def __init__(self, backend_name: str, timing: Timing = LUT_TIMING, threads: int | None = None,
                 device: str | None = None, sparse_weights: bool = False):
        from vitrt.compiler.backends import BuildOptions, get_backend

        check_clock(timing.clock, backend_name, threads, device)
        self.backend = get_backend(backend_name, device)
        self.options = BuildOptions(threads=threads, device=device or "cpu", sparse_weights=sparse_weights)
        self.timing = timing
        self._dir = tempfile.TemporaryDirectory(prefix="vitrt-lut-")

    def time_model(self, model, inputs: np.ndarray) -> float:
        import onnx

        work = Path(self._dir.name)
        for f in work.iterdir():
            f.unlink()
        path = work / "part.onnx"
        onnx.save(model, str(path))
        artifact = self.backend.build(path, work, self.options)
        runner = self.backend.load(artifact, self.options)
        return typical_ms(runner.latency_samples(inputs, self.timing), self.timing.clock)

    def overhead_ms(self) -> float:
        model, x = overhead_model()
        saved = self.timing
        self.timing = dataclasses.replace(saved, warmup=20, iterations=200, min_seconds=0.2)
        try:
            return self.time_model(model, x)
        finally:
            self.timing = saved

    def close(self):
        self._dir.cleanup()


def grid_points(grid: dict, part: str):
    """(index tuple, point dict) for every point of one sub-table, in array order."""
    axes = part_axes(grid, part)
    names = list(axes)
    for index in itertools.product(*(range(len(v)) for v in axes.values())):
        yield index, {n: axes[n][i] for n, i in zip(names, index)}


def library_versions(backend: str) -> dict:
    import onnx

    from vitrt._version import __version__

    versions = {"vitrt": __version__, "onnx": onnx.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    try:
        if backend == "ort":
            import onnxruntime

            versions["onnxruntime"] = onnxruntime.__version__
        elif backend == "trt":
            import tensorrt

            versions["tensorrt"] = tensorrt.__version__
        elif backend == "torch":
            import torch

            versions["torch"] = torch.__version__
            versions["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return versions


def new_table(backend: str, device: str, batch: int, grid: dict, preset: str, precision: str, sparsity: str,
              threads) -> LatencyTable:
    parts = {name: SubTable(part_axes(grid, name), np.full([len(v) for v in part_axes(grid, name).values()], np.nan))
             for name in PART_AXES}
    meta = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "libraries": library_versions(backend), "grid_preset": preset, "grid": grid,
            "threads": threads or "runtime default", "complete": False,
            "provenance": {table_key(precision, sparsity): "grid measurement (vitrt lut build): every value in "
                                                           "'tables' was timed on this device; refined values live in "
                                                           "'points' with their sources"}}
    return LatencyTable(backend=backend, device=device, batch=batch, tables={table_key(precision, sparsity): parts},
                        patch=grid["patch"], in_chans=3, num_classes=grid["num_classes"], meta=meta)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``K/N`` (0 <= K < N) -> (K, N); ``env`` reads the launcher's variables: RANK / WORLD_SIZE (torchrun),
    else SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (a Slurm array); None: the whole grid."""
    import os

    if text is None:
        return None
    if text == "env":
        for index, count in (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")):
            if index in os.environ and count in os.environ:
                text = f"{os.environ[index]}/{os.environ[count]}"
                break
        else:
            raise VitrtError("--shard env needs RANK and WORLD_SIZE (torchrun) or SLURM_ARRAY_TASK_ID and "
                             "SLURM_ARRAY_TASK_COUNT (a Slurm array) in the environment")
    k, _, n = str(text).partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        raise VitrtError(f"--shard must be K/N (0 <= K < N) or env, got '{text}'") from None
    if not 0 <= k < n:
        raise VitrtError(f"--shard {text}: K must satisfy 0 <= K < N")
    return k, n


def shard_path(out, shard: tuple[int, int] | None) -> Path:
    """The file a shard writes: ``lut.json`` -> ``lut.part2-of-4.json`` (merge them with vitrt lut merge)."""
    out = Path(out)
    if shard is None:
        return out
    return out.with_name(f"{out.stem}.part{shard[0]}-of-{shard[1]}{out.suffix}")


def shard_points(grid: dict, shard: tuple[int, int] | None):
    """Every (part, index, point) of the grid in table order; a shard takes every N-th, starting at K."""
    points = [(name, index, point) for name in PART_AXES for index, point in grid_points(grid, name)]
    return points if shard is None else points[shard[0]::shard[1]]


def build_table(out, *, backend: str = "ort", grid="coarse", batch: int = 1, precision: str = "fp32",
                sparsity: str = "dense", threads: int | None = None, timing: Timing = LUT_TIMING,
                seed: int = 0, progress=None, save_every_s: float = 5.0, device: str | None = None,
                shard: tuple[int, int] | None = None) -> LatencyTable:
    """Time every grid point (resuming a partial ``out`` of the same build) and save the table to ``out``.

    ``timing.clock`` is the table's clock (wall; cpu with ``threads=1``; cuda for the torch backend on a GPU).
    ``precision`` / ``sparsity`` select the compiler rewrites applied to every timed subgraph
    (:mod:`vitrt.benchmarks.lut_variants`). ``shard=(K, N)`` times only every N-th point from the K-th and writes
    a partial table to :func:`shard_path` (``vitrt lut merge`` joins the N parts)."""
    from vitrt.benchmarks.lut_variants import check_variant, variant_model
    from vitrt.compiler.progress import QUIET

    progress = progress or QUIET
    preset = grid if isinstance(grid, str) else "custom"
    grid = grid_of(grid)
    check_variant(precision, sparsity)
    if batch < 1:
        raise VitrtError(f"--batch must be >= 1, got {batch}")
    out = shard_path(out, shard)
    clock = timing.clock
    timer = Timer(backend, timing, threads, device, sparse_weights=sparsity == "2:4")
    try:
        device_name = timer.backend.device_name()
        key = table_key(precision, sparsity)
        table = _resume(out, backend, device_name, batch, grid, key, clock, shard)
        if table is None:
            table = new_table(backend, device_name, batch, grid, preset, precision, sparsity, threads)
            table.clock = clock
            if shard is not None:
                table.meta["shard"] = {"index": shard[0], "count": shard[1]}
            table.overhead_ms = timer.overhead_ms()
            table.meta["build_seconds"] = 0.0
            table.save(out)
        else:
            progress.log(f"resuming {out}")
        parts = table.tables[key]
        todo = [(name, index, point) for name, index, point in shard_points(grid, shard)
                if not np.isfinite(parts[name].ms[index])]
        start, last_save = time.perf_counter(), time.perf_counter()
        spent = float(table.meta.get("build_seconds", 0.0))
        with progress.bar(len(todo), f"timing {len(todo)} grid points on {backend}") as bar:
            try:
                for name, index, point in todo:
                    model, x = part_model(name, point, batch=batch, grid=grid, seed=seed)
                    model = variant_model(model, x, precision, sparsity)
                    parts[name].ms[index] = max(timer.time_model(model, x) - table.overhead_ms, 0.0)
                    bar.update(1)
                    if time.perf_counter() - last_save > save_every_s:
                        table.meta["build_seconds"] = round(spent + time.perf_counter() - start, 1)
                        table.save(out)
                        last_save = time.perf_counter()
            except KeyboardInterrupt:
                table.meta["build_seconds"] = round(spent + time.perf_counter() - start, 1)
                table.save(out)
                done = sum(int(np.isfinite(p.ms).sum()) for p in parts.values())
                raise VitrtError(f"interrupted: {done} grid points are saved in '{out}'; run the same command again "
                                 "to resume") from None
        table.meta["build_seconds"] = round(spent + time.perf_counter() - start, 1)
        table.meta["complete"] = True
        for part in parts.values():
            part._interp = None
        table.save(out)
        return table
    finally:
        timer.close()


def _resume(out: Path, backend: str, device: str, batch: int, grid: dict, key: str,
            timer_clock: str = "wall", shard: tuple[int, int] | None = None) -> LatencyTable | None:
    if not out.exists():
        return None
    table = LatencyTable.load(out)
    same = (table.backend == backend and table.device == device and table.batch == batch and table.clock == timer_clock
            and table.meta.get("grid") == grid and key in table.tables
            and table.meta.get("shard") == ({"index": shard[0], "count": shard[1]} if shard else None))
    if not same:
        raise VitrtError(f"'{out}' holds a different table (backend/device/batch/grid/shard); choose another -o or "
                         "delete it")
    if table.meta.get("complete"):
        raise VitrtError(f"'{out}' is already a complete table; choose another -o or delete it to rebuild")
    return table
