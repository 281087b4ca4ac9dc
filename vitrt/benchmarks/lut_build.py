"""Build a latency table by timing the canonical block halves, stem, head, token merge and linear layers on a grid,
on a real backend, for one ``precision/sparsity`` key.

Every timed subgraph is emitted by the lowering's own emitter (``emit_block`` / ``emit_stem`` / ``emit_head`` /
``linear``) from a tiny torch twin with random weights, and then rewritten by the passes a compile of that key runs
(:mod:`vitrt.benchmarks.lut_passes`: 2:4 masks, Q/DQ, precision typing, with plans made for that twin), so the table
times exactly the nodes the compiler emits for that configuration::

    attn point:    x[B, tokens, emb] ─► emit_block(heads=h, qk, v, mlp=0) ─► y     (norm1 … residual1)
    mlp point:     x[B, tokens, emb] ─► emit_block(heads=0, mlp=m)        ─► y     (norm2 … residual2)
    stem point:    images[B, 3, p·g, p·g] ─► emit_stem ─► tokens                   (patches = g²)
    head point:    x[B, tokens, emb] ─► emit_head ─► logits
    linear point:  x[B, tokens, k] ─► MatMul(W[k, n]) + b ─► y                      (fp32/dense only)
    lowrank point: x[B, tokens, k] ─► MatMul(U[k, r]) ─► MatMul(V[r, n]) + b ─► y  (the low-rank pass's rewrite)
    merge point:   two 2-block models that differ only in whether block 1 merges ``merged`` of its ``tokens``
                   (the token-merge pass; block 0 merges first where needed to reach ``tokens``): the difference

Each point: ``backend.build`` → ``backend.load`` → the timing loop (median of a few runs on the wall clock, least
CPU time on the cpu clock). The runtime's fixed per-call overhead (an empty graph's latency) is measured once and
subtracted (a merge point is a difference and pays no overhead). Points a grid cannot hold are timed at the
nearest configuration that exists: a merge of more than half the mergeable tokens at that half, a rank above
min(k, n) at min(k, n). One file holds any number of keys (``--precision`` / ``--sparsity``): building another key
into an existing table adds it. The file is rewritten atomically as points finish; a rerun with the same
arguments resumes it.
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

from vitrt.compiler.errors import Interrupted, VitrtError
from vitrt.benchmarks.lut_passes import TimedGraph, compiled_model, with_key_passes
from vitrt.compiler.lut import (OPTIONAL_PARTS, PART_AXES, REQUIRED_PARTS, RUNTIME_DEFAULT_THREADS, LatencyTable,
                               SubTable, table_key)
from vitrt.compiler.timing import Timing, check_clock, measure, typical_ms

# Grid presets. "coarse" builds on a 2-core CPU in minutes; "dense" is NViT's grid (heads {1,3,6,9,12},
# qk/v 16..64, MLP in steps of 128 up to 3072) for a GPU; "tiny" is for tests (patch 8, 10 classes).
GRIDS = {
    "coarse": {
        "emb": [192, 384, 768], "heads": [1, 3, 6, 12], "qk": [32, 64], "v": [32, 64],
        "tokens": [50, 100, 150, 198], "mlp": [384, 768, 1536, 3072], "patches": [49, 196],
        "patch": 16, "num_classes": 1000,
        "keys": [64, 384, 768], "merged": [1, 16, 48, 96], "features": [192, 768, 3072], "rank": [32, 128, 512],
    },
    "dense": {
        "emb": [192, 384, 768], "heads": [1, 3, 6, 9, 12], "qk": [16, 32, 48, 64], "v": [16, 32, 48, 64],
        "tokens": [50, 100, 150, 198], "mlp": list(range(128, 3072 + 1, 128)), "patches": [49, 100, 196],
        "patch": 16, "num_classes": 1000,
    },
    "tiny": {
        "emb": [32, 64], "heads": [1, 2], "qk": [16, 32], "v": [16, 32], "tokens": [9, 17], "mlp": [64, 128],
        "patches": [4, 16], "patch": 8, "num_classes": 10,
        "keys": [64], "merged": [8], "features": [16, 64], "rank": [8, 16],
    },
    # The digits reference (emb 64, 2 heads of 32, MLP 256, 65 tokens, patch 4, 10 classes) and everything pruning,
    # token merging and low rank make of it: tokens down to 3 (merged away), dims down to the pruning minima.
    "digits": {
        "emb": [16, 32, 48, 64], "heads": [1, 2], "qk": [16, 32], "v": [16, 32],
        "tokens": [3, 5, 9, 17, 25, 33, 41, 49, 57, 65], "mlp": [16, 64, 128, 192, 256], "patches": [64],
        "patch": 4, "num_classes": 10,
        "keys": [16, 64], "merged": [1, 8, 32], "features": [16, 64, 256], "rank": [8, 16, 32],
    },
}
GRID_FIELDS = ("emb", "heads", "qk", "v", "tokens", "mlp", "patches", "patch", "num_classes")
# Axes of the optional sub-tables; a grid without them builds none of those parts.
OPTIONAL_GRID_FIELDS = {"merge": ("keys", "merged"), "linear": ("features",), "lowrank": ("features", "rank")}
AXIS_SOURCE = {"k": "features", "n": "features"}  # axes whose values come from another grid field
LOWRANK_KEYS = ("fp32/dense",)  # factored layers are neither quantized, typed nor masked (transforms.lowrank)



LUT_TIMING = Timing(warmup=2, iterations=5, min_seconds=0.1)  # tiny subgraphs repeat for 0.1 s


def grid_of(preset) -> dict:
    """A preset name or an explicit grid dict (all of GRID_FIELDS) → a validated grid dict."""
    grid = GRIDS.get(preset) if isinstance(preset, str) else preset
    if grid is None:
        raise VitrtError(f"unknown grid preset '{preset}': choose one of {', '.join(GRIDS)}")
    missing = [f for f in GRID_FIELDS if f not in grid]
    if missing:
        raise VitrtError(f"grid lacks {', '.join(missing)}")
    for name in ("emb", "heads", "qk", "v", "tokens", "mlp", "patches",
                 *(f for fields in OPTIONAL_GRID_FIELDS.values() for f in fields if f in grid)):
        values = grid[name]
        if not values or any(int(x) <= 0 for x in values) or list(values) != sorted(set(values)):
            raise VitrtError(f"grid axis '{name}' must be strictly increasing positive ints, got {values}")
        if name == "patches" and any(math.isqrt(p) ** 2 != p for p in values):
            raise VitrtError(f"grid axis 'patches' must hold square numbers, got {values}")
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in grid.items()}


def part_axes(grid: dict, part: str) -> dict[str, list[int]]:
    return {a: list(grid[AXIS_SOURCE.get(a, a)]) for a in PART_AXES[part]}


def parts_for(grid: dict, key: str) -> list[str]:
    """The sub-tables a build of ``key`` on ``grid`` measures: the required ones, and the optional ones whose axes
    the grid has (low rank only for the keys the low-rank transform composes with)."""
    parts = list(REQUIRED_PARTS)
    for part in OPTIONAL_PARTS:
        if all(f in grid for f in OPTIONAL_GRID_FIELDS[part]) and (part == "merge" or key in LOWRANK_KEYS):
            parts.append(part)
    return parts


# --- subgraphs -----------------------------------------------------------------------------------
def _export(graph, opset: int):
    import onnx
    import onnx_graphsurgeon as gs

    from vitrt.compiler.lower import ir_version_for

    graph.cleanup().toposort()
    opset = max(opset, graph.opset)  # a Q/DQ pass may have raised it
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


def _inputs(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


def block_twin(*, emb: int, heads=0, qk=0, v=0, mlp=0, patch: int = 4, seed=0):
    """A one-block CanonicalViT (one patch) with random weights: the twin the block half's planners plan on."""
    import torch

    from vitrt.compiler.spec import BlockSpec, ViTSpec
    from vitrt.compiler.twin import CanonicalViT

    torch.manual_seed(seed)
    block = BlockSpec(heads=heads, qk=qk if heads else 0, v=v if heads else 0, mlp=mlp, tokens=2,
                      scale=1.0 / math.sqrt(qk) if heads else 1.0)
    return CanonicalViT(ViTSpec(emb=emb, patch=patch, img=patch, in_chans=3, prefix_tokens=1, num_classes=10,
                                blocks=(block,))).eval()


