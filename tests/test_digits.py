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


def test_demo_prints_the_table(digits_reference, tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo"), "--bench-iters", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dense fp32" in out and "compiled top-1" in out
    assert all(label in out for label in ("fp16", "int8 PTQ", "ToMe 60% FLOPs"))
    assert json.loads((tmp_path / "demo" / "int8" / "manifest.json").read_text())["verify"]["ok"]
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["model"] == "digits_vit" and "latency" in manifest
