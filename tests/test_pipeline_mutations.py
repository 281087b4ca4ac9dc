"""Tests added by a mutation audit of vitrt.pipeline (config, driver, recipe, replay, feedback, plan_codecs, estimate,
stages): each pins a behaviour that a one-line mutation could change without the existing tests noticing. Option
checks run on CompileConfig alone (nothing loaded); the compiles are of tiny ViTs on ONNX Runtime: seconds each."""

from __future__ import annotations

import json

import pytest

from conftest import DIGITS_LUT, tiny_vit
from vitrt.compiler.errors import DataError, OptionError, VitrtError
from vitrt.compiler.models import canonicalize, spec_of_timm
from vitrt.compiler.options import from_options
from vitrt.pipeline.config import CompileConfig, check_data_source, section_enabled


def config(**options) -> CompileConfig:
    return from_options(CompileConfig, {**options, "quiet": True}).validate()


# --- vitrt.pipeline.config: option checks -------------------------------------------------------------------------
def test_bench_needs_one_iteration_and_takes_no_warmup():
    with pytest.raises(OptionError, match="--bench-iters must be >= 1"):
        config(bench=True, bench_iters=0)
    with pytest.raises(OptionError, match="--bench-warmup >= 0"):
        config(bench=True, bench_warmup=-1)
    assert config(bench=True, bench_iters=1, bench_warmup=0).checks.bench_warmup == 0


def test_refine_lut_needs_a_table():
    with pytest.raises(OptionError, match="--refine-lut needs --lut LUT"):
        config(bench=True, refine_lut=True)


def test_the_image_size_must_be_positive_and_the_seed_not_negative():
    with pytest.raises(OptionError, match="--img-size must be positive, got 0"):
        config(img_size=0)
    with pytest.raises(OptionError, match="--seed must be >= 0, got -1"):
        config(seed=-1)
    assert config(img_size=1, seed=0).img_size == 1


def test_distillation_after_token_merging_alone_is_accepted():
    assert config(tome="2", distill_epochs=1).distill.enabled
    with pytest.raises(OptionError, match="--distill-epochs fine-tunes a pruned or token-merged model"):
        config(distill_epochs=1)


def test_a_table_is_accepted_for_tome_latency_and_refused_without_anything_that_reads_it():
    assert config(lut=DIGITS_LUT, tome_latency=0.8).checks.lut == DIGITS_LUT
    assert config(lut=DIGITS_LUT, bench=True).checks.lut == DIGITS_LUT
    with pytest.raises(OptionError, match="--lut needs --bench"):
        config(lut=DIGITS_LUT)


def test_bench_clock_needs_bench_and_is_what_bench_measures_on():
    with pytest.raises(OptionError, match="--bench-clock sets the clock of --bench: add --bench"):
        config(bench_clock="wall", threads=1)
    assert config(bench=True, bench_clock="cpu", threads=1).bench_clock == "cpu"
    assert config(bench=True, threads=1).bench_clock == "wall"


def test_no_build_refuses_real_accuracy_too():
    with pytest.raises(OptionError, match="--no-build builds no engine to measure"):
        config(backend="trt", no_build=True, eval_data="digits")


def test_prune_needs_a_table():
    with pytest.raises(OptionError, match="--prune needs --lut LUT"):
        config(prune=0.5)


@pytest.mark.parametrize("options", [{"precision": "fp16"}, {"sparsity": "2:4"}])
def test_low_rank_is_refused_with_typing_and_with_2_4(options):
    with pytest.raises(OptionError, match="--lowrank composes with --prune and token merging at --precision fp32"):
        config(lowrank=0.5, **options)


def test_of_two_options_without_their_parent_the_first_is_named():
    with pytest.raises(OptionError, match="^--bench-iters acts only with --bench; without it, drop --bench-iters$"):
        config(bench_iters=3, bench_warmup=2)


