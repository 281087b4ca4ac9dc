"""The benchmark harness and paper-table commands on tiny compiled models (structure and exit codes only)."""

from __future__ import annotations

import json

import pytest

from vitrt.benchmarks.dcvit import REMOVALS, removed
from vitrt.benchmarks.harness import parse_batches
from vitrt.benchmarks.lut_eval import off_grid_configs
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import spec_of_timm

from conftest import run_cli as run
from conftest import tiny_vit


def test_dcvit_removals_change_exactly_one_block():
    spec = spec_of_timm(tiny_vit(depth=3))
    want = {"Block": (0, 0), "Attn": (0, 256), "FFN": (2, 0), "Attn+0.5·FFN": (0, 128)}
    for removal in REMOVALS:
        changed = removed(spec, 1, removal)
        assert (changed.blocks[1].heads, changed.blocks[1].mlp) == want[removal]
        assert changed.blocks[0] == spec.blocks[0] and changed.blocks[2] == spec.blocks[2]
        changed.validate()


def test_parse_batches():
    assert parse_batches("1,8,32") == [1, 8, 32]
    for bad in ("", "0", "a,2", "4,-1"):
        with pytest.raises(VitrtError, match="comma-separated"):
            parse_batches(bad)


def test_off_grid_configs_are_inside_the_grid_and_off_it():
    from vitrt.benchmarks.lut_build import grid_of, new_table

    grid = grid_of("coarse")
    table = new_table("ort", "cpu", 8, grid, "coarse", "fp32", "dense", None)
    for cfg in off_grid_configs(table, 20):
        for axis in ("emb", "heads", "qk", "v", "mlp", "tokens"):
            assert grid[axis][0] < cfg[axis] < grid[axis][-1] and cfg[axis] not in grid[axis]


def test_bench_cli(tiny_outs, tmp_path, capsys):
    dense, small, _ = tiny_outs
    assert run("bench", dense, "--batch", "1", "--iterations", 3, "--json", tmp_path / "b.json", "--quiet") == 0
    assert "images/s" in capsys.readouterr().out
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["batch"] for r in data["rows"]] == [1] and data["rows"][0]["median_ms"] > 0 and data["command"]
    assert run("bench", dense, "--batch", "1,2") == 2  # static batch 1: one line saying how to fix it
    assert "compile it with --dynamic-batch" in capsys.readouterr().err
    assert run("bench", tmp_path, "--batch", "1") == 2  # a directory that is not an OUT
    assert run("bench", dense, "--img-size", 64) == 2  # an OUT's size is fixed: not silently ignored
    assert "--img-size applies to a model name" in capsys.readouterr().err
    assert run("nvit-table", dense, small, "--rounds", 2, "--iterations", 2, "-o", tmp_path / "nvit", "--quiet") == 0
    table = json.loads((tmp_path / "nvit.json").read_text())
    assert table["rows"][0]["speedup"] == pytest.approx(1.0) and table["rows"][1]["params_x"] > 1.0
    assert "| Model | #Para (x) |" in (tmp_path / "nvit.md").read_text()
    assert run("nvit-table", dense) == 2
    assert run("nvit-table", dense, small, "--clock", "cpu", "--threads", 1, "--rounds", 2, "--iterations", 2,
               "-o", tmp_path / "nvit_cpu", "--quiet") == 0
    table = json.loads((tmp_path / "nvit_cpu.json").read_text())
    assert table["clock"] == "cpu" and all(r["median_ms"] > 0 for r in table["rows"])
    assert "least single-thread CPU time" in (tmp_path / "nvit_cpu.md").read_text()
    capsys.readouterr()
    assert run("nvit-table", dense, small, "--clock", "cpu", "--threads", 2) == 2  # the CPU clock needs one thread
    assert "--threads 1" in capsys.readouterr().err
    assert run("nvit-table", dense, small, "--rounds", 0) == 2 and "--rounds must be >= 1" in capsys.readouterr().err
    assert run("bench", dense, "--clock", "cuda") == 2 and "needs a GPU backend" in capsys.readouterr().err
    assert run("bench", dense, "--json", tmp_path) == 2 and "is a directory" in capsys.readouterr().err


def test_bench_a_model_name_at_several_batches(capsys):
    assert run("bench", "deit_tiny_patch16_224", "--batch", "1,2", "--iterations", 1, "--warmup", 0,
               "--img-size", 32, "--quiet") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["1", "2"]