def _block_graph(twin, *, batch: int, tokens: int, opset: int) -> TimedGraph:
    """Block 0 of ``twin`` emitted for ``tokens`` tokens (x[B, tokens, emb] in, the block's output out)."""
    import copy

    from vitrt.compiler.lower import emit_block
    from vitrt.compiler.weights import module_initializers

    emb = twin.spec.emb
    block = copy.copy(twin.blocks[0])  # the same modules; only the token count of its reshapes differs
    block.spec = dataclasses.replace(block.spec, tokens=tokens)
    graph, e, x = _tokens_graph(batch, tokens, emb, opset, module_initializers(twin.blocks[0], "blocks.0"))
    y = emit_block(e, x, 0, block)
    y.name, y.shape = "y", (batch, tokens, emb)
    graph.outputs = [y]
    layers = tuple(f"blocks.0.{local}" for local in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")
                   if (local.startswith("attn") and block.attn is not None) or (local.startswith("mlp")
                                                                              and block.mlp is not None))
    return TimedGraph(graph, _inputs((batch, tokens, emb), 0), twin, layers)


def block_model(*, batch: int, emb: int, tokens: int, heads=0, qk=0, v=0, mlp=0, seed=0, opset=17,
                precision="fp32", sparsity="dense", backend="ort"):
    """One canonical block (``heads == 0`` / ``mlp == 0`` leave out that half), random weights, after the key's
    passes; returns (ONNX model, input)."""
    twin = block_twin(emb=emb, heads=heads, qk=qk, v=v, mlp=mlp, seed=seed)
    return _finish(_block_graph(twin, batch=batch, tokens=tokens, opset=opset), precision, sparsity, backend, opset)


