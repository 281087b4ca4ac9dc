"""Tests added by a mutation audit of vitrt.search.study, vitrt.search.evaluate, vitrt.calib.evaluate and
vitrt.pipeline.estimate: each pins a behaviour that a one-line mutation could change without the existing tests
noticing. Tiny models and sets, or the cached digits reference: seconds each."""

from __future__ import annotations

import json
import shutil

import pytest

from vitrt.cli import main as cli
from vitrt.compiler.errors import OptionError
from vitrt.search.study import DENSE, StudyConfig, _jsonable, markdown, rows

from conftest import DIGITS_LUT


# ---------------------------------------------------------------- vitrt.search.study: the rows and their options


def compile_check(options: dict) -> None:
    from vitrt.compiler.options import from_options
    from vitrt.pipeline.config import CompileConfig

    from_options(CompileConfig, dict(options)).validate()


@pytest.mark.parametrize("epochs", [0, 1])
def test_every_study_row_passes_the_compiles_option_check_at_zero_and_one_epochs(epochs):
    """Training data is named only where a row trains: at --epochs 0 a row that named its fine-tuning data would be
    refused by the compile ("--sparse-data acts only with --sparse-finetune-epochs"). The distillation row named
    --distill-data at --epochs 0 too, so `vitrt study --epochs 0` listed it as refused for an option the user never
    passed."""
    for label, options in rows("digits", epochs, DIGITS_LUT).values():
        compile_check(options)


def test_without_a_spec_the_merge_rows_use_the_digits_references_sizes(digits_reference):
    """Option checking (no spec) builds the rows with the digits reference's merge sizes: r=2, LGTM window 4 — the
    sizes the reference's own spec gives."""
    from vitrt.compiler.models import canonicalize

    plain, real = rows("digits", 0, None), rows("digits", 0, None, canonicalize(digits_reference[0]).spec)
    for name in ("tome", "dfe", "lgtm", "dfe_kd"):
        assert plain[name] == real[name]
    assert plain["tome"][1]["tome"] == "2" and plain["lgtm"][1]["lgtm_window"] == 4


def test_the_tome_row_merges_from_the_first_block_and_the_dfe_rows_keep_the_dfe_skip():
    table = rows("digits", 1, DIGITS_LUT)
    assert table["tome"][1]["dfe_skip"] == 0
    assert all("dfe_skip" not in table[name][1] for name in ("dfe", "lgtm", "dfe_kd", "prune_dfe_int8"))


def test_every_int8_row_calibrates_on_the_same_128_images():
    table = rows("digits", 1, DIGITS_LUT)
    for name in ("int8", "qat", "fp8", "prune_int8", "prune_dfe_int8", "prune30_dfe_int8"):
        assert table[name][1]["calib_images"] == 128 and table[name][1]["calib_data"] == "digits"


def test_row_options_are_recorded_with_paths_as_text():
    options = _jsonable(rows("digits", 1, DIGITS_LUT)["prune"][1])
    assert options["lut"] == str(DIGITS_LUT) and json.loads(json.dumps(options)) == options


# ---------------------------------------------------------------- vitrt.search.study: option checks and resuming


@pytest.mark.parametrize("flag", ["--batch", "--rounds"])
def test_a_batch_or_rounds_below_one_is_refused_and_one_is_taken(tmp_path, capsys, flag):
    assert cli(["study", "digits", "-o", str(tmp_path / "s"), flag, "0"]) == 2
    assert "--batch and --rounds >= 1" in capsys.readouterr().err
    StudyConfig(model="digits", out=tmp_path / "s", **{flag[2:]: 1}).validate()


def recorded_study(out, **settings):
    (out / "engines").mkdir(parents=True)
    (out / "engines" / "settings.json").write_text(json.dumps(settings))


def test_force_starts_over_a_study_made_with_other_settings(tmp_path):
    recorded_study(tmp_path / "s", **StudyConfig(model="digits", out=tmp_path / "s", epochs=0).settings())
    StudyConfig(model="digits", out=tmp_path / "s", epochs=5, force=True).validate()


def test_a_setting_an_older_study_did_not_record_does_not_count_as_different(tmp_path):
    recorded = StudyConfig(model="digits", out=tmp_path / "s", epochs=0).settings()
    del recorded["seed"], recorded["lut"]
    recorded_study(tmp_path / "s", **recorded)
    StudyConfig(model="digits", out=tmp_path / "s", epochs=0).validate()