def test_bench_the_digits_reference_on_the_cpu_clock_shows_its_least_time(capsys):
    assert run("bench", "digits", "--batch", "1", "--iterations", 3, "--warmup", 0, "--threads", 1,
               "--clock", "cpu", "--quiet") == 0
    title, header, row = capsys.readouterr().out.splitlines()
    assert title.startswith("digits on ort") and title.endswith("cpu clock") and header.split()[-2:] == ["least", "ms"]
    median, least = float(row.split()[1]), float(row.split()[-1])
    assert 0 < least <= median
    assert run("bench", "digits-reference", "--img-size", 64, "--quiet") == 2
    assert "runs at its trained 32x32 input" in capsys.readouterr().err


def test_dcvit_table_loads_each_variant_from_its_build_output(tmp_path, capsys):
    """Defect 7: the table reloads every variant from the artifact its build wrote. Runners do not expose an
    ``artifact`` attribute (the TensorRT runner never had one), so reading it from a runner fails here too."""
    assert not hasattr(__import__("vitrt.compiler.backends.base", fromlist=["Runner"]).Runner, "artifact")
    assert run("dcvit-table", "--model", "vit_tiny_patch16_224", "--img-size", 32, "--seeds", 1, "--iterations", 1,
               "--warmup", 0, "--threads", 1, "--clock", "cpu", "-o", tmp_path / "t8_b0.5", "--quiet") == 0
    result = json.loads((tmp_path / "t8_b0.5.json").read_text())  # not t8_b0.json: the dot is part of the name
    assert len(result["table"]["Attn"]) == 12 and result["dense"]["mean_ms"] > 0
    assert result["command"].split()[0] == "vitrt"  # the CLI's command, not "python -m vitrt.benchmarks.dcvit"
    assert "| block | Block | Attn | FFN | Attn+0.5·FFN |" in (tmp_path / "t8_b0.5.md").read_text()
    from vitrt.benchmarks.dcvit import format_table

    assert "ms, median CUDA-event" in format_table({**result, "clock": "cuda"})  # a trt table (KeyError before)
    assert "one seed (no spread" in format_table(result) and "±" not in format_table(result)  # not "± 0.00"
    assert format_table({**result, "seeds": 2}).count("±") == 2 + 12 * 4


def test_dcvit_table_of_the_digits_reference(tmp_path):
    """digits (the shipped reference) is a model dcvit-table takes, as compile and bench do."""
    assert run("dcvit-table", "--model", "digits", "--seeds", 1, "--iterations", 1, "--warmup", 0, "--threads", 1,
               "-o", tmp_path / "t8", "--quiet") == 0
    assert len(json.loads((tmp_path / "t8.json").read_text())["table"]["Attn"]) == 12


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),  # a table of nan ± nan
    (["--batch", "0"], "--batch must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
])
def test_dcvit_table_counts_are_checked(capsys, args, message):
    assert run("dcvit-table", "--model", "digits", *args, "--quiet") == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["bench-quant-accuracy", "--variants", "fp32,foo"], "unknown variant 'foo'"),  # before fp32 compiles
    (["bench-quant-accuracy", "--reference-dir", "{tmp}"], "has no model.pt or info.json"),
    (["bench-quant-speed", "digits", "--calib-images", "4", "--batch", "8"], "must be a multiple of --batch"),
    (["bench-quant-speed", "digits", "--calib-images", "12", "--batch", "8"], "must be a multiple of --batch"),
    (["bench-quant-speed", "digits", "--rounds", "0"], "--rounds must be >= 1"),  # nan ms before
    (["bench-quant-speed", "digits", "--iters", "0"], "--iters must be >= 1"),  # after three compiles before
])
def test_quantization_benchmarks_refuse_bad_options_before_any_compile(tmp_path, capsys, args, message):
    assert run(*[a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_bench_refusals_name_the_flag_and_the_file(tmp_path, capsys):
    """A count is named as its flag is spelled; a manifest vitrt did not write is not 'compiled with --no-build'."""
    assert run("bench-quant-accuracy", "--calib-images", 0) == 2
    assert "--calib-images must be >= 1, got 0" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{}")
    assert run("bench", tmp_path) == 2
    assert "manifest.json' lacks 'artifact': it was not written by vitrt compile" in capsys.readouterr().err
