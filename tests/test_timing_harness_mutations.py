"""Tests added by a mutation audit of vitrt.compiler.timing, vitrt.benchmarks.harness,
vitrt.compiler.backends.trt (what runs without TensorRT) and vitrt.cli.bench: each pins a behaviour that a one-line
mutation could change without the existing tests noticing. No assertion is about the value of a measured time: the
timing loop is checked by the order and number of its calls, by what a sleep guarantees each clock reads, and by
identities between the numbers one run reports. Tiny models: seconds each."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli as run
from conftest import tiny_vit
from vitrt.benchmarks.harness import bench_target, build_twin, images_for, load_out, nvit_table, parse_backends
from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.models import canonicalize
from vitrt.compiler.timing import Interleaved, Timing, interleaved, samples_ms, synced, typical_ms


# --- vitrt.compiler.timing ---------------------------------------------------------------------------------------

def test_the_default_timing_is_two_warmups_then_five_samples_on_the_wall_clock():
    timing, calls = Timing(), []
    assert (timing.warmup, timing.iterations, timing.min_seconds, timing.clock) == (2, 5, 0.0, "wall")
    assert len(samples_ms(lambda: calls.append(1), timing)) == 5 and len(calls) == 7


@pytest.mark.parametrize("kwargs, message", [
    (dict(clock="gpu"), "unknown clock 'gpu': choose one of wall, cpu, cuda"),
    (dict(iterations=0), ">= 1 iteration"), (dict(warmup=-1), ">= 0 warm-up"),
])
def test_timing_refuses_an_unknown_clock_and_counts_below_their_minimum(kwargs, message):
    with pytest.raises(OptionError, match=message):
        Timing(**kwargs)
    Timing(warmup=0, iterations=1)  # the least that is allowed


def test_the_loop_warms_up_syncs_then_times_exactly_its_iterations_each_followed_by_a_sync():
    events = []
    samples = samples_ms(lambda: events.append("call"), Timing(warmup=3, iterations=4),
                         synchronize=lambda: events.append("sync"), progress=lambda n: events.append(f"+{n}"))
    assert len(samples) == 4
    assert events == ["call"] * 3 + ["sync"] + ["call", "sync", "+1"] * 4


def test_min_seconds_keeps_the_loop_sampling_until_that_much_time_has_passed():
    start = time.perf_counter()
    samples = samples_ms(lambda: None, Timing(warmup=0, iterations=1, min_seconds=0.2))
    assert time.perf_counter() - start >= 0.2 and len(samples) >= 1  # the loop's exit condition, not a timing


def test_wall_samples_are_elapsed_ms_and_cpu_samples_the_callers_thread_time():
    """A 20 ms sleep lasts at least 20 ms of wall time and costs its thread next to no CPU time."""
    nap = lambda: time.sleep(0.02)  # noqa: E731
    assert all(s >= 20.0 for s in samples_ms(nap, Timing(warmup=0, iterations=2, clock="wall")))
    assert all(s < 20.0 for s in samples_ms(nap, Timing(warmup=0, iterations=2, clock="cpu")))


def test_the_cuda_clock_is_summarised_by_the_median_and_a_cpu_round_by_its_least_time():
    assert typical_ms([3.0, 1.0, 2.0], "cuda") == 2.0
    timed = Interleaved({"a": [[3.0, 1.0, 2.0], [5.0, 4.0, 6.0]]}, "cpu")
    assert timed.per_round("a") == [1.0, 4.0] and timed.typical("a") == 2.5


def test_percentiles_pool_the_samples_of_every_round():
    timed = Interleaved({"a": [[1.0, 2.0], [3.0, 4.0]]}, "wall")
    assert (timed.percentile("a", 0), timed.percentile("a", 50), timed.percentile("a", 100)) == (1.0, 2.5, 4.0)


def test_each_round_visits_every_candidate_once_in_a_seeded_shuffled_order():
    def visits(seed):
        log, ticks = [], []
        timed = interleaved({n: (lambda n=n: log.append(n)) for n in "abcd"}, Timing(warmup=0, iterations=1),
                            rounds=6, seed=seed, progress=ticks.append)
        assert ticks == [1] * 24 and all(len(timed.samples[n]) == 6 for n in "abcd")
        return [tuple(log[i * 4:(i + 1) * 4]) for i in range(6)]

    rounds = visits(3)
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1  # shuffled round by round, not the candidates' order every time
    assert visits(3) == rounds  # the seed decides the order


def test_a_synced_call_synchronises_the_runner_after_each_call():
    twin = canonicalize(tiny_vit(depth=1))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        runner = build_twin(twin, Path(tmp), name="tiny", batch=1).runner
        synced_calls, synchronize = [], runner.synchronize
        runner.synchronize = lambda: (synced_calls.append(1), synchronize())[1]  # the real one, counted
        call = synced(runner, images_for(twin.spec, 1))
        call()
        call()
    assert len(synced_calls) == 2


# --- vitrt.benchmarks.harness ------------------------------------------------------------------------------------

def test_parse_backends_refuses_an_empty_list_and_strips_names():
    assert parse_backends(None) is None and parse_backends(" ort , torch ") == ["ort", "torch"]
    for bad in ("", ",", " , "):
        with pytest.raises(VitrtError, match="distinct backends"):
            parse_backends(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend="ort", device="cuda"), "--device applies to the torch backend"),
    (dict(backend="ort", torch_compile="default"), "--torch-compile applies to the torch backend"),
    (dict(warmup=-1), "--warmup must be >= 0, got -1"),
])
def test_bench_refuses_options_that_do_not_apply_before_any_build(kwargs, message):
    with pytest.raises(VitrtError, match=message):
        bench_target("digits", [1], iterations=1, **kwargs)


def test_build_twin_removes_the_lowered_onnx_unless_asked_to_keep_it(tmp_path):
    twin = canonicalize(tiny_vit(depth=1))
    build_twin(twin, tmp_path / "a", name="tiny", batch=1)
    build_twin(twin, tmp_path / "b", name="tiny", batch=1, keep_onnx=True)
    assert not (tmp_path / "a" / "model.onnx").exists() and (tmp_path / "b" / "model.onnx").is_file()


def test_a_dynamic_batch_out_loads_without_a_batch_and_sweeps_any_batches(tiny_outs):
    _, _, dynamic = tiny_outs
    assert load_out(dynamic).batch is None
    result = bench_target(str(dynamic), [1, 3], iterations=1, warmup=0)
    assert [r["batch"] for r in result["rows"]] == [1, 3]


def images_slack(batch: int, median_ms: float) -> float:
    """How far a row's images/s (rounded to 2 decimals) may be from batch * 1000 / its median_ms (rounded to 4)."""
    return 0.0051 + batch * 1000.0 * 5.1e-5 / median_ms ** 2