def test_a_study_records_its_batch_and_its_tables_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(DIGITS_LUT, tmp_path / "lut.json")
    settings = StudyConfig(model="digits", out=tmp_path / "s", lut="lut.json").settings()
    assert settings["lut"] == str((tmp_path / "lut.json").resolve()) and settings["batch"] == 8
    recorded_study(tmp_path / "s", **settings)
    with pytest.raises(OptionError, match=r"other settings \(--batch\)"):
        StudyConfig(model="digits", out=tmp_path / "s", lut=tmp_path / "lut.json", batch=4).validate()
    StudyConfig(model="digits", out=tmp_path / "s", lut=tmp_path / "lut.json").validate()  # the same table


def test_a_trailing_comma_in_rows_names_no_empty_row(tmp_path):
    assert StudyConfig(model="digits", out=tmp_path / "s", rows="int8, ,fp16,").validate().row_names == \
        [DENSE, "int8", "fp16"]


# ---------------------------------------------------------------- vitrt.search.study: the report


def measured(top1, **kwargs):
    return {"top1": top1, "cpu_ms": 2.0, "speedup_cpu": 1.0, "wall_ms": 3.0, "speedup_wall": 1.0, "params": 1234567,
            "flops": 2_500_000_000, "onnx_bytes": 4096, **kwargs}


def study_report(**extra_rows):
    return {"model": "digits", "command": "vitrt study digits -o OUT", "method": "M", "test_images": 450,
            "data": "digits", "batch": 8, "epochs": 1, "seconds": 90.0,
            "rows": {DENSE: {"label": "dense fp32", "measured": measured(0.99), "verify": {"max_abs_err": 3e-6}},
                     **extra_rows}}


def table_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_study_table_says_the_drop_in_points_the_minutes_gflops_kb_and_the_verify_error():
    text = markdown(study_report(int8={"label": "int8", "measured": measured(0.97, speedup_cpu=2.5), "verify": {}}))
    assert "Whole run 1.5 min." in text
    dense, int8 = table_row(text, "dense fp32"), table_row(text, "int8")
    assert dense[1:3] == ["99.00 %", "0.00"] and int8[1:3] == ["97.00 %", "2.00"]  # drop: dense minus the row
    assert int8[4] == "2.50x" and int8[7:10] == ["1,234,567", "2.5000", "4"]
    assert dense[10] == "3.0e-06" and int8[10] == "—"  # no verify error recorded: a dash


# ---------------------------------------------------------------- vitrt.search.study: a whole (dense-only) study


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    """Two real studies of the digits reference into one OUT (about 10 s each): a fresh one with --force (nothing to
    start over), then a resume asking for int8 too, whose engine directory holds a file the study did not make (so the
    compile refuses that row)."""
    from vitrt.search.study import run

    out = tmp_path_factory.mktemp("study") / "OUT"
    first = run(StudyConfig(model="digits", out=out, rows="dense", epochs=0, rounds=1, force=True, quiet=True))
    (out / "engines" / "int8").mkdir()
    (out / "engines" / "int8" / "notes.txt").write_text("mine")
    second = run(StudyConfig(model="digits", out=out, rows="dense,int8", epochs=0, rounds=1, quiet=True))
    return out, first, second


def test_a_fresh_study_with_force_runs_and_is_verified_top1_on_the_450_digits_test_images(study_runs):
    out, first, _ = study_runs
    assert first["test_images"] == 450
    dense = first["rows"][DENSE]
    assert dense["verify"]["ok"] and dense["verify"]["max_abs_err"] < 1e-4 and dense["compile_seconds"] > 0
    assert dense["measured"]["top1"] > 0.95


def test_a_resumed_study_reuses_the_engines_compiled_and_lists_a_refused_row_with_why(study_runs):
    out, first, second = study_runs
    dense, int8 = second["rows"][DENSE], second["rows"]["int8"]
    assert dense["compile_seconds"] is None and dense["verify"] == first["rows"][DENSE]["verify"]
    assert "measured" not in int8 and "not empty" in int8["refused"]
    assert (out / "engines" / "int8" / "notes.txt").read_text() == "mine"
    assert table_row((out / "study.md").read_text(), int8["label"])[1].startswith("refused: ")
    assert json.loads((out / "study.json").read_text())["rows"]["int8"]["refused"] == int8["refused"]


# ---------------------------------------------------------------- vitrt.search.evaluate: the evaluator and calibration


@pytest.fixture(scope="module")
def evaluator(digits_reference):
    """The search's evaluator of the digits reference with the recorded digits table (about a second)."""
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.progress import Progress
    from vitrt.search.evaluate import Evaluator, Target
    from vitrt.search.holdout import search_data

    twin = canonicalize(digits_reference[0]).eval()
    return Evaluator(twin, "digits", search_data("digits", twin.spec.img), LatencyTable.load(DIGITS_LUT), DIGITS_LUT,
                     Target(8, "ort", 1), Progress(enabled=False))