def half_block_model(part: str, *, batch: int, emb: int, tokens: int, heads=0, qk=0, v=0, mlp=0, seed=0,
                     opset=17, **key):
    """The canonical attention half (``part='attn'``) or MLP half (``'mlp'``) of one block, random weights."""
    if part == "attn":
        return block_model(batch=batch, emb=emb, tokens=tokens, heads=heads, qk=qk, v=v, seed=seed, opset=opset, **key)
    return block_model(batch=batch, emb=emb, tokens=tokens, mlp=mlp, seed=seed, opset=opset, **key)


def _finish(sub: TimedGraph, precision: str, sparsity: str, backend: str, opset: int):
    graph, inputs = with_key_passes(sub, precision, sparsity, backend=backend, opset=opset)
    return _export(graph, opset), inputs


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
    return twin.eval()


def stem_model(*, batch: int, emb: int, patches: int, grid: dict, seed=0, opset=17, precision="fp32",
               sparsity="dense", backend="ort"):
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
    sub = TimedGraph(graph, _inputs((batch, 3, spec.img, spec.img), seed), twin, ("patch_embed",), model_input=True)
    return _finish(sub, precision, sparsity, backend, opset)


def head_model(*, batch: int, emb: int, tokens: int, grid: dict, distilled=False, seed=0, opset=17,
               precision="fp32", sparsity="dense", backend="ort"):
    import torch

    from vitrt.compiler.lower import emit_head
    from vitrt.compiler.weights import twin_initializers

    torch.manual_seed(seed)
    twin = _stem_head_twin(emb, 4, grid, distilled)
    graph, e, x = _tokens_graph(batch, tokens, emb, opset, twin_initializers(twin))
    y = emit_head(e, x, twin.spec)
    y.name, y.shape = "y", (batch, grid["num_classes"])
    graph.outputs = [y]
    sub = TimedGraph(graph, _inputs((batch, tokens, emb), seed), twin, ("head", "head_dist") if distilled else ("head",),
                     model_output=True)
    return _finish(sub, precision, sparsity, backend, opset)


