"""Sharded latency-table builds, ``vitrt lut merge``, and the precision × sparsity keys of a build."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from vitrt.benchmarks.lut_build import build_table, parse_shard, part_model, shard_path, shard_points, grid_of
from vitrt.benchmarks.lut_merge import merge_tables
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lut import LatencyTable
from vitrt.compiler.timing import Timing, check_clock
from vitrt.kernels import sparse24

FAST = Timing(warmup=0, iterations=1, min_seconds=0.0)


def _build(tmp_path, name, **kwargs):
    kwargs = {"backend": "ort", "grid": "tiny", "batch": 2, "threads": 1, "timing": FAST, **kwargs}
    return build_table(tmp_path / name, **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A whole tiny-grid build and the same build in 3 shards, merged."""
    tmp = tmp_path_factory.mktemp("shards")
    whole = _build(tmp, "whole.json")
    for k in range(3):
        _build(tmp, "lut.json", shard=(k, 3))
    paths = [shard_path(tmp / "lut.json", (k, 3)) for k in range(3)]
    shards = [LatencyTable.load(p) for p in paths]  # as written (the files are what merge reads)
    return tmp, whole, shards, paths, merge_tables(paths)


def test_shards_partition_the_grid_round_robin():
    grid = grid_of("tiny")
    every = shard_points(grid, None)
    parts = [shard_points(grid, (k, 4)) for k in range(4)]
    assert sorted(p[:2] for part in parts for p in part) == sorted(p[:2] for p in every)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_merge_of_the_shards_equals_a_whole_build(built):
    tmp, whole, shards, paths, merged = built
    assert [p.name for p in paths] == ["lut.part0-of-3.json", "lut.part1-of-3.json", "lut.part2-of-3.json"]
    assert merged.keys() == whole.keys() == ["fp32/dense"]
    assert (merged.backend, merged.device, merged.batch, merged.clock) == (whole.backend, whole.device, whole.batch,
                                                                           whole.clock)
    assert merged.meta["grid"] == whole.meta["grid"] and merged.meta["libraries"] == whole.meta["libraries"]
    for name, sub in whole.tables["fp32/dense"].items():
        got = merged.tables["fp32/dense"][name]
        assert got.axes == sub.axes and got.ms.shape == sub.ms.shape and got.complete
        # every merged value is the value its shard measured, nothing else
        owners = [np.isfinite(s.tables["fp32/dense"][name].ms) for s in shards]
        assert np.array_equal(sum(o.astype(int) for o in owners), np.ones(sub.ms.shape, int))
        for shard, owned in zip(shards, owners):
            assert np.array_equal(got.ms[owned], shard.tables["fp32/dense"][name].ms[owned])
    assert merged.overhead_ms == float(np.median([s.overhead_ms for s in shards]))
    assert [p["shard"] for p in merged.meta["parts"]] == [{"index": k, "count": 3} for k in range(3)]
    # the merged table answers like a whole one, and survives a save / load round trip
    merged.save(tmp / "merged.json")
    again = LatencyTable.load(tmp / "merged.json")
    query = dict(emb=48, heads=2, qk=24, v=24, mlp=96, tokens=13)
    assert again.block_ms(**query) == pytest.approx(merged.block_ms(**query))
    assert whole.block_ms(**query) > 0


def test_merge_refusals_are_one_line(built, tmp_path):
    tmp, whole, shards, paths, _ = built

    def refused(parts, match):
        with pytest.raises(VitrtError, match=match) as exc:
            merge_tables(parts)
        assert "\n" not in str(exc.value)

    refused(paths[:2], r"shard\(s\) \[2\] missing")
    refused([paths[0], paths[0], paths[1]], "repeated")
    refused(paths + [tmp / "whole.json"], "mix a whole table with shards")
    other_batch = _build(tmp_path, "b4.json", batch=4, shard=(2, 3))
    refused(paths[:2] + [shard_path(tmp_path / "b4.json", (2, 3))], "differs .* in batch: 4 vs 2")
    data = json.loads(paths[2].read_text())
    for field, value, match in (("clock", "cpu", "in clock"), ("backend", "trt", "in backend"),
                                ("device", "another CPU", "in device")):
        changed = dict(data, **{field: value})
        (tmp_path / f"{field}.json").write_text(json.dumps(changed))
        refused(paths[:2] + [tmp_path / f"{field}.json"], match)
    unfinished = dict(data, meta=dict(data["meta"], complete=False))
    (tmp_path / "unfinished.json").write_text(json.dumps(unfinished))
    refused(paths[:2] + [tmp_path / "unfinished.json"], "unfinished build")
    versions = dict(data, meta=dict(data["meta"], libraries=dict(data["meta"]["libraries"], onnxruntime="0.0")))
    (tmp_path / "versions.json").write_text(json.dumps(versions))
    refused(paths[:2] + [tmp_path / "versions.json"], "library versions")
    assert other_batch.batch == 4


def test_a_shard_resumes_and_refuses_another_shards_file(tmp_path):
    _build(tmp_path, "lut.json", shard=(0, 2))
    with pytest.raises(VitrtError, match="already a complete table"):
        _build(tmp_path, "lut.json", shard=(0, 2))
    (tmp_path / "lut.part1-of-2.json").write_text((tmp_path / "lut.part0-of-2.json").read_text())
    with pytest.raises(VitrtError, match="holds a different table"):
        _build(tmp_path, "lut.json", shard=(1, 2))