@pytest.mark.parametrize("options, flag", [
    ({"lowrank": 0.5, "lowrank_data": "digits"}, "--lowrank-data"),  # fine-tuning data without fine-tuning
    ({"sparsity": "2:4", "sparse_data": "digits"}, "--sparse-data"),
    ({"backend": "torch", "timing_cache": DIGITS_LUT}, "--timing-cache"),  # TensorRT's cache on another backend
])
def test_data_and_caches_without_what_reads_them_are_refused(options, flag):
    with pytest.raises(OptionError, match=f"^{flag} acts only with"):
        config(**options)


@pytest.mark.parametrize("precision", ["fp8", "int4w"])
def test_calibration_options_act_with_every_calibrated_precision(precision):
    """int4w (weight-only) calibrates nothing: there --calib-images only counts the images --keep-float-top scores
    layers on."""
    if precision == "int4w":
        with pytest.raises(OptionError, match="--calib-images counts the calibration images, and int4w calibrates "
                                              "nothing"):
            config(precision=precision, calib_images=8)
        assert config(precision=precision, calib_images=8, keep_float_top=1).quant.calib_images == 8
    else:
        assert config(precision=precision, calib_images=8).quant.calib_images == 8
    assert section_enabled(config(precision=precision).quant, config(precision=precision).target)
    assert not section_enabled(config(precision="fp16").quant, config(precision="fp16").target)


def test_layer_options_act_with_a_low_rank_budget():
    assert config(lowrank_budget=0.5, lowrank_layers="mlp").lowrank.layers == "mlp"


def test_a_checkpoint_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(OptionError, match="--checkpoint '.*' does not exist or is not a file"):
        config(model="vit_tiny_patch16_224", checkpoint=tmp_path)


def test_revit_checks_its_data_before_any_work(tmp_path):
    with pytest.raises(DataError, match="--data '.*missing' is neither digits, synthetic nor an existing directory"):
        config(revit=True, data=str(tmp_path / "missing"))


@pytest.mark.parametrize("source, hint", [("synthetic", "it measures real top-1$"),
                                          ("synth:metric_set", "its data-free estimate is --metric-set synth:metric_set")])
def test_real_accuracy_refuses_data_without_real_labels(source, hint):
    with pytest.raises(OptionError, match=f"--eval-data must be labelled data .*{hint}"):
        config(eval_data=source)


def test_a_missing_eval_data_folder_names_only_labelled_sources(tmp_path):
    with pytest.raises(DataError, match="--eval-data '.*' is neither digits nor an existing directory"):
        config(eval_data=str(tmp_path / "missing"))


def test_force_refuses_a_data_folder_inside_out(tmp_path):
    (tmp_path / "out" / "images" / "cls").mkdir(parents=True)
    (tmp_path / "out" / "images" / "cls" / "0.png").write_bytes(b"")
    with pytest.raises(VitrtError, match="--calib-data '.*images' lies inside"):
        config(out=tmp_path / "out", force=True, precision="int8", calib_data=str(tmp_path / "out" / "images"))
    assert config(out=tmp_path / "elsewhere", force=True, precision="int8",
                  calib_data=str(tmp_path / "out" / "images")).quant.calib_data


def test_a_data_source_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "images.txt").write_text("x")
    with pytest.raises(DataError, match="is neither digits, synthetic nor an existing directory"):
        check_data_source("--calib-data", str(tmp_path / "images.txt"))


def test_synthetic_metric_sets_are_named_with_synth_and_point_at_the_set(tmp_path):
    from vitrt.calib.synthesis import SET_FORMAT, SET_VERSION

    (tmp_path / "set" / "images").mkdir(parents=True)
    metadata = {"format": SET_FORMAT, "version": SET_VERSION, "batches": {"0": {}}, "complete": False}
    (tmp_path / "set" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=r"^--metric-set: synthetic metric set .* is incomplete \(1 batch\(es\) "
                                        "finished\): run the same vitrt synth command again"):
        check_data_source("--metric-set", f"synth:{tmp_path / 'set'}")  # found before the compile, not at its end
    (tmp_path / "set" / "metadata.json").write_text(json.dumps({**metadata, "complete": True}))
    check_data_source("--metric-set", f"synth:{tmp_path / 'set'}")
    with pytest.raises(DataError, match=f"not a synthetic metric set .*the set is its parent: synth:{tmp_path / 'set'}$"):
        check_data_source("--metric-set", f"synth:{tmp_path / 'set' / 'images'}")
    with pytest.raises(DataError, match="no metadata.json.*: make one with vitrt synth MODEL"):
        check_data_source("--metric-set", f"synth:{tmp_path}")
    with pytest.raises(DataError, match=f"is a synthetic metric set, not an ImageFolder: name it synth:{tmp_path / 'set'}"):
        check_data_source("--calib-data", str(tmp_path / "set"))