def linear_model(*, batch: int, tokens: int, k: int, n: int, rank: int | None = None, seed=0, opset=17,
                 precision="fp32", sparsity="dense", backend="ort"):
    """One linear layer x[B, tokens, k] · W[k, n] + b (the MLP's fc1 of a block with emb k, MLP n) or, with
    ``rank``, the same layer after the low-rank pass's rewrite at that rank (at most min(k, n))."""
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.weights import module_initializers
    from vitrt.transforms.lowrank.graph_pass import factor_graph
    from vitrt.transforms.lowrank.planner import plan_with_ranks

    twin = block_twin(emb=k, mlp=n, seed=seed)
    name = "blocks.0.mlp.fc1"
    graph, e, x = _tokens_graph(batch, tokens, k, opset, module_initializers(twin.blocks[0], "blocks.0"))
    y = e.linear(x, name)
    y.name, y.shape = "y", (batch, tokens, n)
    graph.outputs = [y]
    if rank is not None:
        factor_graph(GraphView(graph, twin.spec, validate=False), plan_with_ranks(twin, {name: min(rank, k, n)}))
    return _finish(TimedGraph(graph, _inputs((batch, tokens, k), seed), twin, (name,)), precision, sparsity,
                   backend, opset)


def merge_models(*, batch: int, emb: int, keys: int, tokens: int, merged: int, grid: dict, seed=0, opset=17,
                 precision="fp32", sparsity="dense", backend="ort"):
    """((model, input) without, (model, input) with) block 1 merging ``merged`` of its ``tokens`` tokens (capped at
    half the mergeable ones): two-block ViTs whose patch grid is the smallest square holding ``tokens - 1``
    patches, block 0 merging the surplus first (heads 1 of ``keys`` dims; no MLPs, which would shrink with the
    merge). Both go through the token-merge pass and the key's passes over the whole model."""
    import torch

    from vitrt.compiler.spec import BlockSpec, ViTSpec
    from vitrt.compiler.twin import CanonicalViT
    from vitrt.transforms.tome.graph_pass import TokenMergePass
    from vitrt.transforms.tome.schedule import TomeSchedule, resolve

    side = math.isqrt(tokens - 2) + 1 if tokens > 2 else 1
    surplus = side * side + 1 - tokens
    merged = min(merged, (tokens - 1) // 2)  # >= 1: time_point does not time a point that cannot merge
    torch.manual_seed(seed)
    blocks = tuple(BlockSpec(heads=1, qk=keys, v=16, mlp=0, tokens=t, scale=1.0 / math.sqrt(keys))
                   for t in (side * side + 1, tokens))
    spec = ViTSpec(emb=emb, patch=grid["patch"], img=grid["patch"] * side, in_chans=3, prefix_tokens=1,
                   num_classes=grid["num_classes"], blocks=blocks)
    twin = CanonicalViT(spec.with_blocks([dataclasses.replace(b, tokens=side * side + 1) for b in blocks])).eval()
    images = _inputs((batch, 3, spec.img, spec.img), seed)
    out = []
    for r in (0, merged):
        schedule = resolve(TomeSchedule(per_block=(surplus, r)), twin.spec)
        passes = [TokenMergePass(schedule)] if schedule.merges_anything else []
        out.append((compiled_model(twin, batch, passes, precision, sparsity, backend=backend, opset=opset), images))
    return out[0], out[1]


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


def part_model(part: str, point: dict, *, batch: int, grid: dict, seed=0, **key):
    """(ONNX model, input) of one grid point of ``part`` after the key's passes (``key``: precision, sparsity,
    backend); not for ``merge``, which is a difference of two models (:func:`merge_models`)."""
    if part in ("attn", "mlp"):
        return half_block_model(part, batch=batch, seed=seed, **point, **key)
    if part == "stem":
        return stem_model(batch=batch, grid=grid, seed=seed, **point, **key)
    if part in ("linear", "lowrank"):
        return linear_model(batch=batch, seed=seed, **point, **key)
    return head_model(batch=batch, grid=grid, distilled=part == "head_distilled", seed=seed, **point, **key)


def time_point(timer, part: str, point: dict, *, batch: int, grid: dict, overhead_ms: float, seed=0, **key) -> float:
    """The table value of one grid point: its time less the runtime overhead (a merge: the difference of two)."""
    if part == "merge":
        if (point["tokens"] - 1) // 2 == 0:  # nothing can merge (one patch): timed "at that half", no merge
            return 0.0
        without, with_merge = merge_models(batch=batch, grid=grid, seed=seed, **point, **key)
        return max(timer.time_model(*with_merge) - timer.time_model(*without), 0.0)
    return max(timer.time_model(*part_model(part, point, batch=batch, grid=grid, seed=seed, **key)) - overhead_ms, 0.0)


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
        """Build ``model``'s artifact, load it and time it. A block half inside a typed model takes typed (fp16 /
        bf16) activations: the torch runner takes them as they are, TensorRT's binds its engine's input type; ONNX
        Runtime's runner takes fp32 images, so there such a subgraph runs in a session of its artifact."""
        import onnx

        work = Path(self._dir.name)
        for f in work.iterdir():
            f.unlink()
        path = work / "part.onnx"
        onnx.save(model, str(path))
        artifact = self.backend.build(path, work, self.options)
        if inputs.dtype != np.float32 and self.backend.name == "ort":
            from vitrt.compiler.backends.ort import ort_session

            session = ort_session(artifact, threads=self.options.threads)
            feed = {session.get_inputs()[0].name: inputs}
            return measure(lambda: session.run(None, feed), self.timing)
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


def new_parts(grid: dict, key: str) -> dict[str, SubTable]:
    """Empty (NaN) sub-tables of every part a build of ``key`` on ``grid`` measures."""
    return {name: SubTable(part_axes(grid, name), np.full([len(v) for v in part_axes(grid, name).values()], np.nan))
            for name in parts_for(grid, key)}


def new_table(backend: str, device: str, batch: int, grid: dict, preset: str, precision: str, sparsity: str,
              threads) -> LatencyTable:
    key = table_key(precision, sparsity)
    meta = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "libraries": library_versions(backend), "grid_preset": preset, "grid": grid,
            "threads": threads or RUNTIME_DEFAULT_THREADS, "complete": False, "provenance": {}}
    table = LatencyTable(backend=backend, device=device, batch=batch, tables={}, patch=grid["patch"], in_chans=3,
                         num_classes=grid["num_classes"], meta=meta)
    add_key(table, grid, key)
    return table