@pytest.fixture
def calibrated(evaluator):
    """The evaluator, its calibration reset after the test."""
    yield evaluator
    evaluator.calibrate(1.0)


def test_the_calibrated_dense_prediction_is_the_measured_time(calibrated):
    """lut_scale's contract: with the offset, the dense engine's calibrated prediction is its measured time."""
    from vitrt.search.evaluate import lut_scale
    from vitrt.search.space import Recipe

    alone, offset = calibrated.dense_table_alone_ms, 0.1
    calibrated.calibrate(lut_scale(12.0, alone, offset), 2.0, offset)
    assert calibrated.dense_table_ms == pytest.approx(alone + offset)
    assert calibrated.dense_ms == pytest.approx(12.0)
    assert calibrated.predict(Recipe(), calibrated.twin.spec) == pytest.approx(12.0)


def test_an_estimate_is_priced_at_the_machines_scale_and_judged_on_the_held_out_split(calibrated):
    from vitrt.compiler.cost import vit_flops, vit_params
    from vitrt.search.space import Recipe

    calibrated.calibrate(2.0, 1.0, 0.1)
    estimate = calibrated.estimate(Recipe(), 0)
    spec = calibrated.twin.spec
    assert estimate.ok and estimate.predicted_ms == pytest.approx(calibrated.dense_ms)
    assert (estimate.params, estimate.flops) == (vit_params(spec), vit_flops(spec)) and estimate.params < estimate.flops
    assert estimate.holdout_top1 == calibrated.dense_holdout
    assert estimate.holdout_loss == pytest.approx(calibrated.dense_holdout_loss)


def test_the_compile_options_follow_the_target_and_the_evaluators_seed(evaluator):
    from dataclasses import replace

    from vitrt.search.space import Recipe

    target, seed = evaluator.target, evaluator.seed
    try:
        evaluator.target, evaluator.seed = replace(target, batch=4), 3
        config = evaluator.config(Recipe(prune=0.5), 0)
        assert (config.target.batch, config.seed) == (4, 3)
    finally:
        evaluator.target, evaluator.seed = target, seed


def test_a_measured_ratio_of_one_tells_no_offset():
    """table_offset: "0 when the ratio cannot tell" — a small engine as slow as the dense one included."""
    from vitrt.search.evaluate import table_offset

    assert table_offset(dense_table_ms=8.0, small_table_ms=4.0, measured_ratio=1.0) == 0.0


def test_an_estimate_read_from_an_older_state_without_the_loss_loads():
    from vitrt.search.evaluate import Estimate
    from vitrt.search.space import Recipe

    assert Estimate(Recipe(), 0, seconds=1.234).to_dict()["seconds"] == 1.23  # sub-second costs are kept
    saved = Estimate(Recipe(prune=0.5), 2, 4.0, 0.98, 100, 200, 1.5).to_dict()
    del saved["holdout_loss"]
    assert Estimate.from_dict(saved) == Estimate(Recipe(prune=0.5), 2, 4.0, 0.98, 100, 200, 1.5)


# ---------------------------------------------------------------- vitrt.pipeline.estimate: the manifest's accuracy


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    """(ONNX Runtime runner of a compiled one-block tiny ViT, its dense canonical twin)."""
    from conftest import tiny_vit
    from vitrt.compiler.models import canonicalize
    from vitrt.pipeline.driver import compile
    from vitrt.search.measure import load_runner

    model = tiny_vit(depth=1)
    out = tmp_path_factory.mktemp("tiny") / "out"
    compile(model, out, quiet=True)
    return load_runner(out)[0], canonicalize(model).eval()


def test_real_accuracy_on_data_without_labels_is_refused(tiny_artifact):
    from vitrt.compiler.errors import DataError
    from vitrt.pipeline.estimate import artifact_accuracy

    runner, twin = tiny_artifact
    with pytest.raises(DataError, match="--eval-data 'synthetic' has no labels"):
        artifact_accuracy(runner, twin, metric_set=None, eval_data="synthetic")


@pytest.fixture(scope="module")
def tiny_evaluator():
    """The search's evaluator of a one-block random ViT with the digits table's patch 4, on 200 digits images."""
    from conftest import tiny_vit
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.progress import Progress
    from vitrt.search.evaluate import Evaluator, Target
    from vitrt.search.holdout import search_data

    twin = canonicalize(tiny_vit(depth=1, patch_size=4)).eval()
    return Evaluator(twin, "tiny", search_data("digits", twin.spec.img, limit=200), LatencyTable.load(DIGITS_LUT),
                     DIGITS_LUT, Target(8, "ort", 1), Progress(enabled=False))