def test_an_image_folder_without_class_folders_or_files_is_refused_before_the_compile(tmp_path):
    """``--eval-data EMPTY`` was refused only after the whole compile and build, when the data was first read."""
    with pytest.raises(DataError, match="^--eval-data '.*' holds no class folder: an ImageFolder is PATH/<class>/"):
        check_data_source("--eval-data", str(tmp_path), labelled=True)
    (tmp_path / "cat" / "nested").mkdir(parents=True)
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match="holds class folders but no file in them"):
        check_data_source("--eval-data", str(tmp_path), labelled=True)
    (tmp_path / "dog" / "nested").mkdir()
    (tmp_path / "dog" / "nested" / "0.png").write_bytes(b"")  # ImageFolder finds files at any depth
    check_data_source("--eval-data", str(tmp_path), labelled=True)


def test_an_explicit_merge_schedule_is_checked_against_the_model_before_any_weights():
    spec = spec_of_timm(tiny_vit(depth=2))
    config(tome_schedule="2,2").check_against(spec)
    with pytest.raises(VitrtError):
        config(tome_schedule="2,40").check_against(spec)  # 17 tokens cannot lose 40


# --- vitrt.pipeline.estimate -------------------------------------------------------------------------------------
def test_a_merged_artifacts_accuracy_is_measured_against_the_dense_model(tmp_path):
    """The metric set's dense figure is the dense model's own (KL to itself: 0) while the merged artifact's is not;
    real top-1 is a count of the 450 digits test images (6 decimals), and the set is named digits:test."""
    from vitrt.pipeline.driver import compile

    result = compile(tiny_vit(depth=2), tmp_path / "out", tome="4", dfe_skip=0, metric_set="synthetic",
                     eval_data="digits", quiet=True)
    metric, real = result.manifest["accuracy"]["metric"], result.manifest["accuracy"]["real"]
    assert metric["dense"]["loss"] == pytest.approx(0.0, abs=1e-9) and metric["compiled"]["loss"] > 1e-6
    assert "grown_from_this_model" not in metric  # only a synth: set says whether it was grown from this model
    assert real["data"] == "digits:test" and real["images"] == 450
    for key in ("top1_compiled", "top1_dense"):
        assert real[key] * 450 == pytest.approx(round(real[key] * 450), abs=1e-3)
    assert real["kl_to_dense"] > 0 and real["kl_to_dense"] != real["ce_compiled"]


# --- vitrt.pipeline.driver ---------------------------------------------------------------------------------------
def test_a_module_compiled_with_a_config_that_names_a_model_is_labelled_as_the_module(tmp_path):
    from vitrt.pipeline.driver import compile

    named = from_options(CompileConfig, {"model": "vit_tiny_patch16_224", "quiet": True})
    result = compile(tiny_vit(depth=1), tmp_path / "out", config=named)
    assert result.manifest["model"] == "VisionTransformer (Python object)"


def test_a_module_in_training_mode_is_left_in_training_mode(tmp_path):
    from vitrt.pipeline.driver import compile

    model = tiny_vit(depth=1).train()
    compile(model, tmp_path / "out", quiet=True)
    assert all(m.training for m in model.modules())


def test_the_result_twin_is_the_twin_after_every_stage(tmp_path):
    from vitrt.pipeline.driver import compile

    result = compile(tiny_vit(depth=1), tmp_path / "out", tome="2", dfe_skip=0, quiet=True)
    assert result.manifest["spec_after"] != result.manifest["spec_before"]
    assert result.twin.spec.to_dict() == result.manifest["spec_after"]