def add_key(table: LatencyTable, grid: dict, key: str) -> None:
    """Add ``key``'s empty sub-tables to ``table`` (a build then measures them)."""
    table.tables[key] = new_parts(grid, key)
    table.meta.setdefault("provenance", {})[key] = (
        "grid measurement (vitrt lut build): every value was timed on this device after the passes a compile of "
        f"{key} runs (vitrt.benchmarks.lut_passes); refined values live in 'points' with their sources")
    table.meta["complete"] = False


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


def shard_points(grid: dict, shard: tuple[int, int] | None, parts=PART_AXES):
    """Every (part, index, point) of ``parts`` on the grid in table order; a shard takes every N-th, from the K-th."""
    points = [(name, index, point) for name in parts for index, point in grid_points(grid, name)]
    return points if shard is None else points[shard[0]::shard[1]]


def measured(parts: dict[str, SubTable], grid: dict, shard: tuple[int, int] | None) -> bool:
    """Whether every grid point of ``parts`` that the build (or its shard) times has a value."""
    return all(np.isfinite(parts[name].ms[index]) for name, index, _ in shard_points(grid, shard, parts))


def build_table(out, *, backend: str = "ort", grid="coarse", batch: int = 1, precision: str = "fp32",
                sparsity: str = "dense", threads: int | None = None, timing: Timing = LUT_TIMING,
                seed: int = 0, progress=None, save_every_s: float = 5.0, device: str | None = None,
                shard: tuple[int, int] | None = None) -> LatencyTable:
    """Time every grid point (resuming a partial ``out`` of the same build) and save the table to ``out``.

    ``timing.clock`` is the table's clock (wall; cpu with ``threads=1``; cuda for the torch backend on a GPU).
    ``precision`` / ``sparsity`` select the compiler rewrites applied to every timed subgraph
    (:mod:`vitrt.benchmarks.lut_passes`). ``shard=(K, N)`` times only every N-th point from the K-th and writes
    a partial table to :func:`shard_path` (``vitrt lut merge`` joins the N parts)."""
    from vitrt.compiler.progress import QUIET

    progress = progress or QUIET
    preset = grid if isinstance(grid, str) else "custom"
    grid = grid_of(grid)
    if batch < 1:
        raise VitrtError(f"--batch must be >= 1, got {batch}")
    if shard is not None and not 0 <= shard[0] < shard[1]:  # parse_shard checks the CLI's; this is the API's
        raise VitrtError(f"--shard {shard[0]}/{shard[1]}: K must satisfy 0 <= K < N")
    out = shard_path(out, shard)
    clock = timing.clock
    timer = Timer(backend, timing, threads, device, sparse_weights=sparsity == "2:4")
    try:
        device_name = timer.backend.device_name()
        key = table_key(precision, sparsity)
        table = _resume(out, backend, device_name, batch, grid, key, clock, shard, threads)
        if table is None:
            table = new_table(backend, device_name, batch, grid, preset, precision, sparsity, threads)
            table.clock = clock
            if shard is not None:
                table.meta["shard"] = {"index": shard[0], "count": shard[1]}
            table.overhead_ms = round(timer.overhead_ms(), 5)  # as saved: the returned table is the file's
            table.meta["build_seconds"] = 0.0
            table.save(out)
        else:
            progress.log(f"resuming {out}")
        parts = table.tables[key]
        todo = [(name, index, point) for name, index, point in shard_points(grid, shard, parts)
                if not np.isfinite(parts[name].ms[index])]
        passes_key = {"precision": precision, "sparsity": sparsity, "backend": backend}
        start, last_save = time.perf_counter(), time.perf_counter()
        spent = float(table.meta.get("build_seconds", 0.0))
        with progress.bar(len(todo), f"timing {len(todo)} grid points on {backend}") as bar:
            try:
                for name, index, point in todo:
                    ms = time_point(timer, name, point, batch=batch, grid=grid, overhead_ms=table.overhead_ms,
                                    seed=seed, **passes_key)
                    parts[name].ms[index] = round(ms, 5)  # as saved: the returned table is the file's
                    bar.update(1)
                    if time.perf_counter() - last_save > save_every_s:
                        table.meta["build_seconds"] = round(spent + time.perf_counter() - start, 1)
                        table.save(out)
                        last_save = time.perf_counter()
            except KeyboardInterrupt:
                table.meta["build_seconds"] = round(spent + time.perf_counter() - start, 1)
                table.save(out)
                done = sum(int(np.isfinite(p.ms).sum()) for p in parts.values())
                raise Interrupted(f"{done} grid points are saved in '{out}': run the same command again to "
                                  "resume") from None
        table.meta["build_seconds"] = round(spent + time.perf_counter() - start, 1)
        table.meta["complete"] = all(measured(parts_, grid, shard) for parts_ in table.tables.values())
        if note := table.record_inversions():
            progress.log(note)
        for part in parts.values():
            part._interp = None
        table.save(out)
        return table
    finally:
        timer.close()


