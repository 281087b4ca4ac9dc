"""Tests from an exploratory "first user" review (README commands, combinations of passes, bad input, follow-up
commands on compiled OUTs): each pins a defect that review found. Tiny models, the digits reference and real
components (timm, ONNX Runtime, vitrt's own commands): seconds each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_vit


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory):
    """A compiled ONNX Runtime OUT of a one-block tiny ViT, with its twin record."""
    from vitrt.pipeline.driver import compile

    return compile(tiny_vit(depth=1), tmp_path_factory.mktemp("review") / "out", quiet=True, keep_twin=True).out


def snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("entry", ["manifest.json", "twin/record.json", ".vitrt-output"])
def test_a_result_file_never_replaces_what_vitrt_wrote_beside_an_input_file(tiny_out, entry, capsys):
    """``vitrt lint-trt OUT/model.onnx --json OUT/manifest.json`` replaced the compile's manifest with the lint report
    (exit 0): only an input *directory* was guarded, not the vitrt output holding an input *file*."""
    before = snapshot(tiny_out)
    assert run_cli("lint-trt", tiny_out / "model.onnx", "--json", tiny_out / entry) == 2
    assert snapshot(tiny_out) == before
    assert f"would overwrite {entry}, which vitrt wrote into '{tiny_out}'" in one_error_line(capsys)


def test_a_result_file_never_replaces_another_compiles_entries(tiny_out, capsys):
    """``vitrt bench digits --json OTHER_OUT/manifest.json`` replaced another compile's manifest (a later ``lut
    refine --from`` then found no measured latency in it); a new file beside them is still written."""
    before = snapshot(tiny_out)
    bench = ("bench", "digits", "--iterations", "1", "--warmup", "0", "--quiet", "--json")
    assert run_cli(*bench, tiny_out / "manifest.json") == 2
    assert snapshot(tiny_out) == before
    assert "would overwrite manifest.json" in one_error_line(capsys)
    assert run_cli(*bench, tiny_out / "bench_digits.json") == 0
    assert json.loads((tiny_out / "bench_digits.json").read_text())["rows"]
    (tiny_out / "bench_digits.json").unlink()


def test_a_side_by_side_bench_row_shows_the_time_its_images_per_second_reads(tiny_outs):
    """On the wall clock a side-by-side row read 'median 7.03 ms ... 347.5 images/s' at batch 4: images/s (and the
    speedup) read the median over rounds of each round's median, which the table never showed, beside the median of
    every run pooled. The table now shows that time, and the row's numbers agree."""
    from vitrt.benchmarks.harness import bench_target, format_bench

    dense, _, _ = tiny_outs
    result = bench_target(str(dense), [1], backend=["ort", "torch"], iterations=2, warmup=0, rounds=2, threads=1)
    assert result["clock"] == "wall"
    table = format_bench(result).splitlines()
    assert "rounds ms" in table[3] and table[-1].startswith("rounds ms: the median over rounds of each round's median")
    for row, line in zip(result["rows"], table[4:6]):
        assert row["images_per_s"] == pytest.approx(1000.0 / row["typical_ms"], rel=1e-3)
        assert line.split()[5] == f"{row['typical_ms']:.2f}" and line.split()[6] == f"{row['images_per_s']:.1f}"


def test_calibration_on_fewer_images_than_asked_is_said_and_recorded(tmp_path):
    """``--calib-images 100`` on a 2-image synthetic set calibrated on 2 images silently: only scale_table.json's meta
    said so. The plan's note (printed, and in the manifest's adjustments) and its info say it now."""
    sset, out = tmp_path / "set", tmp_path / "out"
    assert run_cli("synth", "digits-reference", "-o", sset, "--images", "2", "--iters", "1", "--batch", "2",
                   "--quiet") == 0
    assert run_cli("compile", "digits", "-o", out, "--precision", "int8", "--calib-data", f"synth:{sset}",
                   "--calib-images", "100", "--quiet") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "scale_table.json").read_text())["meta"]["calib_images"] == 2
    assert manifest["quantization"]["calib_images"] == {"asked": 100, "used": 2}
    assert [a["note"] for a in manifest["adjustments"]] == [
        f"calibration: on 2 images, all that synth:{sset} holds (--calib-images 100)"]


def test_a_calibration_on_as_many_images_as_asked_notes_nothing():
    from vitrt.transforms.quant.plan import QuantPlan
    from vitrt.transforms.quant.scale_table import ScaleTable

    table = ScaleTable("int8", {}, "calibration:max", {"calib_images": 8})
    assert QuantPlan("int8", table, info={"calib_images": {"asked": 8, "used": 8}}).notes() == []