def test_the_dense_model_is_timed_beside_a_changed_function_only_and_on_the_bench_clock(tmp_path):
    """--bench-clock cpu: the side-by-side timing is on the CPU clock too; a compile that keeps the function (no
    stage) has nothing to time it against. A dynamic batch is named in the graph's io."""
    from vitrt.pipeline.driver import compile

    model = tiny_vit(depth=1)
    bench = dict(bench=True, bench_iters=2, bench_warmup=0, bench_clock="cpu", threads=1, quiet=True)
    merged = compile(model, tmp_path / "merged", tome="2", dfe_skip=0, **bench).manifest["latency"]
    assert merged["versus_dense"]["clock"] == "cpu"
    plain = compile(model, tmp_path / "plain", dynamic_batch=True, **bench).manifest
    assert "versus_dense" not in plain["latency"]
    assert plain["io"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]


def test_an_output_directory_under_home_is_expanded(tmp_path, monkeypatch):
    from vitrt.pipeline.driver import make_config

    monkeypatch.setenv("HOME", str(tmp_path))
    assert make_config(None, "~/out").out == tmp_path / "out"


def test_the_digits_reference_by_name_refuses_another_image_size():
    from vitrt.pipeline.driver import model_by_name

    with pytest.raises(OptionError, match="the digits reference runs at its trained 32x32 input: drop --img-size"):
        model_by_name("digits", img_size=64)


def test_the_digits_reference_compiled_by_name_takes_the_label_given(tmp_path):
    from vitrt.pipeline.driver import compile

    assert compile("digits", tmp_path / "out", name="mine", quiet=True).manifest["model"] == "mine"


def test_a_merge_schedule_the_model_cannot_take_is_refused_before_the_model_is_loaded(tmp_path, capsys):
    from vitrt.compiler.progress import Progress
    from vitrt.pipeline.driver import compile

    with pytest.raises(VitrtError):
        compile("vit_tiny_patch16_224", tmp_path / "out", tome_schedule=",".join(["40"] * 12),
                progress=Progress(enabled=True))
    assert "loading vit_tiny_patch16_224" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_load_warning_reads_the_higher_of_the_loads_before_and_after(monkeypatch):
    import os

    from vitrt.compiler.target import TargetConfig
    from vitrt.pipeline.driver import machine_state

    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    cores = os.cpu_count() or 1
    state = machine_state(TargetConfig(), load_before=cores + 1.0)
    assert state["load_average"] == cores + 1.0 and "load_warning" in state