def _resume(out: Path, backend: str, device: str, batch: int, grid: dict, key: str,
            timer_clock: str = "wall", shard: tuple[int, int] | None = None,
            threads: int | None = None) -> LatencyTable | None:
    """The table in ``out`` to continue: the same build interrupted, or another key of the same table (which
    gains ``key``). None when ``out`` does not exist."""
    if not out.exists():
        return None
    try:
        table = LatencyTable.load(out)
    except VitrtError:  # its own advice ("make one with vitrt lut build") is what was being done
        raise VitrtError(f"-o '{out}' exists and is not a vitrt latency table this build could resume; choose another "
                         "-o (or delete the file)") from None
    differ = [name for name, same in (
        ("backend", table.backend == backend), ("device", table.device == device), ("batch", table.batch == batch),
        ("clock", table.clock == timer_clock), ("grid", table.meta.get("grid") == grid),
        ("shard", table.meta.get("shard") == ({"index": shard[0], "count": shard[1]} if shard else None)),
        ("threads", table.threads == (threads or RUNTIME_DEFAULT_THREADS))) if not same]
    if differ:
        raise VitrtError(f"'{out}' holds a different table (its {', '.join(differ)} differ); rerun with its settings to "
                         "resume it, choose another -o, or delete it")
    if key not in table.tables:
        add_key(table, grid, key)
    elif measured(table.tables[key], grid, shard):
        raise VitrtError(f"'{out}' is already a complete table for {key}; choose another -o or delete it to rebuild")
    return table