def test_a_checkpoint_compiles_at_another_image_size_with_timms_resampled_position_embedding(tmp_path, capsys):
    """A checkpoint trained at one size failed at another --img-size ("pos_embed [1,17,192] vs [1,5,192]"), though
    the README says any square size. The position embedding is resampled as timm resamples pretrained weights: the
    compiled model matches timm's own model at that size loaded through timm's checkpoint filter; the checkpoint
    file is left as it was."""
    import onnxruntime as ort
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    name = "deit_tiny_patch16_224"
    torch.manual_seed(0)
    state = timm.create_model(name, img_size=64, num_classes=10).state_dict()
    state["pos_embed"] = torch.randn_like(state["pos_embed"])  # a grid with structure to resample
    path, out = tmp_path / "ft64.pt", tmp_path / "out"
    torch.save(state, path)
    saved = path.read_bytes()
    assert run_cli("compile", name, "--img-size", "32", "--checkpoint", path, "-o", out, "--verify") == 0
    assert path.read_bytes() == saved
    assert "position embedding is for a 4x4 patch grid: resampled" in capsys.readouterr().err

    reference = timm.create_model(name, img_size=32, num_classes=10).eval()
    reference.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), reference))
    images = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_a_checkpoint_of_another_width_is_still_refused_by_name(tmp_path, capsys):
    import timm

    state = timm.create_model("deit_tiny_patch16_224", img_size=64, num_classes=10).state_dict()
    state["pos_embed"] = state["pos_embed"][..., :96]
    torch.save(state, tmp_path / "bad.pt")
    assert run_cli("compile", "deit_tiny_patch16_224", "--img-size", "32", "--checkpoint", tmp_path / "bad.pt",
                   "-o", tmp_path / "out", "--quiet") == 2
    assert "pos_embed [1, 17, 96] vs [1, 5, 192]" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("data", "kind"), [("synth:/sets/digits", "data-free"), ("digits", "label-free")])
def test_the_summary_calls_a_metric_loss_on_real_images_label_free(data, kind, capsys):
    from vitrt.cli.compile import print_summary

    manifest = {"model": "digits", "input_shape": [1, 3, 32, 32], "params": {"before": 1, "after": 1},
                "flops": {"before": 1e9, "after": 1e9},
                "accuracy": {"metric": {"data": data, "images": 4, "compiled": {"loss": 0.1}, "dense": {"loss": 0.0}}}}
    print_summary(manifest)
    assert f"({kind} estimate; dense 0.00000)" in capsys.readouterr().out


def test_every_way_a_latency_table_does_not_fit_is_named_in_one_error():
    """``compile digits --prune 0.6 --lut <the shipped digits table> --bench`` named the table's thread count, then
    (after a rerun) its clock, then its batch: three runs to find a command line it accepts."""
    from conftest import DIGITS_LUT
    from vitrt.compiler.errors import VitrtError
    from vitrt.compiler.lut import LatencyTable

    table = LatencyTable.load(DIGITS_LUT)
    assert (table.threads, table.clock, table.batch) == (1, "cpu", 8)
    with pytest.raises(VitrtError) as error:
        table.check(backend="ort", batch=1, clock="wall", threads=None)
    message = str(error.value)
    assert "\n" not in message and message.count("; also, ") == 2
    assert "pass --threads 1" in message and "--bench-clock cpu" in message and "built for batch 8, not 1" in message
    table.check(backend="ort", batch=8, clock="cpu", threads=1)


@pytest.mark.parametrize("command", [("bench",), ("nvit-table", "{dir}")])
def test_a_folder_that_is_not_an_out_is_named_as_such(command, tmp_path, capsys):
    """``vitrt bench DIR`` / ``nvit-table DIR DIR`` on a folder without a manifest said "pass OUT/manifest.json of a
    vitrt compile --bench", the hint of ``lut refine --from``."""
    argv = [c.format(dir=tmp_path) for c in command]
    assert run_cli(*argv[:1], tmp_path, *argv[1:]) == 2
    assert one_error_line(capsys).endswith(f"; '{tmp_path}' is not an OUT written by vitrt compile")


def test_a_pruning_plan_for_another_model_says_how_to_make_one():
    from vitrt.compiler.models import spec_of_timm
    from vitrt.transforms.prune.plan import PlanError, PruningPlan

    plan = PruningPlan.keep_all(spec_of_timm(tiny_vit(depth=2)))
    with pytest.raises(PlanError, match="emb 64, the model has emb 32; make a plan for this model with vitrt "
                                        "prune-plan MODEL$"):
        plan.check_matches(spec_of_timm(tiny_vit(depth=2, embed_dim=32)))


