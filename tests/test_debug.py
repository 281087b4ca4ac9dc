"""Accuracy debugging (issue 17) on a tiny ViT: ``vitrt compare`` against the twin rebuilt from OUT/twin and between
two artifacts, a planted fault named as the first diverging point, per-layer sensitivity (the layer switch against
the fake-quant twin), ``--quant-exclude`` / ``--keep-float-top`` in compile (manifest ``float_layers``, Q/DQ left
out, verification still passing), the bisection's search, and one-line refusals. The digits-reference runs are
``-m slow``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_vit
from onnx import numpy_helper

import vitrt
from vitrt.calib.data import synthetic
from vitrt.cli import main as cli_main
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import canonicalize
from vitrt.compiler.progress import QUIET
from vitrt.debug.bisect import minimal_set
from vitrt.debug.compare import compare_artifacts, compare_with_twin, load_artifact, shared_points
from vitrt.debug.compare import run as compare_run
from vitrt.debug.config import CompareConfig, SensitivityConfig
from vitrt.debug.metrics import dtype_tolerance
from vitrt.debug.points import graph_points
from vitrt.pipeline.replay import load_record
from vitrt.transforms.quant.fakequant import apply_scale_table, quantize_twin
from vitrt.transforms.quant.sensitivity import LayerSwitch, score_layers, table_layers

pytestmark = pytest.mark.xdist_group("debug")  # the module's compiles are shared by its tests

COMMON = dict(name="tiny", batch=4, keep_twin=True, quiet=True)


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """fp32 and int8 (16 synthetic calibration images) compiles of a 3-block tiny ViT, with their twin records."""
    root = tmp_path_factory.mktemp("debug")
    model = tiny_vit(depth=3)
    vitrt.compile(model, root / "fp32", **COMMON)
    vitrt.compile(model, root / "int8", precision="int8", calib_data="synthetic", calib_images=16, **COMMON)
    return root


def config(*outs, **options) -> CompareConfig:
    return CompareConfig(*outs, images=8, quiet=True, **options).validate()


def test_points_cover_every_block_and_qdq(outs):
    artifact = load_artifact(outs / "int8")
    names = [p.name for p in graph_points(artifact.model, artifact.spec)]
    for i in range(3):
        for local in ("attn.logits", "attn.probs", "attn.out", "mlp.hidden", "mlp.out", "output",
                      "attn.q.input", "mlp.fc2.input"):
            assert f"blocks.{i}.{local}" in names
    assert names[0] == "patch_embed.input" and names[-1] == "logits"
    fp32 = load_artifact(outs / "fp32")
    assert not [p for p in graph_points(fp32.model, fp32.spec) if p.kind == "qdq"]


def test_compare_with_twin_is_within_tolerance(outs):
    comparison, meta = compare_with_twin(config(outs / "int8"), QUIET)
    assert meta["precision"] == "int8"
    assert not comparison.missing, comparison.missing
    assert comparison.first_exceeding() is None
    assert [row["block"] for row in comparison.block_growth()] == [0, 1, 2]
    assert comparison.head.agree == comparison.head.images == 8
    # against the float twin the Q/DQ error shows: every stream point moves, and more than against its own twin
    against_float, _ = compare_with_twin(config(outs / "int8", against="float"), QUIET)
    ours = {s.point.name: s.rel for s in comparison.stats}
    assert all(s.rel > ours[s.point.name] for s in against_float.stats if s.point.kind == "stream"
               and s.point.name != "patch_embed")


def test_records_of_low_rank_and_distilled_compiles_are_compared(tmp_path):
    """Every stage's plan reads back from a twin record (low rank and distillation could not: 'no loader')."""
    model = tiny_vit(depth=2)
    vitrt.compile(model, tmp_path / "out", tome="1", lowrank=0.9, distill_epochs=1, distill_data="synthetic",
                  **COMMON)
    record = load_record(tmp_path / "out")
    assert record.stages == ["tome", "distill", "lowrank"]
    comparison, _ = compare_with_twin(config(tmp_path / "out"), QUIET)
    assert not comparison.missing and comparison.first_exceeding() is None