@pytest.mark.parametrize("text, env, expected", [
    ("1/4", {}, (1, 4)), ("0/1", {}, (0, 1)),
    ("env", {"RANK": "3", "WORLD_SIZE": "8"}, (3, 8)),
    ("env", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "5"}, (2, 5)),
])
def test_parse_shard(text, env, expected, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/2", "a/b", "3", "env"])
def test_bad_shards_are_one_line(text, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(VitrtError, match="--shard"):
        parse_shard(text)


def test_key_subgraphs_carry_the_compiles_rewrites():
    grid, point = grid_of("tiny"), {"emb": 64, "mlp": 128, "tokens": 17}

    def weights(model):
        return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}

    dense, _ = part_model("mlp", point, batch=2, grid=grid, precision="fp32", sparsity="dense", backend="ort")
    sparse, _ = part_model("mlp", point, batch=2, grid=grid, precision="fp32", sparsity="2:4", backend="ort")
    assert sparse24.is_2to4(weights(sparse)["blocks.0.mlp.fc1.weight"], 0)
    assert sparse24.is_2to4(weights(sparse)["blocks.0.mlp.fc2.weight"], 0)
    assert not sparse24.is_2to4(weights(dense)["blocks.0.mlp.fc1.weight"], 0)
    int8, _ = part_model("mlp", point, batch=2, grid=grid, precision="int8", sparsity="2:4", backend="ort")
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 4
    fc1 = weights(int8)["blocks.0.mlp.fc1.weight"]
    assert fc1.dtype == np.int8 and sparse24.is_2to4(fc1, 0)
    fp16, x = part_model("mlp", point, batch=2, grid=grid, precision="fp16", sparsity="dense", backend="ort")
    types = {i.name: i.data_type for i in fp16.graph.initializer}
    assert types["blocks.0.mlp.fc1.weight.fp16"] == onnx.TensorProto.FLOAT16 and x.dtype == np.float16


def test_a_precision_key_is_built_on_the_torch_backend(tmp_path):
    table = _build(tmp_path, "int8.json", backend="torch", precision="int8", sparsity="2:4")
    assert table.keys() == ["int8/2:4"] and table.backend == "torch" and "torch" in table.meta["libraries"]
    assert all(sub.complete for sub in table.tables["int8/2:4"].values())
    assert table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=17, precision="int8", sparsity="2:4") > 0


@pytest.mark.parametrize("clock, backend, threads, device, ok", [
    ("cpu", "ort", 1, None, True), ("cpu", "torch", 1, "cpu", True), ("cpu", "ort", None, None, False),
    ("cpu", "torch", 1, "cuda", False), ("cuda", "torch", None, "cuda:1", True), ("cuda", "ort", None, None, False),
    ("wall", "trt", None, None, True), ("cuda", "trt", None, None, True), ("cuda", "torch", None, "cpu", False),
])
def test_clock_needs_a_runtime_it_can_see(clock, backend, threads, device, ok):
    if ok:
        check_clock(clock, backend, threads, device)
    else:
        with pytest.raises(VitrtError, match=f"--clock {clock}"):
            check_clock(clock, backend, threads, device)


@pytest.mark.parametrize("backend, device, clock", [
    ("ort", None, "wall"), ("torch", None, "wall"), ("torch", "cpu", "wall"), ("torch", "cuda:local", "cuda"),
    ("trt", None, "cuda"),
])
def test_the_default_clock_is_cuda_events_on_a_gpu(backend, device, clock):
    """What --bench measures (a runner's own clock) is what lut build and bench default to, so tables and
    benchmarks of one backend agree without flags; the compile's bench clock says the same."""
    from vitrt.compiler.target import TargetConfig
    from vitrt.compiler.timing import default_clock
    from vitrt.pipeline.config import CheckConfig, CompileConfig

    assert default_clock(backend, device) == clock
    assert CompileConfig(target=TargetConfig(backend=backend, device=device)).bench_clock == clock
    assert CompileConfig(target=TargetConfig(backend=backend, device=device, threads=1),
                         checks=CheckConfig(bench=True, bench_clock="wall")).bench_clock == "wall"  # --bench-clock


class SizeTimer:
    """Times a model as its number of nodes (ms): the table arithmetic without a clock's noise."""

    def time_model(self, model, inputs):
        return float(len(model.graph.node))


def test_a_grid_point_is_its_time_less_the_per_call_overhead():
    """Each point holds the model's time less the runtime's per-call overhead (never negative); a merge point is
    the difference of the block with and without merging, where the overhead cancels."""
    from vitrt.benchmarks.lut_build import merge_models, time_point

    grid, timer = grid_of("tiny"), SizeTimer()
    point = {"emb": 32, "mlp": 64, "tokens": 9}
    model, inputs = part_model("mlp", point, batch=2, grid=grid)
    nodes = len(model.graph.node)
    assert time_point(timer, "mlp", point, batch=2, grid=grid, overhead_ms=1.5) == nodes - 1.5
    assert time_point(timer, "mlp", point, batch=2, grid=grid, overhead_ms=nodes + 1.0) == 0.0
    merge = {"emb": 32, "keys": 64, "tokens": 9, "merged": 8}
    without, with_merge = merge_models(batch=2, grid=grid, **merge)
    assert time_point(timer, "merge", merge, batch=2, grid=grid, overhead_ms=1.5) == \
        len(with_merge[0].graph.node) - len(without[0].graph.node)