# --- the Python API, used from a training / deployment pipeline --------------------------------------------------
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_training_steps_run_inside_the_callers_no_grad_or_inference_mode(mode, tmp_path):
    """QAT (like Hessian importance, every fine-tuning and model inversion) needs autograd: under the caller's
    ``torch.no_grad()`` / ``torch.inference_mode()`` it raised a bare RuntimeError ("element 0 of tensors does not
    require grad"). vitrt turns gradients on for its own steps and hands the caller's mode back."""
    import vitrt

    with mode():
        result = vitrt.compile(tiny_vit(depth=1), tmp_path / "out", precision="int8", calib_images=8, qat_epochs=1,
                               quiet=True)
        meta = vitrt.synth(tiny_vit(depth=1), tmp_path / "set", images=2, iterations=1, batch_size=2, quiet=True)
        assert not torch.is_grad_enabled()
    assert result.manifest["quantization"]["qat"] and meta["complete"]


def test_synth_leaves_the_callers_random_state(tmp_path):
    """vitrt.compile forked torch's generator; vitrt.synth drew from it (building the twin's weights)."""
    import vitrt

    model = tiny_vit(depth=1)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    vitrt.synth(model, tmp_path / "set", images=2, iterations=1, batch_size=2, quiet=True)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda v, tmp: v.compile("digits", tmp / "out", recipe=5, quiet=True), "RecipeError",
     "recipe must be the path of a recipe.json (a str or path), got 5"),
    (lambda v, tmp: v.synth(tiny_vit(depth=1), None, images=2, quiet=True), "OutputError",
     "no output directory: pass out=SET (a str or path), got None"),
    (lambda v, tmp: v.synth(tiny_vit(depth=1), tmp / "set", images=2, quiet=True, force="no"), "OptionError",
     "force takes a bool, got 'no' (str)"),
    (lambda v, tmp: v.synth(tiny_vit(depth=1), tmp / "set", images=2, quiet=True, feature_reference=[1, 2]),
     "OptionError", "feature_reference takes a tensor of images [N, C, H, W] (or None), got list"),
    (lambda v, tmp: v.synth("digits", tmp / "set", images=2, quiet=True, img_size=64), "OptionError",
     "digits-reference is the shipped model: it takes no checkpoint, pretrained weights or image size"),
])
def test_bad_python_arguments_are_vitrt_errors_worded_for_python(call, error, message, tmp_path):
    """A recipe=5 (TypeError from Path), synth's out=None (TypeError), force="no" (taken as true),
    feature_reference=[...] (AttributeError) and a refusal naming --img-size to a Python caller."""
    import vitrt

    with pytest.raises(vitrt.VitrtError) as raised:
        call(vitrt, tmp_path)
    assert type(raised.value).__name__ == error and str(raised.value) == message
    assert not (tmp_path / "set").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("option", "flag"), [({"eta": 0.5}, "eta"), ({"importance": "magnitude"}, "importance"),
                                              ({"prune_samples": 3}, "prune_samples"), ({"data": "digits"}, "data")])
def test_planning_options_beside_a_given_pruning_plan_are_refused(option, flag, tmp_path):
    """A given --prune-plan is planned already: --eta, --importance, --prune-samples and --data (without
    --finetune-epochs) were accepted, ignored, and the same bytes written."""
    import vitrt
    from vitrt.compiler.errors import OptionError
    from vitrt.compiler.models import spec_of_timm
    from vitrt.transforms.prune.plan import PruningPlan

    plan = tmp_path / "plan.json"
    PruningPlan.keep_all(spec_of_timm(tiny_vit(depth=1))).save(plan)
    with pytest.raises(OptionError, match=f"^{flag} acts only with prune"):
        vitrt.compile(tiny_vit(depth=1), tmp_path / "out", prune_plan=plan, quiet=True, **option)
    if flag == "data":  # what a given plan is fine-tuned on
        vitrt.compile(tiny_vit(depth=1), tmp_path / "ft", prune_plan=plan, data="digits", finetune_epochs=1,
                      quiet=True)