# --- vitrt.pipeline.recipe ---------------------------------------------------------------------------------------
def half_mlp_plan(spec):
    """A pruning plan that keeps every head and the first half of every MLP."""
    from vitrt.transforms.prune.plan import BlockPlan, PruningPlan

    base = PruningPlan.keep_all(spec)
    blocks = tuple(BlockPlan(tuple(range(b.heads)), tuple(range(b.qk)), tuple(range(b.v)), tuple(range(b.mlp // 2)))
                   for b in spec.blocks)
    return PruningPlan(tuple(range(spec.emb)), blocks, base.original_emb, base.original_blocks)


def planned(options, model):
    from vitrt.pipeline.driver import plan_stages

    return plan_stages(config(**options), canonicalize(model))


def test_a_recipe_keeps_only_what_selects_the_compile(tmp_path):
    """Output and check options, and the options a given plan replaces (--prune / --dcvit-macs, --lowrank /
    --lowrank-budget), are not written; unknown names are refused."""
    from vitrt.pipeline.recipe import RecipeError, write_recipe
    from vitrt.transforms.prune.plan import PruningPlan

    spec = spec_of_timm(tiny_vit(depth=1))
    recipe = write_recipe(tmp_path / "recipe.json", "tiny", {"batch": 2, "prune": 0.5, "dcvit_macs": 1e6,
                                                             "out": tmp_path / "o", "verify": True, "bench": True,
                                                             "threads": 1, "keep_twin": True},
                          {"prune": PruningPlan.keep_all(spec)})
    assert recipe.options == {"batch": 2, "prune_plan": "recipe/prune.json"}
    lowrank = planned({"lowrank_budget": 0.5}, tiny_vit(depth=1)).plans
    recipe = write_recipe(tmp_path / "low" / "recipe.json", "tiny", {"lowrank_budget": 0.5}, lowrank)
    assert recipe.options == {"lowrank_plan": "recipe/lowrank.json"}
    with pytest.raises(RecipeError, match=r"recipe options \['bogus'\] are not compile options"):
        write_recipe(tmp_path / "bad" / "recipe.json", "tiny", {"bogus": 1}, {})


@pytest.fixture(scope="module")
def sparse_recipe(tmp_path_factory):
    """A recipe with a 2:4 plan (JSON + arrays) of a one-block tiny ViT."""
    from vitrt.pipeline.recipe import write_recipe

    path = tmp_path_factory.mktemp("recipe") / "r" / "recipe.json"
    plans = planned({"sparsity": "2:4", "sparse_min_weights": 256}, tiny_vit(depth=1)).plans
    write_recipe(path, "tiny", {"sparsity": "2:4", "sparse_min_weights": 256}, plans)
    return path, plans


def test_a_plans_arrays_are_read_from_beside_it_whatever_its_arrays_file_says(sparse_recipe, tmp_path):
    import shutil

    import numpy as np

    from vitrt.pipeline.recipe import read_recipe

    path = tmp_path / "r" / "recipe.json"
    shutil.copytree(sparse_recipe[0].parent, path.parent)
    plan_json = path.parent / "recipe" / "sparsity.json"
    data = json.loads(plan_json.read_text())
    with np.load(plan_json.with_name(data["arrays_file"])) as npz:  # other arrays of the same names, outside
        np.savez(tmp_path / "sparsity.npz", **{k: np.zeros_like(npz[k]) for k in npz.files})
    plan_json.write_text(json.dumps({**data, "arrays_file": "../../sparsity.npz"}))
    read, written = read_recipe(path).plans()["sparsity"].arrays(), sparse_recipe[1]["sparsity"].arrays()
    assert read.keys() == written.keys() and all(np.array_equal(read[k], written[k]) for k in read)


def test_a_truncated_plan_arrays_file_is_refused_in_one_line(sparse_recipe, tmp_path):
    import shutil

    from vitrt.pipeline.recipe import RecipeError, read_recipe

    path = tmp_path / "r" / "recipe.json"
    shutil.copytree(sparse_recipe[0].parent, path.parent)
    npz = path.parent / "recipe" / "sparsity.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(RecipeError, match="cannot read the arrays of the sparsity plan"):
        read_recipe(path).plans()


@pytest.mark.parametrize("field, value", [("options", 5), ("plans", 5)])
def test_a_recipe_with_a_field_of_the_wrong_type_is_malformed(sparse_recipe, tmp_path, field, value):
    import shutil

    from vitrt.pipeline.recipe import RecipeError, read_recipe

    path = tmp_path / "r" / "recipe.json"
    shutil.copytree(sparse_recipe[0].parent, path.parent)
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(RecipeError, match="is malformed"):
        read_recipe(path)


def test_a_digits_recipe_takes_any_spelling_of_digits(sparse_recipe, tmp_path):
    import shutil

    from vitrt.pipeline.recipe import RecipeError, compile_recipe

    path = tmp_path / "r" / "recipe.json"
    shutil.copytree(sparse_recipe[0].parent, path.parent)
    path.write_text(json.dumps({**json.loads(path.read_text()), "model": "digits"}))
    result = compile_recipe(path, model="digits-reference", module=tiny_vit(depth=1), out=tmp_path / "o", quiet=True)
    assert result.manifest["model"] == "digits"
    with pytest.raises(RecipeError, match="was made for model 'digits', not 'tiny'"):
        compile_recipe(path, model="tiny", module=tiny_vit(depth=1), out=tmp_path / "x", quiet=True)


# --- vitrt.pipeline.replay ---------------------------------------------------------------------------------------
def graph_bytes(model) -> bytes:
    return model.graph.SerializeToString()


def test_a_dynamic_batch_records_rewrite_is_the_compiled_graph_and_keeps_the_seed(tmp_path):
    import onnx

    from vitrt.pipeline.driver import compile
    from vitrt.pipeline.replay import load_record

    compile(tiny_vit(depth=1), tmp_path / "out", dynamic_batch=True, batch=2, tome="1", seed=3, keep_twin=True,
            quiet=True)
    record = load_record(tmp_path / "out")
    assert record.target.dynamic_batch and record.seed == 3
    compiled = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert graph_bytes(record.rewrite()) == graph_bytes(compiled)


def test_a_records_rewrite_without_a_stage_is_the_compile_without_it(tmp_path):
    import onnx

    from vitrt.pipeline.driver import compile
    from vitrt.pipeline.replay import load_record

    model = tiny_vit(depth=1)
    compile(model, tmp_path / "merged", batch=2, tome="2", dfe_skip=0, keep_twin=True, quiet=True)
    compile(model, tmp_path / "dense", batch=2, quiet=True)
    record = load_record(tmp_path / "merged")
    dense = graph_bytes(onnx.load(str(tmp_path / "dense" / "model.onnx")))
    assert graph_bytes(record.rewrite(skip=("tome",))) == dense != graph_bytes(record.rewrite())


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    from vitrt.pipeline.driver import compile

    out = tmp_path_factory.mktemp("kept") / "out"
    compile(tiny_vit(depth=1), out, batch=2, keep_twin=True, quiet=True)
    return out


@pytest.mark.parametrize("damage, message", [
    (lambda twin: (twin / "record.json").write_text(json.dumps({**json.loads((twin / "record.json").read_text()),
                                                                   "format": 2})), "format 2 is not 1"),
    (lambda twin: (twin / "record.json").write_text(json.dumps({**json.loads((twin / "record.json").read_text()),
                                                                   "target": 5})), "missing or invalid field"),
    (lambda twin: (twin / "arrays.npz").write_text("not arrays"), "cannot read arrays.npz"),
])
def test_a_damaged_twin_record_is_refused_in_one_line(kept, tmp_path, damage, message):
    import shutil

    from vitrt.pipeline.replay import load_record

    shutil.copytree(kept, tmp_path / "out")
    damage(tmp_path / "out" / "twin")
    with pytest.raises(VitrtError, match=message) as info:
        load_record(tmp_path / "out")
    assert "\n" not in str(info.value)


def test_a_pruned_int8_compile_replays_and_rebuilds_its_twin(tmp_path):
    """The scale table is read against the spec its stage meets (after pruning), by the recipe replay and by the
    twin record alike."""
    import onnx

    from vitrt.pipeline.driver import compile
    from vitrt.pipeline.recipe import compile_recipe, write_recipe
    from vitrt.pipeline.replay import load_record

    model = tiny_vit(depth=1)
    half_mlp_plan(spec_of_timm(model)).save(tmp_path / "plan.json")
    options = {"batch": 2, "prune_plan": tmp_path / "plan.json", "precision": "int8", "calib_data": "synthetic",
               "calib_images": 8}
    plans = planned(options, model).plans
    write_recipe(tmp_path / "recipe.json", "tiny", options, plans)
    direct = compile(model, tmp_path / "direct", plans=plans, keep_twin=True, quiet=True, **options)
    compile_recipe(tmp_path / "recipe.json", module=model, out=tmp_path / "replay", quiet=True)
    assert onnx_file(tmp_path / "replay") == onnx_file(tmp_path / "direct")
    record = load_record(tmp_path / "direct")
    assert record.stages == ["prune", "quant"]
    assert graph_bytes(record.rewrite()) == graph_bytes(onnx.load(str(tmp_path / "direct" / "model.onnx")))
    assert direct.manifest["spec_after"] != direct.manifest["spec_before"]


def onnx_file(out) -> bytes:
    return (out / "model.onnx").read_bytes()


def test_a_low_rank_plan_that_factors_nothing_is_written_in_its_own_format_and_read_back(tmp_path):
    """--lowrank-plan reads a plan only with its arrays file: written by the codec, a plan without factors has none."""
    from vitrt.pipeline.recipe import read_recipe, write_recipe

    plans = planned({"lowrank": 0.9999}, tiny_vit(depth=1)).plans
    assert not plans["lowrank"].arrays()  # every rank would be full: no layer factored
    write_recipe(tmp_path / "recipe.json", "tiny", {"lowrank": 0.9999}, plans)
    assert read_recipe(tmp_path / "recipe.json").plans()["lowrank"].to_dict() == plans["lowrank"].to_dict()


# --- vitrt.pipeline.feedback -------------------------------------------------------------------------------------
def test_a_sparsity_pattern_the_table_has_no_key_for_is_refused():
    from vitrt.pipeline.feedback import compile_precision

    with pytest.raises(VitrtError, match="no key for precision 'fp32' with sparsity '1:8'"):
        compile_precision(None, {"sparsity": {"pattern": "1:8"}})


def test_a_manifest_is_read_from_its_out_directory_and_must_be_an_object(tmp_path):
    from vitrt.pipeline.feedback import read_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({"backend": "ort"}))
    assert read_manifest(tmp_path) == {"backend": "ort"}
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(VitrtError, match="is not a JSON object"):
        read_manifest(tmp_path / "list.json")


def test_the_config_names_the_table_key_when_no_manifest_does():
    from vitrt.pipeline.feedback import compile_precision

    assert compile_precision(config(precision="fp16")) == ("fp16", "dense")
    assert compile_precision(config(sparsity="2:4")) == ("fp32", "2:4")


def digits_manifest(table) -> dict:
    """The fields of a --bench manifest of the digits reference that refining the recorded digits table reads."""
    from vitrt.calib.reference import load_reference

    spec = spec_of_timm(load_reference()[0])
    per_block = {"stem": 0.2, **{f"blocks.{i}": 0.5 for i in range(len(spec.blocks))}, "head": 0.1}
    return {"model": "digits", "spec_after": spec.to_dict(),
            "latency": {"backend": "ort", "device": table.device, "batch": 8, "clock": table.clock,
                        "threads": table.threads, "median_ms": 4.0, "typical_ms": 4.0, "per_block_ms": per_block}}


def test_lut_refine_files_the_measurement_under_the_precision_given(tmp_path):
    """vitrt lut refine --precision P: the key given wins over the manifest's (an fp32 manifest here)."""
    import shutil

    from vitrt.compiler.lut import LatencyTable
    from vitrt.pipeline.feedback import refine_file

    lut = tmp_path / "lut.json"
    shutil.copy(DIGITS_LUT, lut)
    (tmp_path / "manifest.json").write_text(json.dumps(digits_manifest(LatencyTable.load(lut))))
    refine_file(lut, tmp_path / "manifest.json", precision="fp16")
    assert {p["table"] for p in LatencyTable.load(lut).points} == {"fp16/dense"}


def test_refine_lut_records_the_manifest_of_out_as_the_source(tmp_path):
    import shutil

    from vitrt.compiler.lut import LatencyTable
    from vitrt.pipeline.feedback import refine_after_compile

    lut = tmp_path / "lut.json"
    shutil.copy(DIGITS_LUT, lut)
    options = config(batch=8, bench=True, lut=lut, refine_lut=True, out=tmp_path / "out")
    assert refine_after_compile(options, digits_manifest(LatencyTable.load(lut))) is not None
    sources = {s["source"] for p in LatencyTable.load(lut).points for s in p["sources"]}
    assert sources == {str(tmp_path / "out" / "manifest.json")}


# --- vitrt.pipeline.stages ---------------------------------------------------------------------------------------
def test_pruning_plans_on_the_dense_model_and_merging_on_the_pruned_one(tmp_path):
    """The documented order: structural pruning, then token merging, then 2:4, then quantization."""
    from vitrt.pipeline.stages import active_stages

    model = tiny_vit(depth=2)
    half_mlp_plan(spec_of_timm(model)).save(tmp_path / "plan.json")
    options = config(prune_plan=tmp_path / "plan.json", tome="1", sparsity="2:4", precision="int8")
    assert [s.name for s in active_stages(options)] == ["prune", "tome", "sparsity", "quant"]
