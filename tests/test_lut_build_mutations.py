"""Tests added by a mutation audit of vitrt.benchmarks.lut_build, lut_eval, lut_passes and pruning_speed: each pins
a behaviour (grid validation, the subgraph each grid point times, shard splits, resumption and what a table records,
refusals) that a one-line mutation could change without the existing tests noticing. No assertion is about a
measured time: the builds time a 6-point grid for one iteration, and the checks are on structure and bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vitrt.benchmarks.lut_build import (Timer, build_table, grid_of, linear_model, merge_models, parse_shard,
                                        part_model, parts_for, shard_points)
from vitrt.compiler.errors import Interrupted, VitrtError
from vitrt.compiler.lut import REQUIRED_PARTS, LatencyTable
from vitrt.compiler.progress import Progress
from vitrt.compiler.timing import Timing
from vitrt.kernels import sparse24

FAST = Timing(warmup=0, iterations=1, min_seconds=0.0)
# A grid of 6 points (attn 1, mlp 2, stem 1, head 1, head_distilled 1) and no optional parts: a build is ~1 s.
MINI = {"emb": [32], "heads": [1], "qk": [16], "v": [16], "tokens": [9], "mlp": [32, 64], "patches": [4],
        "patch": 8, "num_classes": 10}
MINI_POINTS = 6


def _build(path, **kwargs):
    kwargs = {"backend": "ort", "grid": MINI, "batch": 1, "threads": 1, "timing": FAST, **kwargs}
    return build_table(path, **kwargs)


class CtrlCAfter(Progress):
    """A progress sink whose bar raises KeyboardInterrupt after ``points`` updates: Ctrl-C during a build."""

    def __init__(self, points: int):
        super().__init__(enabled=False)
        self.points = points

    def bar(self, total, desc):
        sink = self

        class Bar:
            n = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, k=1):
                self.n += k
                if self.n >= sink.points:
                    raise KeyboardInterrupt

        return Bar()


def _initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _elem_type(value_info):
    return value_info.type.tensor_type.elem_type


# --- grids ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(emb=[0, 32]), "axis 'emb' must be strictly increasing positive ints"),
    (dict(mlp=[64, 64]), "axis 'mlp' must be strictly increasing positive ints"),
    (dict(patches=[4, 8]), "axis 'patches' must hold square numbers"),
    (dict(tokens=None), "grid lacks tokens"),
])
def test_grid_of_refuses_a_zero_a_repeat_a_non_square_patch_count_and_a_missing_axis(change, message):
    grid = {k: v for k, v in {**MINI, **change}.items() if v is not None}
    with pytest.raises(VitrtError, match=message):
        grid_of(grid)


def test_grid_of_refuses_an_unknown_preset_by_name():
    with pytest.raises(VitrtError, match="unknown grid preset 'huge': choose one of coarse, dense, tiny, digits"):
        grid_of("huge")


def test_merge_is_built_for_every_key_but_linear_and_lowrank_only_for_fp32_dense():
    tiny = grid_of("tiny")
    assert parts_for(tiny, "fp32/dense") == [*REQUIRED_PARTS, "merge", "linear", "lowrank"]
    assert parts_for(tiny, "int8/2:4") == [*REQUIRED_PARTS, "merge"]
    half = {k: v for k, v in tiny.items() if k not in ("merged", "rank")}  # keys without merged, features without rank
    assert parts_for(half, "fp32/dense") == [*REQUIRED_PARTS, "linear"]


# --- the subgraph each grid point times -------------------------------------------------------------------------------
def test_an_attention_point_has_qk_columns_per_head_in_q_and_k_and_v_columns_in_v():
    model, x = part_model("attn", {"emb": 32, "heads": 2, "qk": 16, "v": 32, "tokens": 9}, batch=1,
                          grid=grid_of("tiny"))
    w = _initializers(model)
    assert w["blocks.0.attn.q.weight"].shape == w["blocks.0.attn.k.weight"].shape == (32, 2 * 16)
    assert w["blocks.0.attn.v.weight"].shape == (32, 2 * 32) and w["blocks.0.attn.proj.weight"].shape == (64, 32)
    assert x.shape == (1, 9, 32) and not any(name.startswith("blocks.0.mlp") for name in w)


def test_a_2to4_attention_point_masks_every_attention_weight():
    model, _ = part_model("attn", {"emb": 64, "heads": 2, "qk": 32, "v": 32, "tokens": 9}, batch=1,
                          grid=grid_of("tiny"), sparsity="2:4")  # the planner's default minimum width is met
    w = _initializers(model)
    for layer in ("q", "k", "v", "proj"):
        assert sparse24.is_2to4(w[f"blocks.0.attn.{layer}.weight"], 0), layer


def test_a_distilled_head_point_quantizes_both_heads():
    model, _ = part_model("head_distilled", {"emb": 32, "tokens": 9}, batch=1, grid=grid_of("tiny"), precision="int8")
    w = _initializers(model)
    assert w["head.weight"].dtype == np.int8 and w["head_dist.weight"].dtype == np.int8


def test_only_the_models_images_and_logits_keep_their_float_interface_when_typed():
    grid, f32, f16 = grid_of("tiny"), onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    stem, images = part_model("stem", {"emb": 32, "patches": 4}, batch=1, grid=grid, precision="fp16")
    assert (_elem_type(stem.graph.input[0]), _elem_type(stem.graph.output[0]), images.dtype) == (f32, f16, np.float32)
    head, x = part_model("head", {"emb": 32, "tokens": 9}, batch=1, grid=grid, precision="fp16")
    assert (_elem_type(head.graph.input[0]), _elem_type(head.graph.output[0]), x.dtype) == (f16, f32, np.float16)
    mlp, x = part_model("mlp", {"emb": 32, "mlp": 64, "tokens": 9}, batch=1, grid=grid, precision="fp16")
    assert (_elem_type(mlp.graph.input[0]), _elem_type(mlp.graph.output[0]), x.dtype) == (f16, f16, np.float16)


@pytest.mark.parametrize("precision, opset", [("int4w", 21), ("fp8", 19), ("int8", 17)])
def test_a_quantized_point_is_exported_with_the_ir_version_of_the_opset_its_pass_raised(precision, opset):
    from vitrt.compiler.lower import ir_version_for

    model, _ = part_model("mlp", {"emb": 64, "mlp": 128, "tokens": 9}, batch=1, grid=grid_of("tiny"),
                          precision=precision)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    assert model.ir_version == ir_version_for(opset)

def test_a_lowrank_point_above_min_k_n_is_factored_at_min_k_n():
    model, _ = linear_model(batch=1, tokens=9, k=16, n=64, rank=32)
    w = _initializers(model)
    assert w["blocks.0.mlp.fc1.u.weight"].shape == (16, 16) and w["blocks.0.mlp.fc1.weight"].shape == (16, 64)


def test_a_merge_pair_runs_on_the_smallest_square_patch_grid_holding_the_tokens():
    grid = grid_of("tiny")  # patch 8
    for tokens, side in ((17, 4), (10, 3), (9, 3), (5, 2), (3, 2)):
        (without, x), (_, x_merge) = merge_models(batch=1, emb=32, keys=16, tokens=tokens, merged=1, grid=grid)
        assert x.shape == x_merge.shape == (1, 3, 8 * side, 8 * side), tokens
        assert [d.dim_value for d in without.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8 * side, 8 * side]


def test_a_merge_point_is_capped_at_half_the_mergeable_tokens_and_merges_what_it_names():
    grid = grid_of("tiny")

    def with_merge(tokens, merged):
        return merge_models(batch=1, emb=32, keys=16, tokens=tokens, merged=merged, grid=grid)[1][0]

    capped = with_merge(10, 8).SerializeToString()  # 9 mergeable tokens: at most 4 merge
    assert capped == with_merge(10, 4).SerializeToString() != with_merge(10, 3).SerializeToString()
    (without, _), (one, _) = merge_models(batch=1, emb=32, keys=16, tokens=9, merged=1, grid=grid)
    assert without.SerializeToString() != one.SerializeToString()


# --- timing bookkeeping ----------------------------------------------------------------------------------------------
def test_a_typed_subgraph_is_timed_on_ort_in_a_session_and_on_torch_by_its_runner():
    """ONNX Runtime's runner takes fp32 images, so an fp16 subgraph runs in a session of its artifact; torch's
    runner takes the fp16 activations as they are."""
    model, x = part_model("mlp", {"emb": 32, "mlp": 64, "tokens": 9}, batch=1, grid=grid_of("tiny"), precision="fp16")
    assert x.dtype == np.float16
    for backend in ("ort", "torch"):
        timer = Timer(backend, FAST, 1)
        try:
            assert timer.time_model(model, x) >= 0.0
        finally:
            timer.close()


def test_the_overhead_measurement_leaves_the_timers_own_timing_in_place():
    timer = Timer("ort", FAST, 1)
    try:
        assert timer.overhead_ms() >= 0 and timer.timing is FAST
    finally:
        timer.close()


# --- shards ----------------------------------------------------------------------------------------------------------
def test_shard_k_of_n_takes_every_nth_point_from_the_kth():
    grid = grid_of("tiny")
    every = shard_points(grid, None)
    for k in range(3):
        assert [p[:2] for p in shard_points(grid, (k, 3))] == [p[:2] for p in every[k::3]]


@pytest.mark.parametrize("env, expected", [
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "5"}, (1, 2)),
    ({"RANK": "1", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "5"}, (3, 5)),
])
def test_env_shards_prefer_torchrun_and_need_both_of_its_variables(env, expected, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parse_shard("env") == expected


# --- builds, resumption and what a table records --------------------------------------------------------------------
def test_a_build_of_batch_zero_is_refused_before_any_file_is_written(tmp_path):
    with pytest.raises(VitrtError, match="--batch must be >= 1, got 0"):
        _build(tmp_path / "lut.json", batch=0)
    assert list(tmp_path.iterdir()) == []


def test_the_returned_table_holds_its_grid_values_exactly_as_saved(tmp_path):
    table = _build(tmp_path / "lut.json")
    again = LatencyTable.load(tmp_path / "lut.json")
    for name, sub in table.tables["fp32/dense"].items():
        np.testing.assert_array_equal(sub.ms, again.tables["fp32/dense"][name].ms)
    assert table.meta["grid_preset"] == "custom" and table.meta["threads"] == 1


def test_a_build_without_threads_records_the_runtime_default_and_resumes_as_such(tmp_path):
    from vitrt.compiler.lut import RUNTIME_DEFAULT_THREADS

    path = tmp_path / "lut.json"
    with pytest.raises(Interrupted):
        _build(path, threads=None, progress=CtrlCAfter(1))
    assert json.loads(path.read_text())["meta"]["threads"] == RUNTIME_DEFAULT_THREADS
    assert _build(path, threads=None).meta["complete"]


def test_an_interrupted_build_saves_its_points_and_the_rerun_adds_to_its_build_time(tmp_path):
    path = tmp_path / "lut.json"
    with pytest.raises(Interrupted, match=f"2 grid points are saved in '{path}'"):
        _build(path, progress=CtrlCAfter(2))
    data = json.loads(path.read_text())
    values = [v for part in data["tables"]["fp32/dense"].values() for v in np.ravel(part["ms"])]
    assert sum(v is not None and np.isfinite(v) for v in values) == 2 and data["meta"]["complete"] is False
    data["meta"]["build_seconds"] = 1000.0  # a long first run: the rerun's time is added to it
    path.write_text(json.dumps(data))
    resumed = _build(path)
    assert resumed.meta["complete"] and resumed.meta["build_seconds"] >= 1000.0


def test_another_key_makes_a_complete_file_incomplete_until_every_key_is_built(tmp_path):
    path = tmp_path / "lut.json"
    with pytest.raises(Interrupted):
        _build(path, progress=CtrlCAfter(2))  # fp32/dense: 2 of 6 points
    both = _build(path, sparsity="2:4")  # another key, built whole
    assert sorted(both.keys()) == ["fp32/2:4", "fp32/dense"] and both.meta["complete"] is False
    assert "fp32/2:4" in both.meta["provenance"]
    assert _build(path).meta["complete"] is True  # the first key resumed: now every key is whole
    with pytest.raises(Interrupted):
        _build(path, precision="fp16", progress=CtrlCAfter(1))  # a third key into the complete file
    data = json.loads(path.read_text())
    assert data["meta"]["complete"] is False and "fp16/dense" in data["meta"]["provenance"]



def test_an_fp16_key_is_timed_on_ort_in_a_session_of_its_typed_subgraphs(tmp_path):
    """A block half of an fp16 model takes fp16 activations, which a runner (fp32 images) cannot feed."""
    table = _build(tmp_path / "lut.json", precision="fp16")
    assert table.keys() == ["fp16/dense"] and table.meta["complete"]
    assert all(np.isfinite(sub.ms).all() for sub in table.tables["fp16/dense"].values())

@pytest.mark.parametrize("edit, rerun, differ", [
    (lambda d: d.update(device="another CPU"), {}, "device"),
    (lambda d: d.update(backend="torch"), {}, "backend"),
    (lambda d: d["meta"].update(grid={**d["meta"]["grid"], "mlp": [32, 96]}), {}, "grid"),
    (None, {"threads": 2}, "threads"),
    (None, {"timing": Timing(warmup=0, iterations=1, min_seconds=0.0, clock="cpu")}, "clock"),
])
def test_a_rerun_refuses_a_file_built_with_other_settings_and_names_them(tmp_path, edit, rerun, differ):
    path = tmp_path / "lut.json"
    with pytest.raises(Interrupted):
        _build(path, progress=CtrlCAfter(1))
    if edit:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    with pytest.raises(VitrtError, match=rf"holds a different table \(its {differ} differ"):
        _build(path, **rerun)


# --- lut_eval ------------------------------------------------------------------------------------------------------
# Axes with room between their values for the off-grid picks (emb steps of 64, qk / v of 8, mlp of 64)
EVAL_GRID = {"emb": [32, 192], "heads": [1, 3], "qk": [16, 48], "v": [16, 32], "tokens": [9, 17], "mlp": [64, 256],
             "patches": [4], "patch": 8, "num_classes": 10}


def _hand_table(device: str, threads=1) -> LatencyTable:
    """A complete table of EVAL_GRID with values that grow along every axis (no clock involved)."""
    from vitrt.benchmarks.lut_build import new_table

    table = new_table("ort", device, 1, grid_of(EVAL_GRID), "custom", "fp32", "dense", threads)
    for sub in table.tables["fp32/dense"].values():
        sub.ms = 0.01 * np.indices(sub.ms.shape).sum(axis=0) + 0.05
    table.overhead_ms, table.meta["complete"] = 0.0, True
    return table


def test_off_grid_configs_draw_qk_and_v_from_their_own_axes_and_refuse_an_axis_without_room():
    from vitrt.benchmarks.lut_eval import off_grid_configs

    configs = off_grid_configs(_hand_table("cpu"), 6, seed=0)
    assert {c["v"] for c in configs} == {24} and {c["qk"] for c in configs} - {24}
    assert all(c["qk"] in (24, 32, 40) for c in configs)
    with pytest.raises(VitrtError, match=r"grid axis \[32, 64\] has no off-grid value in steps of 64"):
        off_grid_configs(_tiny_hand_table(), 1)


def _tiny_hand_table():
    from vitrt.benchmarks.lut_build import new_table

    return new_table("ort", "cpu", 1, grid_of("tiny"), "tiny", "fp32", "dense", None)


def test_lut_eval_predicts_each_block_from_the_grid_alone_and_summarises_by_the_median(tmp_path):
    from vitrt.benchmarks.lut_eval import evaluate, off_grid_configs
    from vitrt.compiler.lut import _block_point

    timer = Timer("ort", FAST, 1)
    device = timer.backend.device_name()
    timer.close()
    table = _hand_table(device)
    configs = off_grid_configs(table, 3, seed=0)
    # a refined point exactly at the first configuration: the evaluation is of the grid, which it must not move
    table.add_point("block", _block_point(**configs[0], tokens_out=None), 1000.0)
    table.save(tmp_path / "lut.json")
    result = evaluate(tmp_path / "lut.json", configs=3, models=(), seed=0, iterations=1, similar=None)
    rows, saved = result["blocks"], LatencyTable.load(tmp_path / "lut.json")
    assert [{k: r[k] for k in configs[0]} for r in rows] == configs and result["threads"] == 1
    for row, cfg in zip(rows, configs):
        assert row["predicted_ms"] == pytest.approx(saved.grid_block_ms(**cfg), rel=1e-9)
        assert row["error"] == row["predicted_ms"] / row["measured_ms"] - 1
    assert result["median_abs_block_error"] == float(np.median([abs(r["error"]) for r in rows]))
    assert result["models"] == []


# --- lut_passes ----------------------------------------------------------------------------------------------------
def test_fixed_weight_ranges_are_each_output_channels_max_and_never_zero_and_only_for_the_layers_named():
    import torch

    from vitrt.benchmarks.lut_build import block_twin
    from vitrt.benchmarks.lut_passes import ACTIVATION_AMAX, fixed_scale_table

    twin = block_twin(emb=64, heads=1, qk=64, v=64, mlp=128)  # every K divisible by an INT4 block
    with torch.no_grad():
        twin.blocks[0].mlp.fc1.weight[3] = 0.0  # an output channel of zeros
    table = fixed_scale_table(twin, "int8", ("blocks.0.mlp.fc1",))
    assert set(table.entries) == {"blocks.0.mlp.fc1.input", "blocks.0.mlp.fc1.weight"}
    weight = twin.blocks[0].mlp.fc1.weight.detach().abs()
    amax = np.asarray(table.entries["blocks.0.mlp.fc1.weight"].amax).ravel()
    expected = weight.amax(dim=1).numpy()
    expected[3] = 1e-8
    np.testing.assert_allclose(amax, expected, rtol=1e-6)
    assert np.all(np.asarray(table.entries["blocks.0.mlp.fc1.input"].amax) == ACTIVATION_AMAX)
    int4 = fixed_scale_table(twin, "int4w", ("blocks.0.mlp.fc2",))
    assert set(int4.entries) == {"blocks.0.mlp.fc2.weight"}


def test_a_subgraph_without_layers_gets_no_weight_passes_only_the_typing():
    from vitrt.benchmarks.lut_build import block_twin
    from vitrt.benchmarks.lut_passes import key_passes

    twin = block_twin(emb=64, heads=1, qk=64, v=64, mlp=128)
    assert key_passes(twin, (), "int8", "2:4") == []
    assert [type(p).__name__ for p in key_passes(twin, (), "fp16", "2:4")] == ["PrecisionTypingPass"]
    assert [type(p).__name__ for p in key_passes(twin, ("blocks.0.mlp.fc1",), "int8", "2:4")] == ["SparsityPass",
                                                                                                  "QDQPass"]

# --- pruning_speed -------------------------------------------------------------------------------------------------
def test_pruning_speed_refuses_zero_rounds_in_one_line(tmp_path):
    from vitrt.benchmarks.pruning_speed import PruningSpeedConfig

    with pytest.raises(VitrtError, match="--rounds must be >= 1, got 0"):
        PruningSpeedConfig(lut=tmp_path / "lut.json", rounds=0).validate()
    assert PruningSpeedConfig(lut=tmp_path / "lut.json", rounds=1).validate().rounds == 1


def _report(clock: str) -> dict:
    return {"model": "m", "target": 0.5, "batch": 1, "device": "cpu", "threads": 1, "rounds": 2, "measured_clock": clock,
            "emb": 48, "params": {"before": 2e6, "after": 1e6}, "flops": {"before": 2e9, "after": 1e9},
            "predicted_ms": {"dense": 2.0, "pruned": 1.0}, "measured_ms": {"dense": 2.2, "pruned": 1.1},
            "lut_error": {"dense": -0.1, "pruned": -0.1}, "wall_median_ms": {"dense": 2.5, "pruned": 1.3},
            "speedup": 2.0, "wall_speedup": 1.9, "speedup_method": "median", "predicted_fraction": 0.5,
            "alignment_violations": [], "verify_max_abs_err": 1e-6,
            "block_dims": [{"heads": 1, "qk": 16, "v": 16, "mlp": 64}]}


def test_the_pruning_report_gives_emb_only_for_the_pruned_model_and_names_the_statistic_of_its_clock():
    from vitrt.benchmarks.pruning_speed import format_report

    cpu, wall = format_report(_report("cpu")), format_report(_report("wall"))
    assert "| dense | - | 2.0M |" in cpu and "| pruned | 48 | 1.0M |" in cpu
    assert cpu.splitlines()[0].endswith("cpu clock (least single-thread CPU time)")
    assert wall.splitlines()[0].endswith("wall clock (median)")


# --- defects the audit found (each test failed before its fix) ----------------------------------------------------

def test_the_returned_tables_overhead_is_the_saved_one(tmp_path):
    """build_table rounds each grid value "as saved: the returned table is the file's", but keeps the overhead it
    measured unrounded while the file holds it to 5 decimals: model_ms of the returned table and of the file differ.
    """
    table = _build(tmp_path / "lut.json")
    assert table.overhead_ms == LatencyTable.load(tmp_path / "lut.json").overhead_ms


def test_a_merge_grid_down_to_two_tokens_builds_with_no_merge_there(tmp_path):
    """With 2 tokens (1 patch) nothing can merge, but merge_models forces merged >= 1 (``max(1, ...)``) and the
    token-merge schedule refuses it: the build dies at that point, after writing a partial table. The module says a
    merge beyond half the mergeable tokens is timed "at that half" (here 0 merges, a 0 ms difference)."""
    grid = {**MINI, "tokens": [2, 9], "keys": [16], "merged": [1]}
    table = _build(tmp_path / "lut.json", grid=grid)
    merge = table.tables["fp32/dense"]["merge"]
    assert table.meta["complete"] and merge.ms[0, 0, 0, 0] == 0.0 and np.isfinite(merge.ms).all()


def test_build_table_refuses_a_shard_index_outside_its_count(tmp_path):
    """parse_shard refuses K >= N, but build_table (the API the CLI and scripts call) takes any tuple: shard (3, 2)
    times points[3::2] (a subset of shard 1's), wrote lut.part3-of-2.json and marked it complete."""
    with pytest.raises(VitrtError, match="--shard"):
        _build(tmp_path / "lut.json", shard=(3, 2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_typed_key_is_built_on_the_torch_backend_from_subgraphs_that_take_typed_activations(tmp_path, precision):
    """The timer refused typed subgraphs on every backend but ort — the README's GPU command (lut build --backend
    torch --precision fp16) stopped at its first point, after writing an empty table. The torch runner now takes
    fp16 / bf16 activations as they are, and computes what ONNX Runtime computes on the fp16 subgraph."""
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.backends.ort import ort_session

    table = _build(tmp_path / "lut.json", backend="torch", precision=precision)
    assert table.meta["complete"] and f"{precision}/dense" in table.tables
    model, x = part_model("mlp", {"emb": 32, "heads": 1, "qk": 16, "v": 16, "tokens": 9, "mlp": 32}, batch=2,
                          grid=MINI, precision=precision, sparsity="dense", backend="torch")
    assert x.dtype.name == {"fp16": "float16", "bf16": "bfloat16"}[precision]
    onnx.save(model, str(tmp_path / "part.onnx"))
    backend = get_backend("torch")
    runner = backend.load(backend.build(tmp_path / "part.onnx", tmp_path, BuildOptions(threads=1)), BuildOptions())
    got = runner.infer(x)
    if precision == "fp16":  # ONNX Runtime's CPU provider has no bf16 MatMul to compare with
        want = ort_session(tmp_path / "part.onnx", threads=1).run(None, {model.graph.input[0].name: x})[0]
        assert np.abs(got - want.astype(np.float32)).max() < 1e-2
    assert np.isfinite(got).all()