@pytest.mark.parametrize("option", [{"calib_method": "entropy"}, {"calib_images": 3}])
def test_calibration_options_beside_a_given_scale_table_or_at_int4w_are_refused(option, tmp_path):
    """A scale table replaces calibration and int4w (weight-only) has none: --calib-method and --calib-images were
    accepted and ignored there."""
    import vitrt
    from vitrt.compiler.errors import OptionError

    first = vitrt.compile(tiny_vit(depth=1), tmp_path / "a", precision="int8", calib_images=8, quiet=True)
    table = first.out / "scale_table.json"
    with pytest.raises(OptionError, match=f"^{next(iter(option))} .*, and scale_table replaces calibration: drop it"):
        vitrt.compile(tiny_vit(depth=1), tmp_path / "b", precision="int8", scale_table=table, quiet=True, **option)
    with pytest.raises(OptionError, match=f"^{next(iter(option))} .*, and int4w calibrates nothing: drop it"):
        vitrt.compile(tiny_vit(depth=1), tmp_path / "c", precision="int4w", quiet=True, **option)
    if "calib_images" in option:  # --keep-float-top scores layers on that many images
        vitrt.compile(tiny_vit(depth=1), tmp_path / "d", precision="int8", scale_table=table, keep_float_top=1,
                      quiet=True, **option)


# --- serving, search and table tools ------------------------------------------------------------------------------
def test_prune_plan_never_writes_its_plan_over_what_vitrt_wrote(tiny_outs, tmp_path, capsys):
    """``vitrt prune-plan digits ... -o OUT/manifest.json --force`` wrote the plan over a compile's manifest (its -o
    is not a config option, so the shared result-file check never ran)."""
    import shutil

    from conftest import DIGITS_LUT

    out = tmp_path / "out"
    shutil.copytree(tiny_outs[1], out)
    before = snapshot(out)
    assert run_cli("prune-plan", "digits", "--prune", "0.5", "--lut", DIGITS_LUT, "--batch", 8,
                   "--importance", "magnitude", "--quiet", "-o", out / "manifest.json", "--force") == 2
    assert snapshot(out) == before
    assert "would overwrite manifest.json, which vitrt wrote into" in one_error_line(capsys)


def test_export_force_leaves_no_ensemble_around_an_engine_it_no_longer_fits(tiny_outs, tmp_path, capsys):
    """Exporting a static engine with --force over a name exported with --preprocess left <name>_ensemble (max batch
    32) and <name>_preprocess routing to an engine of max batch 0: Triton refuses to load such a repository."""
    dense, _, dynamic = tiny_outs
    repo = tmp_path / "repo"
    assert run_cli("export", "triton", dynamic, "-o", repo, "--name", "m", "--preprocess") == 0
    assert run_cli("export", "triton", dynamic, "-o", repo, "--name", "m", "--preprocess", "--force") == 0
    assert sorted(p.name for p in repo.iterdir()) == ["m", "m_ensemble", "m_preprocess"]
    exported = {p.name: snapshot(p) for p in repo.iterdir()}
    assert run_cli("export", "triton", dense, "-o", repo, "--name", "m") == 2  # REPO/m exists: nothing changes
    assert {p.name: snapshot(p) for p in repo.iterdir()} == exported
    capsys.readouterr()
    assert run_cli("export", "triton", dense, "-o", repo, "--name", "m", "--force") == 0
    assert sorted(p.name for p in repo.iterdir()) == ["m"]
    assert "max_batch_size" not in (repo / "m" / "config.pbtxt").read_text()  # 0, the static engine's: omitted


def test_export_refuses_to_write_a_name_beside_an_ensemble_left_around_it(tiny_outs, tmp_path, capsys):
    import shutil

    _, _, dynamic = tiny_outs
    repo = tmp_path / "repo"
    assert run_cli("export", "triton", dynamic, "-o", repo, "--name", "m", "--preprocess") == 0
    shutil.rmtree(repo / "m")
    capsys.readouterr()
    assert run_cli("export", "triton", dynamic, "-o", repo, "--name", "m") == 2
    assert "were exported around an earlier m: add --preprocess to export them again, or --force to remove them" \
        in one_error_line(capsys)
    assert sorted(p.name for p in repo.iterdir()) == ["m_ensemble", "m_preprocess"]


def test_optimize_refuses_precisions_its_latency_table_cannot_price(tmp_path, capsys):
    """``vitrt optimize digits --precisions fp16 --lut TABLE`` (a table without fp16) timed engines, wrote OUT and
    exited 1 with "no recipe met the goal": every recipe was dropped for the missing key."""
    from conftest import DIGITS_LUT

    fp32_int8 = DIGITS_LUT.with_name("lut_ort_digits_b8_cpu_fp32_int8.json")
    out = tmp_path / "opt"
    assert run_cli("optimize", "digits", "-o", out, "--max-drop", 1, "--lut", fp32_int8, "--precisions", "fp16",
                   "--quiet") == 2
    assert "--precisions fp16: --lut" in one_error_line(capsys) and not out.exists()
    assert run_cli("optimize", "digits", "-o", out, "--max-drop", 1, "--precisions", "fp16,int4w", "--quiet") == 2
    assert "the table built without --lut has no latency for any of them (it has fp32/dense, int8/dense)" in \
        one_error_line(capsys)


