"""The digits reference model: real accuracy, and the compiled artifact agrees with torch."""

import json

import pytest

from vitrt.calib.data import load_data
from vitrt.calib.evaluate import accuracy, runner_accuracy
from vitrt.cli import main
from vitrt.pipeline.driver import compile
from vitrt.compiler.backends import BuildOptions, get_backend


def test_digits_split_is_fixed_and_real():
    train = load_data("digits", 32, split="train")
    test = load_data("digits", 32, split="test")
    assert len(train) + len(test) == 1797 and len(test) == 450
    assert tuple(test.images.shape[1:]) == (3, 32, 32) and set(test.labels.tolist()) == set(range(10))
    assert float(test.images.min()) >= -1.0 and float(test.images.max()) <= 1.0


def test_reference_reaches_95_percent(digits_reference, digits_test):
    model, info = digits_reference
    assert accuracy(model, digits_test) >= 0.95
    assert info["test_top1"] == pytest.approx(accuracy(model, digits_test))


def test_compiled_artifact_has_the_same_top1(digits_reference, digits_test, tmp_path):
    model, _ = digits_reference
    result = compile(model, tmp_path / "out", batch=16, verify=True, quiet=True)
    runner = get_backend("ort").load(result.artifact_path, BuildOptions())
    assert runner_accuracy(runner, digits_test) == accuracy(model, digits_test)
    assert result.manifest["verify"]["max_abs_err"] <= 1e-4


def test_demo_writes_the_table_side_by_side(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--rounds", "2", "--iterations", "2"]) == 0
    printed, log = capsys.readouterr()
    # the variants are compiled in a staging directory, gone at the end: the log names where they end up
    assert f"[vitrt] wrote {out / 'tome'}\n" in log and "staging" not in log
    assert all(label in printed for label in ("dense fp32", "fp16", "int8 PTQ", "ToMe 60% FLOPs"))
    assert "| variant | top-1 | Δ vs dense |" in printed and printed.strip() in (out / "demo.md").read_text()
    result = json.loads((out / "demo.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["dense fp32"]["speedup"] == 1.0 and rows["dense fp32"]["delta_points"] == 0.0
    assert rows["dense fp32"]["compiled_top1"] == pytest.approx(0.9889, abs=1e-4)  # the shipped reference
    for label, sub in (("dense fp32", "dense"), ("fp16", "fp16"), ("int8 PTQ", "int8"), ("ToMe 60% FLOPs", "tome")):
        manifest = json.loads((out / sub / "manifest.json").read_text())
        assert manifest["verify"]["ok"] and manifest["model"] == "digits_vit"
        twin_error = manifest["verify"].get("max_abs_err_twin", manifest["verify"]["max_abs_err"])
        assert rows[label]["max_abs_err"] == twin_error  # the column is "vs twin" in every row, dense included
        assert rows[label]["median_ms"] > 0 and rows[label]["p90_ms"] >= rows[label]["median_ms"] * 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # nothing else left beside OUT


def test_demo_refuses_bad_options_before_any_work(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo"), "--batch", "0"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