def test_a_record_without_a_weight_of_the_twin_is_refused(outs, tmp_path):
    """A twin record whose arrays lack one of the twin's parameters is refused in one line, not loaded with that
    parameter left at its random initial value."""
    shutil.copytree(outs / "fp32" / "twin", tmp_path / "twin")
    with np.load(tmp_path / "twin" / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    del arrays["twin/blocks.1.mlp.fc1.weight"]
    with open(tmp_path / "twin" / "arrays.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(VitrtError, match="no weights for 'blocks.1.mlp.fc1.weight' \\(1 missing\\)") as info:
        load_record(tmp_path)
    assert "\n" not in str(info.value)


def test_attention_qdq_points_are_all_compared(tmp_path):
    """With --quantize-attention every attention Q/DQ point is compared with the twin, QKᵀ's second operand
    included (the graph holds Kᵀ, the twin's quantizer K: compared transposed, not listed as 'shapes differ')."""
    vitrt.compile(tiny_vit(depth=2), tmp_path / "qa", precision="int8", calib_data="synthetic", calib_images=8,
                  quantize_attention=True, **COMMON)
    comparison, _ = compare_with_twin(config(tmp_path / "qa"), QUIET)
    assert not comparison.missing, comparison.missing
    compared = {s.point.name: s for s in comparison.stats}
    assert "blocks.1.attn.qk.input_b" in compared and comparison.first_exceeding() is None
    # against a dense compile the attention Q/DQ points have no counterpart: listed as not compared, either way round
    vitrt.compile(tiny_vit(depth=2), tmp_path / "dense", **COMMON)
    only_quantized = {f"blocks.{i}.attn.{op}.input_{side}": "in one graph only" for i in range(2)
                      for op in ("qk", "av") for side in "ab"}
    for pair in (("dense", "qa"), ("qa", "dense")):
        comparison, _ = compare_artifacts(config(*(tmp_path / out for out in pair)), QUIET)
        assert comparison.missing == only_quantized


def planted(outs, tmp_path, layer: str, factor: float = 10.0):
    """A copy of the fp32 OUT whose ``layer`` weight initializer is scaled by ``factor`` in the ONNX."""
    out = tmp_path / "planted"
    shutil.copytree(outs / "fp32", out)
    model = onnx.load(str(out / "model.onnx"))
    node = next(n for n in model.graph.node if n.name == layer)
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(out / "model.onnx"))
    return out


def test_planted_fault_is_the_first_diverging_point(outs, tmp_path):
    out = planted(outs, tmp_path, "blocks.1.mlp.fc1")
    comparison, _ = compare_with_twin(config(out), QUIET)
    assert comparison.first_exceeding().point.name == "blocks.1.mlp.hidden"
    assert comparison.largest_contributor()["block"] == 1
    before = {s.point.name: s for s in comparison.stats}
    assert before["blocks.1.attn.out"].rel < 1e-5 and before["blocks.0.output"].rel < 1e-5


def test_error_that_enters_in_the_stem_is_named_there(outs, tmp_path, capsys):
    """A fault before block 0 (here the patch embedding) is the largest contributor, not whichever block happens to
    grow the stream's error most afterwards."""
    out = planted(outs, tmp_path, "patch_embed", factor=1.5)
    comparison, _ = compare_with_twin(config(out), QUIET)
    top = comparison.largest_contributor()
    assert top["block"] == "stem" and top["growth"] > max(r["growth"] for r in comparison.block_growth())
    assert top["worst_point"] in ("patch_embed", "embed")
    assert compare_run(config(out, out=tmp_path / "report")) == 0
    assert "largest contributor: the stem (input quantization / patch embedding)" in capsys.readouterr().out


def test_compare_command_writes_table_and_plot(outs, tmp_path, capsys):
    report = tmp_path / "report"
    assert compare_run(config(outs / "fp32", outs / "int8", out=report)) == 0
    data = json.loads((report / "compare.json").read_text())
    assert data["precision"] == "fp32 vs int8" and data["head"]["images"] == 8
    assert data["tolerance_logits"] == dtype_tolerance("int8")  # the looser precision's: int8's, not fp32's
    names = [p["point"] for p in data["points"]]
    assert "blocks.2.attn.probs" in names and "blocks.0.attn.q.input" in names  # Q/DQ'd input vs the float input
    assert [b["block"] for b in data["blocks"]] == [0, 1, 2]
    assert (report / "error_growth.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    # the input's quantization brings 0.011 of relative error, the three blocks 1e-5 to 5e-5 each
    assert "largest contributor: the stem" in printed and "first point over its tolerance" in printed
    # two unrelated models (10 and 5 classes): refused, not "every point within tolerance"
    vitrt.compile(tiny_vit(depth=3, num_classes=5), tmp_path / "other", **COMMON)
    assert cli_main(["compare", str(outs / "fp32"), str(tmp_path / "other"), "--images", "4", "-o",
                     str(tmp_path / "r2")]) == 2
    assert "are compiles of different models (num_classes 10 vs 5)" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    # the review's case: same classes and image size, another patch (and so other points): refused the same way
    vitrt.compile(tiny_vit(depth=3, patch_size=4), tmp_path / "patch4", **COMMON)
    assert cli_main(["compare", str(outs / "fp32"), str(tmp_path / "patch4"), "--images", "4", "-o",
                     str(tmp_path / "r3")]) == 2
    assert "(patch 8 vs 4)" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_compare_refuses_compiles_of_another_depth_or_image_size(outs, tmp_path):
    """Two compiles of different models (another depth) or for other images (size, channels) are refused before
    anything runs."""
    vitrt.compile(tiny_vit(depth=2), tmp_path / "depth2", **COMMON)
    with pytest.raises(VitrtError, match=r"compiles of different models \(depth 3 vs 2\)"):
        compare_artifacts(config(outs / "fp32", tmp_path / "depth2"), QUIET)
    vitrt.compile(tiny_vit(depth=3, img_size=64), tmp_path / "img64", **COMMON)
    vitrt.compile(tiny_vit(depth=3, in_chans=1), tmp_path / "gray", **COMMON)
    for other, shape in (("img64", "3x64x64"), ("gray", "1x32x32")):
        with pytest.raises(VitrtError, match=f"takes 3x32x32 images, '.*{other}' {shape}: they cannot see the same"):
            compare_artifacts(config(outs / "fp32", tmp_path / other), QUIET)


def test_shared_points_are_in_computation_order(outs):
    """A Q/DQ'd graph holds more points than its float compile: the points both hold are listed in computation
    order whichever side has fewer (the Q/DQ'd layer inputs matched in the float graph at their place)."""
    fp32, int8 = load_artifact(outs / "fp32").model, load_artifact(outs / "int8").model
    in_order = [p.name for p in graph_points(int8, load_artifact(outs / "int8").spec)]
    for a, b in ((fp32, int8), (int8, fp32)):
        points_a, points_b = shared_points(a, b)
        names = [p.name for p in points_b]
        assert [p.name for p in points_a] == names == in_order  # every point of the int8 graph is shared
        assert names.index("blocks.0.attn.q.input") < names.index("blocks.0.output") < names.index(
            "blocks.1.attn.q.input")


def test_compare_a_b_same_graph_is_exact(outs):
    comparison, _ = compare_artifacts(config(outs / "int8", outs / "int8"), QUIET)
    assert max(s.max_abs for s in comparison.stats) == 0.0 and comparison.first_exceeding() is None


def test_compare_across_ort_and_torch_backends(outs, tmp_path):
    """The same int8 model compiled for ort and for the torch backend: every shared point agrees within the int8
    tolerance, each graph run by the backend it was compiled for (the torch OUT through torch.fx)."""
    vitrt.compile(tiny_vit(depth=3), tmp_path / "torch", precision="int8", calib_data="synthetic", calib_images=16,
                  backend="torch", **COMMON)
    comparison, meta = compare_artifacts(config(outs / "int8", tmp_path / "torch"), QUIET)
    assert "(ort, int8)" in meta["reference"] and "(torch, int8)" in meta["candidate"]
    assert len(comparison.stats) > 40 and comparison.first_exceeding() is None
    assert 0 < max(s.max_abs for s in comparison.stats) < 0.25  # two runtimes: not bit-exact, well within int8's
    same, meta = compare_artifacts(config(outs / "int8", outs / "int8", backend_b="torch"), QUIET)
    assert "(torch, int8)" in meta["candidate"] and same.first_exceeding() is None


def test_compare_refusals(outs, tmp_path, capsys):
    assert cli_main(["compare", str(tmp_path)]) == 2
    assert "is not a vitrt compile output" in capsys.readouterr().err
    no_twin = tmp_path / "no_twin"
    shutil.copytree(outs / "fp32", no_twin, ignore=shutil.ignore_patterns("twin"))
    assert cli_main(["compare", str(no_twin), "--images", "4", "-o", str(tmp_path / "r")]) == 2
    assert "--keep-twin" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(VitrtError, match="drop B"):
        CompareConfig(outs / "fp32", outs / "int8", bisect=True).validate()
    for options, message in (({"max_drop": float("nan")}, "--max-drop must be a number of points"),
                             ({"max_drop": float("inf")}, "--max-drop must be a number of points"),
                             ({"bisect_stages": "foo"}, "--bisect-stages takes a comma-separated subset"),
                             ({"threads": 0}, "--threads must be >= 1")):
        with pytest.raises(VitrtError, match=message):  # before the compare runs, not after it
            CompareConfig(outs / "int8", bisect=True, **options).validate()


def test_sensitivity_split_applies_to_digits_only(tmp_path, capsys):
    """--split chooses a split of the digits data; with synthetic images it was accepted and ignored."""
    assert cli_main(["sensitivity", "digits", "--split", "train", "-o", str(tmp_path / "r")]) == 2
    assert "--split chooses a split of --data digits; synthetic has none" in capsys.readouterr().err
    assert SensitivityConfig("digits", data="digits", out=tmp_path / "r").validate().scoring_split == "test"


def test_debug_digits_never_replaces_a_directory_it_did_not_make(tmp_path, capsys):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.txt").write_text("keep")
    assert cli_main(["debug-digits", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "r")]) == 2
    assert "was not made by vitrt debug-digits" in capsys.readouterr().err
    assert (tmp_path / "work" / "thesis.txt").read_text() == "keep" and not (tmp_path / "r").exists()
    for bad in (["--keep-float-top", "x"], ["--max-drop", "nan"], ["--ranking", str(tmp_path / "missing.json")]):
        assert cli_main(["debug-digits", "--work", str(tmp_path / "w2"), *bad]) == 2
    assert not (tmp_path / "w2").exists()
    # checked before a minute of compiles: --results that takes nothing, a report directory vitrt did not write,
    # a ranking that is not one
    (tmp_path / "text.json").write_text("not json")
    reports = tmp_path / "r2" / "debug_compare_int8_float"
    reports.mkdir(parents=True)
    (reports / "mine.md").write_text("keep")
    for bad, message in ((["--results", "/proc/vitrt-results"], "nothing can be written there"),
                         (["--results", str(tmp_path / "r2")], "holds no .vitrt-output"),
                         (["--ranking", str(tmp_path / "text.json"), "--skip-compare"], "is corrupt: not valid JSON")):
        assert cli_main(["debug-digits", "--work", str(tmp_path / "w2"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "w2").exists() and (reports / "mine.md").read_text() == "keep"


# --- sensitivity and fallback ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated():
    twin = canonicalize(tiny_vit(depth=2))
    _, table = quantize_twin(twin, "int8", synthetic(32, 16, seed=3), max_images=16)
    return twin, table


def test_layer_switch_is_float_or_the_fake_quant_twin(calibrated):
    twin, table = calibrated
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    switch = LayerSwitch(twin, table)
    with torch.no_grad():
        assert torch.equal(switch.only(()).eval()(images), twin(images))
        assert torch.equal(switch.only(switch.layers)(images), apply_scale_table(twin, table)(images))
        one = switch.only(["blocks.1.mlp.fc2"])(images)
        only_table = table.without([layer for layer in switch.layers if layer != "blocks.1.mlp.fc2"])
        assert torch.equal(one, apply_scale_table(twin, only_table)(images))


def test_score_layers_ranks_every_layer(calibrated):
    twin, table = calibrated
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    scored, summary = score_layers(twin, table, images, float_one=True)
    assert sorted(r.layer for r in scored) == sorted(table_layers(table)) and len(scored) == 2 * 6 + 2
    assert [r.kl for r in scored] == sorted((r.kl for r in scored), reverse=True)
    assert all(r.kl >= 0 and r.kl_float_one is not None for r in scored)
    assert summary["kl_quantized"] > scored[0].kl * 0.5 > 0


def test_quant_exclude_and_keep_float_top_in_compile(outs, tmp_path):
    model = tiny_vit(depth=3)
    out = tmp_path / "excluded"
    vitrt.compile(model, out, precision="int8", calib_data="synthetic", calib_images=16, verify=True,
                  quant_exclude="blocks.0.*,head", **COMMON)
    manifest = json.loads((out / "manifest.json").read_text())
    floats = manifest["quantization"]["float_layers"]
    assert sorted(floats) == sorted([f"blocks.0.{x}" for x in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1",
                                                                 "mlp.fc2")] + ["head"])
    assert floats["head"] == "--quant-exclude head"
    assert manifest["verify"]["ok"]
    names = {n.name for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "blocks.0.attn.q.input.quantize" not in names and "blocks.1.attn.q.input.quantize" in names
    assert "head.weight.dequantize" not in names
    assert set(load_record(out).plans["quant"].float_layers) == set(floats)  # the twin record keeps them

    ranking = tmp_path / "sens"
    assert cli_main(["sensitivity", str(outs / "int8"), "--images", "8", "--calib-images", "16", "-o", str(ranking),
                     "--quiet"]) == 0
    ranked = [row["layer"] for row in json.loads((ranking / "sensitivity.json").read_text())["layers"]]
    assert (ranking / "sensitivity.png").is_file() and len(ranked) == 3 * 6 + 2
    top = tmp_path / "top"
    vitrt.compile(model, top, precision="int8", calib_data="synthetic", calib_images=16, keep_float_top=2,
                  sensitivity=ranking / "sensitivity.json", **COMMON)
    floats = json.loads((top / "manifest.json").read_text())["quantization"]["float_layers"]
    assert list(floats) == ranked[:2] and "sensitivity rank 1" in floats[ranked[0]]


def test_keep_float_top_without_a_ranking_keeps_the_layers_scored_most_sensitive(tmp_path):
    """No --sensitivity: the compile scores every layer on its calibration images (KL of the output with that layer
    alone quantized) and keeps the K highest float — recomputed here from the same images and calibration."""
    from vitrt.calib.data import take_images
    from vitrt.pipeline.config import CompileConfig
    from vitrt.transforms.base import PlanContext

    model = tiny_vit(depth=3)
    vitrt.compile(model, tmp_path / "top", precision="int8", calib_data="synthetic", calib_images=16,
                  keep_float_top=2, **COMMON)
    floats = json.loads((tmp_path / "top" / "manifest.json").read_text())["quantization"]["float_layers"]
    twin = canonicalize(model)
    ctx = PlanContext(target=CompileConfig(model="tiny").target, teacher=twin)
    _, table = quantize_twin(twin, "int8", ctx.data("synthetic", limit=16), max_images=16)
    scored, _ = score_layers(twin, table, torch.cat(list(take_images(ctx.data("synthetic", limit=16), 16))))
    assert list(floats) == [row.layer for row in scored[:2]] and scored[1].kl > scored[2].kl


def test_fallback_refusals(tmp_path):
    model = tiny_vit(depth=2)
    with pytest.raises(VitrtError, match="matches no quantized layer"):
        vitrt.compile(model, tmp_path / "a", precision="int8", quant_exclude="blocks.9.*", **COMMON)
    with pytest.raises(VitrtError, match="need.*precision='int8'"):
        vitrt.compile(model, tmp_path / "b", quant_exclude="head", **COMMON)
    bad = tmp_path / "ranking.json"
    bad.write_text(json.dumps({"precision": "fp8", "layers": [{"layer": "head"}]}))
    with pytest.raises(VitrtError, match="scored at fp8"):
        vitrt.compile(model, tmp_path / "c", precision="int8", keep_float_top=1, sensitivity=bad, **COMMON)
    other = tmp_path / "other.json"  # another model's ranking: the layer names are the same, the order is not
    other.write_text(json.dumps({"precision": "int8", "model_name": "deit_tiny_patch16_224",
                                 "layers": [{"layer": "head"}]}))
    with pytest.raises(VitrtError, match="was scored on deit_tiny_patch16_224, the compile is of digits"):
        vitrt.compile("digits", tmp_path / "c", precision="int8", keep_float_top=1, sensitivity=other, calib_images=4,
                      quiet=True)
    other.write_text(json.dumps({"precision": "int8", "model_name": "digits-reference", "layers": [{"layer": "head"}]}))
    vitrt.compile("digits", tmp_path / "e", precision="int8", keep_float_top=1, sensitivity=other, calib_images=4,
                  quiet=True)  # digits by any of its names
    shutil.rmtree(tmp_path / "e")
    reference = vitrt.pipeline.driver.model_by_name("digits")  # a label (debug-digits' "digits_vit") is not checked
    vitrt.compile(reference, tmp_path / "e", name="digits_vit", precision="int8", keep_float_top=1, sensitivity=other,
                  calib_images=4, quiet=True)
    shutil.rmtree(tmp_path / "e")
    with pytest.raises(VitrtError, match="keeps every one of the .* quantizable layers float"):
        vitrt.compile(model, tmp_path / "d", precision="int8", keep_float_top=999, calib_images=4, **COMMON)
    assert not any((tmp_path / d).exists() for d in "abcd")


# --- bisection -------------------------------------------------------------------------------------------------------

def test_minimal_set_finds_the_needed_units_in_few_evaluations():
    units = list(range(40))
    needed = {3, 17, 31}
    calls = []

    def ok(reverted):
        calls.append(1)
        return needed <= set(reverted)

    assert sorted(minimal_set(units, ok)) == sorted(needed)
    assert len(calls) < 40  # halving, not one unit at a time
    assert minimal_set(units, lambda reverted: True) == []


def test_bisect_finds_a_corrupted_layer(outs):
    """One layer's weight range shrunk x20 in the recorded plan (its weights clipped): the bisection, judged on
    agreement with the fully reverted graph, names that layer among the few it reverts, as compile flags."""
    import dataclasses

    from vitrt.debug.bisect import bisect_record
    from vitrt.transforms.quant.scale_table import ScaleTable

    record = load_record(outs / "int8")
    plan = record.plans["quant"]
    entries = dict(plan.table.entries)
    key = "blocks.1.mlp.fc1.weight"
    entries[key] = dataclasses.replace(entries[key], amax=entries[key].amax / 20)
    record.plans["quant"] = dataclasses.replace(plan, table=ScaleTable(plan.table.precision, entries,
                                                                       plan.table.source, dict(plan.table.meta)))
    images = np.random.default_rng(2).standard_normal((16, 3, 32, 32)).astype(np.float32)
    found = bisect_record(record, images, None, max_drop=0.0, stages=("quant",))
    names = [u["name"] for u in found["reverted"]]
    assert found["compiled"] < 1.0 and found["after"] == 1.0
    assert "blocks.1.mlp.fc1" in names and len(names) <= 3
    assert found["flags"] == f"--quant-exclude {','.join(names)}"
    assert found["evaluations"] < len(table_layers(plan.table))


def test_a_table_written_with_float_layers_is_reused_with_the_same_exclusion(tmp_path):
    model = tiny_vit(depth=2)
    first = tmp_path / "first"
    vitrt.compile(model, first, precision="int8", calib_images=8, quant_exclude="head", **COMMON)
    with pytest.raises(VitrtError, match="no entry for tensor 'head.input'.*needs the same"):
        vitrt.compile(model, tmp_path / "b", precision="int8", scale_table=first / "scale_table.json", **COMMON)
    again = tmp_path / "again"
    vitrt.compile(model, again, precision="int8", scale_table=first / "scale_table.json", quant_exclude="head",
                  **COMMON)
    graphs = [onnx.load(str(out / "model.onnx")).graph for out in (first, again)]
    assert [n.name for n in graphs[0].node] == [n.name for n in graphs[1].node]
    assert "head.input.quantize" not in {n.name for n in graphs[1].node}
    for a, b in zip(*(sorted(g.initializer, key=lambda i: i.name) for g in graphs)):
        assert a.name == b.name and np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_bisect_reverts_token_merging_with_flags_compile_accepts(tmp_path):
    """A token-merged OUT bisects (the reverted schedule is per block, with no DFE skip added) and the printed
    flags compile."""
    from vitrt.debug.bisect import bisect_record

    model = tiny_vit(depth=3)
    vitrt.compile(model, tmp_path / "tome", tome="4", dfe_skip=0, **COMMON)
    record = load_record(tmp_path / "tome")
    images = np.random.default_rng(3).standard_normal((8, 3, 32, 32)).astype(np.float32)
    found = bisect_record(record, images, None, max_drop=0.0, stages=("tome",))
    assert found["flags"].startswith("--tome-schedule ") and "--dfe-skip" not in found["flags"]
    schedule = found["flags"].split()[1]
    again = vitrt.compile(model, tmp_path / "again", tome_schedule=schedule, verify=True, **COMMON)
    assert again.manifest["verify"]["ok"]


def test_a_merged_graph_against_a_dense_one_says_which_blocks_it_could_not_compare(tmp_path, capsys):
    model = tiny_vit(depth=3)
    vitrt.compile(model, tmp_path / "dense", **COMMON)
    vitrt.compile(model, tmp_path / "merged", tome_schedule="0,4,0", **COMMON)
    assert cli_main(["compare", str(tmp_path / "dense"), str(tmp_path / "merged"), "--images", "4", "-o",
                     str(tmp_path / "r"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "largest contributor: blocks.0" in printed and "block output(s) 1, 2 could not be compared" in printed


def test_compare_sets_merge_decisions_apart_from_the_arithmetic(digits_reference, tmp_path):
    """fp16 + token merging: near ties merge one way in the graph and the other in the twin (10 of 64 digits here),
    which showed as a block 'over its tolerance' (review); the twin now merges as the probed graph decided."""
    vitrt.compile(digits_reference[0], tmp_path / "out", tome="2", precision="fp16", keep_twin=True, quiet=True)
    comparison, meta = compare_with_twin(CompareConfig(str(tmp_path / "out"), images=64, quiet=True).validate(),
                                         QUIET)
    assert comparison.first_exceeding() is None and not comparison.missing
    assert "merging as the graph decided" in meta["reference"] and "of 64 images would merge otherwise" in \
        meta["reference"]


def test_a_twin_record_keeps_a_fine_tuned_pruning_plans_weights(tmp_path):
    """A pruning plan whose planner fine-tuned the model carries its weights apart from its JSON: the record
    writes them with the codec its loader reads, and the rebuilt twin is the fine-tuned one, not the dense one."""
    from vitrt.compiler.target import TargetConfig
    from vitrt.compiler.weights import parameter_state
    from vitrt.pipeline.replay import save_record
    from vitrt.transforms.prune.plan import PruningPlan

    twin = canonicalize(tiny_vit(depth=2))
    tuned = {k: v + 0.25 for k, v in parameter_state(twin).items()}  # every parameter moved by fine-tuning
    save_record(tmp_path / "twin", twin, {"prune": PruningPlan.keep_all(twin.spec).with_weights(tuned)},
                TargetConfig())
    record = load_record(tmp_path)
    kept = record.plans["prune"].weights
    assert set(kept) == set(tuned) and all(np.array_equal(kept[k], tuned[k]) for k in tuned)
    rebuilt = parameter_state(record.twin_after())
    assert np.array_equal(rebuilt["blocks.1.mlp.fc2.weight"], tuned["blocks.1.mlp.fc2.weight"])
    assert np.array_equal(parameter_state(record.twin)["blocks.1.mlp.fc2.weight"],
                          parameter_state(twin)["blocks.1.mlp.fc2.weight"])  # the dense twin is kept beside it


def test_every_stage_has_the_codec_its_record_and_recipe_use():
    from vitrt.pipeline.plan_codecs import CODECS
    from vitrt.pipeline.stages import STAGES

    assert set(CODECS) == {stage.name for stage in STAGES}


def test_sensitivity_kl_is_the_float_models_kl_to_each_variant():
    """kl: KL(p_float ‖ p_quant) with that one layer quantized; kl_float_one: with every layer quantized but it —
    each recomputed here from the scale table."""
    import torch.nn.functional as F

    from vitrt.transforms.quant.sensitivity import _kl

    # p = softmax(0, 0) = (1/2, 1/2), q = softmax(ln 3, 0) = (3/4, 1/4): KL(p ‖ q) = ½ ln(2/3) + ½ ln 2
    assert _kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[np.log(3.0), 0.0]])) == pytest.approx(
        0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25), rel=1e-6)
    twin = canonicalize(tiny_vit())
    _, table = quantize_twin(twin, "int8", synthetic(32, 16, seed=3), max_images=16)
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    scored, _ = score_layers(twin, table, images, float_one=True)
    layers = {name.rpartition(".")[0] for name in table.entries}

    def kl(table_used):
        with torch.no_grad():
            ref, out = twin(images).double(), apply_scale_table(twin, table_used)(images).double()
        return float(F.kl_div(F.log_softmax(out, -1), F.log_softmax(ref, -1), reduction="batchmean",
                              log_target=True))
    for row in scored[:3]:
        assert row.kl == pytest.approx(kl(table.without(sorted(layers - {row.layer}))), rel=1e-6)
        assert row.kl_float_one == pytest.approx(kl(table.without([row.layer])), rel=1e-6)


def test_the_images_compared_are_counted_as_used():
    """--images above what the source holds compares (and says) what there is: digits' test split has 450."""
    from vitrt.compiler.models import spec_of_timm
    from vitrt.debug.compare import image_batches

    spec = spec_of_timm(vitrt.pipeline.driver.model_by_name("digits"))
    count, batches = image_batches("digits", spec, 100_000)
    assert count == 450 == sum(len(images) for images, _ in batches)
    assert image_batches("digits", spec, 7)[0] == 7