def test_a_single_backend_run_has_no_rounds_and_side_by_side_rows_agree_with_their_medians(tiny_outs):
    dense, _, _ = tiny_outs
    alone = bench_target(str(dense), [1], iterations=2, warmup=0, rounds=3)
    assert alone["rounds"] is None and alone["backends"] == ["ort"] and alone["rows"][0]["iterations"] == 2
    both = bench_target(str(dense), [1], backend=["ort", "torch"], iterations=3, warmup=0, rounds=1)
    assert both["rounds"] == 1 and both["clock"] == "wall"
    ort, torch_row = both["rows"]
    half = 5e-5  # every ms in a row is rounded to 4 decimals
    for row in (ort, torch_row):
        assert row["images_per_s"] == pytest.approx(1000.0 / row["median_ms"], abs=images_slack(1, row["median_ms"]))
    assert ort["speedup_vs_ort"] == 1.0
    # one round: the speedup is the ratio of the two medians, the reference's over the candidate's
    ratio = ort["median_ms"] / torch_row["median_ms"]
    slack = ratio * (half / ort["median_ms"] + half / torch_row["median_ms"]) * 1.01 + half
    assert torch_row["speedup_vs_ort"] == pytest.approx(ratio, abs=slack)


def test_side_by_side_percentiles_are_the_90th_and_99th_of_the_pooled_samples(tiny_outs):
    """Two samples a <= b in one round: the median is (a + b) / 2, p90 = a + 0.9 (b - a), p99 = a + 0.99 (b - a), so
    p99 - median = 1.225 (p90 - median) whatever a and b are (up to the rows' rounding to 0.1 us)."""
    dense, _, _ = tiny_outs
    for row in bench_target(str(dense), [1], backend=["ort", "torch"], iterations=2, warmup=0, rounds=1)["rows"]:
        assert row["p99_ms"] - row["median_ms"] == pytest.approx(1.225 * (row["p90_ms"] - row["median_ms"]), abs=3e-4)


def test_images_per_second_count_every_image_of_the_batch_side_by_side(tiny_outs):
    _, _, dynamic = tiny_outs
    rows = bench_target(str(dynamic), [3], backend=["ort", "torch"], iterations=1, warmup=0, rounds=1)["rows"]
    for r in rows:
        assert r["images_per_s"] == pytest.approx(3 * 1000.0 / r["median_ms"], abs=images_slack(3, r["median_ms"]))