def test_the_dense_models_figures_are_the_held_out_splits(tiny_evaluator):
    from vitrt.calib.evaluate import cross_entropy, top1, torch_logits

    data, twin = tiny_evaluator.data, tiny_evaluator.twin
    held_out, fit = torch_logits(twin, data.holdout), torch_logits(twin, data.fit)
    assert top1(held_out, data.holdout.labels) != top1(fit, data.fit.labels)  # a random model: the splits differ
    assert tiny_evaluator.dense_holdout == top1(held_out, data.holdout.labels)
    assert tiny_evaluator.dense_holdout_loss == pytest.approx(cross_entropy(held_out, data.holdout.labels))


def test_the_metric_set_follows_the_compiles_seed(tiny_artifact):
    from vitrt.pipeline.estimate import artifact_accuracy

    runner, twin = tiny_artifact
    first, again, other = (artifact_accuracy(runner, twin, metric_set="synthetic", eval_data=None, seed=seed)["metric"]
                           for seed in (0, 0, 1))
    assert first == again and first["dense"]["ce"] != other["dense"]["ce"]


def test_real_accuracy_refuses_labelled_data_with_more_classes_than_the_model(tiny_artifact):
    from conftest import tiny_vit
    from vitrt.compiler.errors import DataError
    from vitrt.compiler.models import canonicalize
    from vitrt.pipeline.estimate import artifact_accuracy

    runner, _ = tiny_artifact
    nine = canonicalize(tiny_vit(depth=1, num_classes=9)).eval()
    with pytest.raises(DataError, match="digits has 10 classes but the model has 9"):
        artifact_accuracy(runner, nine, metric_set=None, eval_data="digits")


def test_real_accuracy_on_an_image_folder_prepares_the_images_as_the_model_does(tiny_artifact, tmp_path):
    """An ImageFolder's images go through the model's input pipeline (its mean / std): another pipeline gives
    other figures."""
    import numpy as np
    from PIL import Image

    from vitrt.pipeline.driver import preprocessing
    from vitrt.pipeline.estimate import artifact_accuracy

    for c in range(10):  # one folder per class of the model
        (tmp_path / f"c{c}").mkdir()
        Image.fromarray(np.random.default_rng(c).integers(0, 255, (32, 32, 3), np.uint8)).save(tmp_path / f"c{c}" / "0.png")
    runner, twin = tiny_artifact
    from conftest import tiny_vit

    timm_prep = preprocessing(tiny_vit(depth=1), twin.spec)
    other = {**timm_prep, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    real = [artifact_accuracy(runner, twin, metric_set=None, eval_data=str(tmp_path), preprocessing=prep)["real"]
            for prep in (timm_prep, other)]
    assert real[0]["images"] == 10 and real[0]["ce_dense"] != real[1]["ce_dense"]


def test_the_metric_set_of_a_one_channel_model_has_one_channel(tmp_path):
    from conftest import tiny_vit
    from vitrt.compiler.models import canonicalize
    from vitrt.pipeline.driver import compile
    from vitrt.pipeline.estimate import artifact_accuracy
    from vitrt.search.measure import load_runner

    model = tiny_vit(depth=1, in_chans=1)
    compile(model, tmp_path / "gray", quiet=True)
    metric = artifact_accuracy(load_runner(tmp_path / "gray")[0], canonicalize(model).eval(), metric_set="synthetic",
                               eval_data=None)["metric"]
    assert metric["images"] > 0 and metric["compiled"]["loss"] == pytest.approx(0.0, abs=1e-4)


# --- defects the audit found (each test failed before its fix) ----------------------------------------------------

def test_a_refused_row_of_the_study_table_has_as_many_cells_as_the_header():
    """study.md listed a refused row as ``| label | refused: why |||||||||||``: 12 cells under an 11-column header."""
    measured = {"top1": 0.99, "cpu_ms": 1.0, "speedup_cpu": 1.0, "wall_ms": 1.0, "speedup_wall": 1.0, "params": 1,
                "flops": 1, "onnx_bytes": 1}
    report = {"model": "digits", "command": "vitrt study digits -o OUT", "method": "M", "test_images": 450,
              "data": "digits", "batch": 8, "epochs": 0, "seconds": 60.0,
              "rows": {DENSE: {"label": "dense fp32", "measured": measured},
                       "fp8": {"label": "PTQ fp8", "refused": "no fp8 kernels"}}}
    lines = markdown(report).splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    refused = next(line for line in lines if line.startswith("| PTQ fp8 |"))
    assert refused.count("|") == header.count("|")