def test_a_speedup_pointing_against_the_times_beside_it_is_marked_as_noise():
    """study and optimize print each row's time (the median over rounds) beside its paired speedup (the median of
    per-round ratios); with few rounds the two pointed opposite ways unremarked (study: 7.011 ms against dense
    7.766 ms, "0.97x")."""
    from vitrt.compiler.timing import NOISE_NOTE, Interleaved, opposite
    from vitrt.search.study import DENSE, markdown

    timed = Interleaved({"dense": [[10.0], [10.0], [1.0]], "variant": [[5.0], [20.0], [2.0]]}, "wall")
    assert timed.typical("variant") < timed.typical("dense") and timed.speedup("dense", "variant") < 1
    assert opposite(timed.typical("dense"), timed.typical("variant"), timed.speedup("dense", "variant"))
    assert not opposite(10.0, 5.0, 1.8) and not opposite(10.0, 20.0, 0.6) and not opposite(10.0, 10.0, 0.9)

    def measured(cpu_ms, speedup_cpu):
        return {"top1": 0.9, "cpu_ms": cpu_ms, "speedup_cpu": speedup_cpu, "wall_ms": cpu_ms, "speedup_wall": 1.0,
                "params": 1, "flops": 1e9, "onnx_bytes": 1024}

    report = {"model": "digits", "command": "vitrt study digits", "batch": 1, "method": "m", "test_images": 4,
              "data": "digits", "seconds": 60, "rows": {DENSE: {"label": "dense fp32", "measured": measured(7.766, 1)},
                                                        "lowrank90": {"label": "low rank", "measured": measured(7.011,
                                                                                                               0.97)}}}
    lines = markdown(report).splitlines()
    assert "| 0.97x† |" in lines[-3] and lines[-1] == NOISE_NOTE
    report["rows"]["lowrank90"]["measured"] = measured(7.011, 1.09)
    assert "†" not in markdown(report)


def test_study_names_an_unknown_row_unknown_without_a_latency_table(tmp_path, capsys):
    """``vitrt study digits --rows prune50`` (the row is 'prune') answered "prune to a latency target: add --lut";
    with --lut added it then said the row was unknown."""
    assert run_cli("study", "digits", "-o", tmp_path / "study", "--rows", "prune50", "--quiet") == 2
    assert "--rows: unknown row(s) prune50 (known: " in one_error_line(capsys)


def test_prune_plan_help_describes_its_own_force_and_lut(capsys):
    """prune-plan reuses compile's options: its --help said --force replaces "a non-empty output directory" and --lut
    adds "latency.predicted_ms (needs --bench)" — prune-plan writes one file and has no --bench."""
    with pytest.raises(SystemExit):
        run_cli("prune-plan", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--force replace an existing PLAN file" in text and "needs --bench" not in text
    assert "--lut LUT latency table (vitrt lut build) the search prunes against (--prune)" in text


def test_the_load_tests_in_process_note_says_what_each_ratio_divides_by():
    """The table's "vs in-process" column divides each level by the mean of the two windows around it, while the note
    under it gave only the median of every window (118.7 / 418.6 = 0.28 beside a printed 0.29x)."""
    from vitrt.serving.loadtest import format_table, versus_ratios

    windows = [400.0, 437.2]
    level = {"concurrency": 1, "requests": 10, "ok": 10, "errors": 0, "lost": 0, "images_per_s": 118.7,
             "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "versus_in_process": versus_ratios([118.7], windows)[0],
             "first_error": None}
    result = {"model": "m", "url": "http://127.0.0.1:8000", "protocol": "http", "request_batch": 1, "data": "random",
              "duration_s": 1, "max_requests": 10, "levels": [level],
              "in_process": {"backend": "ort", "out": "OUT", "batch": 8, "images_per_s": 418.6,
                             "images_per_s_windows": windows, "seconds_per_window": 1}}
    table = format_table(result)
    assert "| 0.28x |" in table  # 118.7 over (400.0 + 437.2) / 2
    assert "vs in-process: a level's images/s over the mean of the two windows around it" in table