def test_nvit_table_ratios_are_the_reference_over_each_variant(tiny_outs):
    dense, small, _ = tiny_outs
    table = nvit_table([str(dense), str(small)], rounds=1, iterations=2)
    ref, variant = table["rows"]
    assert ref["speedup"] == 1.0 and ref["params_x"] == 1.0 and ref["flops_x"] == 1.0
    assert variant["params_x"] == pytest.approx(ref["params"] / variant["params"]) and variant["params_x"] > 1
    assert variant["flops_x"] == pytest.approx(ref["flops"] / variant["flops"]) and variant["flops_x"] > 1
    assert variant["speedup"] == pytest.approx(ref["median_ms"] / variant["median_ms"], rel=1e-9)  # one round


def test_nvit_table_refuses_a_dynamic_batch_out_and_a_cpu_clock_without_one_thread(tiny_outs):
    dense, _, dynamic = tiny_outs
    with pytest.raises(VitrtError, match="same static --batch"):
        nvit_table([str(dense), str(dynamic)], rounds=1, iterations=1)
    with pytest.raises(VitrtError, match="same static --batch"):  # one batch, but not a static one
        nvit_table([str(dynamic), str(dynamic)], rounds=1, iterations=1)
    with pytest.raises(VitrtError, match="--threads 1"):
        nvit_table([str(dense), str(dense)], rounds=1, iterations=1, clock="cpu")


# --- vitrt.cli.bench ---------------------------------------------------------------------------------------------

def test_bench_and_nvit_table_defaults():
    from vitrt.cli.bench import BenchConfig, NvitTableConfig

    bench = BenchConfig()
    assert (bench.batch, bench.iterations, bench.warmup, bench.rounds, bench.clock) == ("1", 20, 3, 5, None)
    nvit = NvitTableConfig()
    assert (nvit.rounds, nvit.iterations, nvit.clock) == (5, 5, "wall")


def test_bench_passes_rounds_through_and_nvit_table_takes_no_cuda_clock(tiny_outs, tmp_path, capsys):
    dense, small, _ = tiny_outs
    assert run("bench", dense, "--backend", "ort,torch", "--rounds", 2, "--iterations", 1, "--warmup", 0,
               "--json", tmp_path / "b.json", "--quiet") == 0
    assert json.loads((tmp_path / "b.json").read_text())["rounds"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # a usage error, before any OUT is loaded
        run("nvit-table", dense, small, "--clock", "cuda")
    assert refused.value.code == 2 and "invalid choice: 'cuda'" in capsys.readouterr().err


# --- vitrt.compiler.backends.trt (without TensorRT) ----------------------------------------------------------

def test_sparse_layers_read_every_spelling_of_true_and_nothing_else():
    from vitrt.compiler.backends.trt import sparse_layers

    inspector = {"Layers": [{"Name": "a", "HasSparseWeights": "true"}, {"Name": "b", "HasSparseWeights": True},
                            {"Name": 7, "HasSparseWeights": "1"}, {"Name": "no field"},
                            {"Name": "c", "HasSparseWeights": "false"}]}
    assert sparse_layers(inspector) == ["a", "b", "7"] and sparse_layers({}) == []


def test_trtexec_sets_the_workspace_pool_in_mebibytes():
    from vitrt.compiler.backends import BuildOptions
    from vitrt.compiler.backends.trt import trtexec_command

    assert trtexec_command("model.onnx", {"images": [3, 32, 32]}, BuildOptions(workspace_mb=512)).endswith(
        " --memPoolSize=workspace:512M")


def test_a_bench_row_timed_on_another_clock_than_the_runners_says_what_it_measured():
    """``vitrt bench --clock cpu`` on ONNX Runtime (whose own clock is wall): the row said ``"timer": "wall clock"``
    beside ``"clock": "cpu"`` until LatencyStats.from_samples named the timer of the clock it is given."""
    from vitrt.compiler.timing import CLOCK_TIMERS

    row = bench_target("digits", [1], iterations=2, warmup=0, threads=1, clock="cpu")["rows"][0]
    assert row["clock"] == "cpu" and row["timer"] == CLOCK_TIMERS["cpu"]


def test_side_by_side_rows_on_the_cpu_clock_keep_the_median_apart_from_the_least_time_they_compare(tiny_outs):
    """The side-by-side rows put the median over rounds of each round's least CPU time under 'median_ms' (and the
    table's 'median ms' column); now the median is the pooled samples' and the least time has its own column."""
    from vitrt.benchmarks.harness import format_bench

    dense, _, _ = tiny_outs
    result = bench_target(str(dense), [1], backend=["ort", "torch"], iterations=3, warmup=0, rounds=1, threads=1,
                          clock="cpu")
    for row in result["rows"]:
        assert row["typical_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["images_per_s"] == pytest.approx(1000.0 / row["typical_ms"], abs=images_slack(1, row["typical_ms"]))
    table = format_bench(result)
    assert "least ms" in table.splitlines()[3] and "least CPU time" in table.splitlines()[-1]
