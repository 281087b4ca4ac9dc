"""Tests added by a mutation audit of the command line (vitrt.cli: __init__, compile, lut, synth, debug, lint_trt,
reference; vitrt.reports.demo): each pins a behaviour that a one-line mutation could change without the existing
tests noticing. In-process calls of vitrt.cli.main on tiny inputs (the digits reference, the recorded digits
table, hand-made report rows): seconds each."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import DIGITS_LUT
from vitrt.cli import main


def _err_lines(capsys):
    return capsys.readouterr().err.strip().splitlines()


# --- vitrt.cli: exit codes, the one-line usage error, the SIGTERM handler ----------------------------------------
def test_a_usage_error_is_one_line_naming_the_help_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "digits", "--batch", "eight"])
    assert exc.value.code == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "invalid int value: 'eight'" in err[0], err
    assert err[0].endswith("(see vitrt compile --help)"), err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "the following arguments are required: command" in err[0], err


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_synth_exits_as_its_signal_and_says_what_it_kept(tmp_path, signum, code):
    """Ctrl-C is 130 and a job scheduler's SIGTERM 143, also through the command's own Interrupted (finished
    batches are kept on disk, so the line says so rather than "nothing was written"). A child process: a signal
    sent to pytest itself would stop the whole run if it landed after the command returned."""
    out = tmp_path / "set"
    command = [sys.executable, "-m", "vitrt.cli", "synth", "digits", "-o", str(out), "--images", "2", "--batch", "2",
               "--iters", "100000", "--quiet"]
    # SIG_DFL, not an inherited SIG_IGN (a background job's), so that Python turns Ctrl-C into KeyboardInterrupt
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not out.exists():  # the command is under way, past its imports
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vitrt: interrupted; 0 finished batch(es) are kept in"), err
    assert "run the same command again to resume" in last


def test_a_ctrl_c_wrapped_by_a_class_creation_is_recognised_as_well():
    """Python wraps an interrupt raised while a class is created ("Error calling __set_name__"): the Ctrl-C
    itself, not only the SIGTERM, is unwrapped."""
    from vitrt.cli import interruption_in

    class Interrupting:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt()

    with pytest.raises(RuntimeError) as caught:
        type("Importing", (), {"field": Interrupting()})
    assert type(interruption_in(caught.value)) is KeyboardInterrupt


def test_main_puts_back_the_sigterm_handler_it_found(capsys):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["lint-trt", "--rules"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_only_an_interrupt_that_caused_the_runtime_error_is_unwrapped():
    """A RuntimeError raised while a Ctrl-C was handled (not caused by it) is that error, not an interrupt."""
    from vitrt.cli import interruption_in

    with pytest.raises(RuntimeError) as caught:
        try:
            raise KeyboardInterrupt()
        except KeyboardInterrupt:
            raise RuntimeError("cleanup failed")
    assert interruption_in(caught.value) is None


# --- vitrt compile / prune-plan -----------------------------------------------------------------------------------
MANIFEST = {"model": "digits", "input_shape": [8, 3, 32, 32], "params": {"before": 1234567, "after": 1000},
            "flops": {"before": 2.5e9, "after": 1.25e9},
            "verify": {"max_abs_err": 1.5e-6, "reference": "torch twin"},
            "accuracy": {"real": {"top1_compiled": 0.98, "top1_dense": 0.9889, "images": 450, "data": "digits:test",
                                  "kl_to_dense": 0.00123}}}


def test_the_compile_summary_prints_gflops_and_percent_in_aligned_columns(capsys):
    from vitrt.cli.compile import print_summary

    print_summary(MANIFEST)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model         digits"  # keys padded to the widest ("GFLOPs/image"), then two spaces
    assert lines[2] == "params        1,234,567 -> 1,000"
    assert lines[3] == "GFLOPs/image  2.500 -> 1.250"
    assert lines[5] == "top-1         98.00 % (dense 98.89 %) on 450 images of digits:test; KL to dense 0.0012"


def _compile_config(tmp_path, *args):
    from vitrt.cli import build_parser
    from vitrt.compiler.options import from_args
    from vitrt.pipeline.config import CompileConfig

    return from_args(CompileConfig, build_parser().parse_args(["compile", *args, "-o", str(tmp_path / "out")]))


def test_a_known_model_is_checked_before_any_model_is_built(tmp_path):
    """check_known_model (run before torch is imported) refuses an unknown name, an image size off the patch grid
    and an explicit merge schedule the model cannot take; with a checkpoint (which may change the head) the model-
    dependent checks are left to compile()."""
    from vitrt.cli.compile import check_known_model
    from vitrt.compiler.errors import VitrtError

    for args, message in ((["no_such_model"], "unknown model 'no_such_model'"),
                          (["deit_tiny_patch16_224", "--img-size", "100"], "not a multiple of"),
                          (["deit_tiny_patch16_224", "--tome-schedule", "1,2,3"], "lists 3 values but the model has 12")):
        with pytest.raises(VitrtError, match=message):
            check_known_model(_compile_config(tmp_path, *args))
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"")
    check_known_model(_compile_config(tmp_path, "deit_tiny_patch16_224", "--tome-schedule", "1,2,3",
                                      "--checkpoint", str(checkpoint)))
    check_known_model(_compile_config(tmp_path, "deit_tiny_patch16_224", "--img-size", "96"))


def test_compile_without_an_output_directory_is_refused_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "digits", "--quiet"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "no output directory: pass -o OUT" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_prune_plan_refusals_come_before_any_work(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    base = ["prune-plan", "digits", "--batch", "8", "--quiet"]
    assert main([*base, "-o", str(plan)]) == 2  # neither --prune nor --revit: nothing to plan
    assert "prune-plan needs --prune FRACTION" in _err_lines(capsys)[-1]
    assert main([*base, "--prune", "0.7", "--lut", str(DIGITS_LUT)]) == 2
    assert "no output file: pass -o PLAN" in _err_lines(capsys)[-1]
    plan.write_text("mine")
    assert main([*base, "--prune", "0.7", "--lut", str(DIGITS_LUT), "-o", str(plan)]) == 2
    assert f"{plan} exists: pass --force to replace it" in _err_lines(capsys)[-1]
    assert plan.read_text() == "mine"
    lut = tmp_path / "lut.json"
    lut.write_bytes(DIGITS_LUT.read_bytes())
    assert main([*base, "--prune", "0.7", "--lut", str(lut), "--force", "-o", str(lut)]) == 2
    assert "is the --lut the plan is made from" in _err_lines(capsys)[-1]
    assert lut.read_bytes() == DIGITS_LUT.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lut.json", "plan.json"]


def test_prune_plan_offers_the_importance_it_acts_on(tmp_path, capsys):
    from vitrt.cli import build_parser

    args = build_parser().parse_args(["prune-plan", "digits", "--prune", "0.7", "--importance", "magnitude",
                                      "-o", str(tmp_path / "p.json")])
    assert args.importance == "magnitude"


# --- vitrt lut query / build / plot / merge / refine ----------------------------------------------------------------
BLOCK = ["--emb", "64", "--heads", "2", "--qk", "32", "--v", "32", "--mlp", "128", "--tokens", "17"]


def _query(capsys, *args):
    code = main(["lut", "query", str(DIGITS_LUT), *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_block_query_answers_the_tables_own_numbers(capsys):
    from vitrt.compiler.lut import LatencyTable

    table = LatencyTable.load(DIGITS_LUT)
    code, out, _ = _query(capsys, *BLOCK, "--tokens-out", 9, "--json")
    answer = json.loads(out)
    assert code == 0 and answer["clamped_to_grid"] is False  # said both ways, not only when clamped
    dims = dict(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=17)
    assert answer["block_ms"] == pytest.approx(table.block_ms(**dims, tokens_out=9))
    assert answer["block_ms"] != pytest.approx(table.block_ms(**dims))  # --tokens-out is used


def test_a_block_query_takes_removed_halves_and_refuses_non_sizes(capsys):
    # attention removed: --qk / --v are not asked for
    assert _query(capsys, "--emb", 64, "--heads", 0, "--mlp", 128, "--tokens", 17)[0] == 0
    for flag, value in (("--mlp", -1), ("--tokens", 0), ("--heads", -1)):
        args = dict(zip(BLOCK[::2], BLOCK[1::2]), **{flag: str(value)})
        code, _, err = _query(capsys, *[x for kv in args.items() for x in kv])
        assert code == 2 and f"{flag} {value} is not a size" in err, (flag, err)
    args = dict(zip(BLOCK[::2], BLOCK[1::2]), **{"--heads": "1", "--v": "0"})
    code, _, err = _query(capsys, *[x for kv in args.items() for x in kv])
    assert code == 2 and "--v 0 is not a size" in err  # one head still needs a value dim


def test_a_model_query_sums_its_parts_and_refuses_block_flags(capsys):
    code, out, _ = _query(capsys, "--model", "digits", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["model_ms"] == pytest.approx(sum(answer["parts_ms"].values()))
    code, _, err = _query(capsys, "--model", "digits", "--tokens-out", 5)
    assert code == 2 and "--tokens-out sizes a single block" in err


def _manifest(tmp_path, **fields):
    from vitrt.compiler.models import spec_of_timm
    from vitrt.pipeline.driver import model_by_name

    spec = spec_of_timm(model_by_name("digits"))
    manifest = {"model": "digits", "backend": "ort", "input_shape": [8, 3, 32, 32], "spec_after": spec.to_dict(),
                **fields}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path, spec


def test_a_manifest_query_is_answered_for_its_own_batch_and_precision(tmp_path, capsys):
    from vitrt.compiler.lut import LatencyTable

    table = LatencyTable.load(DIGITS_LUT)
    path, spec = _manifest(tmp_path, precision={"activations": "fp16"})
    code, out, _ = _query(capsys, "--manifest", path, "--json")
    assert code == 0
    assert json.loads(out)["model_ms"] == pytest.approx(sum(table.model_breakdown(spec, precision="fp16").values()))
    path, _ = _manifest(tmp_path, input_shape=["batch", 3, 32, 32])  # dynamic batch: not checked against 8
    assert _query(capsys, "--manifest", path)[0] == 0
    path, _ = _manifest(tmp_path, input_shape=[1, 3, 32, 32])
    code, _, err = _query(capsys, "--manifest", path)
    assert code == 2 and "batch 8, not 1" in err


def test_a_manifest_query_refuses_a_precision_or_sparsity_it_would_not_answer_for(tmp_path, capsys):
    """--manifest M --precision int8 was answered for the manifest's fp16, silently."""
    path, _ = _manifest(tmp_path, precision={"activations": "fp16"})
    for flag, value in (("--precision", "int8"), ("--sparsity", "2:4")):
        code, _, err = _query(capsys, "--manifest", path, flag, value)
        assert code == 2 and f"--manifest brings its compile's precision and sparsity: drop {flag}" in err, err
    code, _, err = _query(capsys, *BLOCK, "--precision", "fp16")  # a block query takes them
    assert code == 0, err


def test_lut_commands_without_their_output_are_refused(tmp_path, capsys):
    for argv, message in ((["lut", "build", "--grid", "tiny"], "no output file: pass -o LUT"),
                          (["lut", "merge", str(DIGITS_LUT)], "no output file: pass -o LUT"),
                          (["lut", "plot", str(DIGITS_LUT)], "no output file: pass -o PNG"),
                          (["lut", "refine", str(DIGITS_LUT)], "pass --from OUT/manifest.json")):
        assert main(argv) == 2
        err = _err_lines(capsys)
        assert len(err) == 1 and message in err[0], (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_lut_plot_takes_an_upper_case_suffix_and_refuses_a_missing_key(tmp_path, capsys):
    assert main(["lut", "plot", str(DIGITS_LUT), "-o", str(tmp_path / "LUT.PNG")]) == 0
    assert (tmp_path / "LUT.PNG").read_bytes()[:4] == b"\x89PNG"
    assert main(["lut", "plot", str(DIGITS_LUT), "--precision", "bf16", "-o", str(tmp_path / "bf16.png")]) == 2
    assert "bf16" in _err_lines(capsys)[-1] and not (tmp_path / "bf16.png").exists()


def test_lut_build_defaults_and_its_shard_and_clock(tmp_path, capsys):
    """Default batch 1; --clock is the clock used; a shard says which it is."""
    out = tmp_path / "lut.json"
    assert main(["lut", "build", "--grid", "tiny", "--shard", "1/4", "--clock", "cpu", "--threads", "1", "--quiet",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shard 1 of 4" in printed and "cpu clock" in printed and "batch 1," in printed
    part = json.loads((tmp_path / "lut.part1-of-4.json").read_text())
    assert part["batch"] == 1 and part["clock"] == "cpu" and part["meta"]["shard"] == {"index": 1, "count": 4}


# --- vitrt synth ----------------------------------------------------------------------------------------------------
SYNTH = ["synth", "digits", "--iters", "1", "--quiet"]


def test_synth_feature_stats_use_256_images_drawn_with_the_sets_seed(tmp_path):
    from vitrt.calib.data import in_memory, load_data
    from vitrt.calib.synthesis import _digest

    out = tmp_path / "set"
    assert main([*SYNTH, "-o", str(out), "--images", "1", "--batch", "1", "--seed", "3", "--feature-stats",
                 "digits"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["feature_reference_images"] == 256  # "up to 256 are used"
    expected = in_memory(load_data("digits", 32, limit=256, seed=3), "--feature-stats data").images
    assert meta["feature_reference_digest"] == _digest(expected)
    # a source that is drawn (an ImageFolder: a seeded order) is drawn with the set's --seed
    import numpy as np
    from PIL import Image

    folder = tmp_path / "folder"
    for i in range(6):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"c{i % 2}" / f"{i}.png")
    out = tmp_path / "from_folder"
    assert main([*SYNTH, "-o", str(out), "--images", "1", "--batch", "1", "--seed", "3", "--feature-stats",
                 str(folder)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    drawn = {seed: _digest(in_memory(load_data(str(folder), 32, limit=256, seed=seed), "--feature-stats data").images)
             for seed in (0, 3)}
    assert meta["feature_reference_digest"] == drawn[3] != drawn[0]


def test_synth_force_starts_over_a_set_made_with_other_settings(tmp_path, capsys):
    out = tmp_path / "set"
    assert main([*SYNTH, "-o", str(out), "--images", "1", "--batch", "1"]) == 0
    assert main([*SYNTH, "-o", str(out), "--images", "1", "--batch", "1", "--seed", "1"]) == 2
    assert "--force" in _err_lines(capsys)[-1]
    assert main([*SYNTH, "-o", str(out), "--images", "1", "--batch", "1", "--seed", "1", "--force"]) == 0
    assert json.loads((out / "metadata.json").read_text())["config"]["seed"] == 1


def test_synth_reports_the_mean_seconds_per_iteration_over_its_batches(tmp_path, capsys):
    import re

    out = tmp_path / "set"
    assert main([*SYNTH, "-o", str(out), "--images", "3", "--batch", "1", "--iters", "3"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    per_iteration = [b["seconds_per_iteration"] for b in meta["batches"].values()]
    assert len(per_iteration) == 3
    shown = float(re.search(r"\(([0-9.]+) s per iteration of a batch of <= 1\)", printed).group(1))
    assert shown == round(sum(per_iteration) / 3, 3)


# --- vitrt lint-trt -------------------------------------------------------------------------------------------------
def test_lint_trt_lists_every_finding_with_its_node_and_a_summary_without_the_first(tmp_path, capsys):
    import numpy as np
    import onnx

    from lint_support import matmul_qdq

    path = tmp_path / "bad.onnx"
    onnx.save(matmul_qdq(act_zp=np.int8(3)), str(path))
    assert main(["lint-trt", str(path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("error: [qdq-zero-point] q: ")
    assert lines[-1].startswith("TensorRT lint: ") and "; first:" not in lines[-1]
    assert main(["lint-trt"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "no model given: vitrt lint-trt MODEL.onnx (or --rules)" in err[0]


def test_lint_trt_never_writes_its_json_over_the_model(tmp_path, capsys):
    import numpy as np
    import onnx

    from lint_support import matmul_qdq

    path = tmp_path / "bad.onnx"
    onnx.save(matmul_qdq(act_zp=np.int8(3)), str(path))
    before = path.read_bytes()
    assert main(["lint-trt", str(path), "--json", str(path)]) == 2
    assert "is the input" in _err_lines(capsys)[-1] and path.read_bytes() == before


# --- vitrt reference ------------------------------------------------------------------------------------------------
def test_reference_shows_its_test_top1_in_percent(capsys):
    assert main(["reference"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits reference ") and " 98.89 % test top-1, weights " in out


# --- vitrt demo: its checks and its table (hand-made rows; the demo itself trains nothing but takes a minute) -------
def _row(variant, speedup, top1=0.98, delta=0.0):
    return {"variant": variant, "out": "x", "torch_top1": top1, "compiled_top1": top1, "max_abs_err": 1.2e-6,
            "gflops": 0.01, "artifact_mb": 0.5, "delta_points": delta, "median_ms": 1.0, "p90_ms": 1.2,
            "speedup": speedup}


def _result(rows, backend="ort", load=0.5, cores=2):
    return {"rows": rows, "device": "CPU", "backend": backend, "batch": 8, "test_images": 450, "rounds": 2,
            "iterations": 2, "cpu_seconds": 1.0, "load_average": load, "cores": cores}


def test_demo_table_rows_say_top1_in_percent_and_signed_points():
    from vitrt.reports.demo import format_table

    table = format_table(_result([_row("dense fp32", 1.0, 0.9889), _row("fp16", 1.5, 0.9867, -0.22)]))
    assert "| dense fp32 | 98.89 % | +0.00 pt | 98.89 % | 1.00 | 1.20 | 1.00x | 0.50 | 1.2e-06 |" in table
    assert "| fp16 | 98.67 % | -0.22 pt |" in table


def test_demo_table_calls_a_variant_slower_only_as_printed_and_says_why():
    from vitrt.reports.demo import SLOWER_BECAUSE, format_table

    rows = [_row("dense fp32", 1.0), _row("fp16", 0.996), _row("int8 PTQ", 0.8), _row("ToMe 60% FLOPs", 0.9)]
    table = format_table(_result(rows))
    assert "fp16 is slower" not in table  # printed as 1.00x: not slower
    assert f"int8 PTQ is slower than dense here (0.80x): {SLOWER_BECAUSE['ort']['int8 PTQ']}." in table
    assert "ToMe 60% FLOPs is slower than dense here (0.90x): no known cause on this backend." in table
    assert "Warning: load average" not in table
    rows = [_row("dense fp32", 1.0), _row("fp16", 0.7)]
    table = format_table(_result(rows, backend="torch", load=3.0, cores=2))
    assert "fp16 is slower than dense here (0.70x): the machine was busy while timing" in table
    assert "Warning: load average 3.0 on 2 cores" in table


def test_demo_table_busy_starts_above_the_cores():
    from vitrt.reports.demo import format_table

    assert "Warning: load average" not in format_table(_result([_row("dense fp32", 1.0)], load=2.0, cores=2))
    assert "Warning: load average" in format_table(_result([_row("dense fp32", 1.0)], load=2.01, cores=2))


def test_demo_checks_every_count_and_the_out_before_any_work(tmp_path):
    from vitrt.compiler.errors import VitrtError
    from vitrt.reports.demo import DemoConfig, check

    for name in ("batch", "rounds", "iterations"):
        with pytest.raises(VitrtError, match=f"--{name} must be >= 1, got 0"):
            check(DemoConfig(out=tmp_path / "d", **{name: 0}))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(VitrtError, match="pass --force"):
        check(DemoConfig(out=tmp_path / "full"))
    assert DemoConfig().batch == 8 and DemoConfig().out.name == "vitrt-demo"  # the README's `vitrt demo`


def test_demo_probes_the_backend_before_any_work(tmp_path):
    from vitrt.compiler.backends.trt import tensorrt_available
    from vitrt.compiler.errors import VitrtError
    from vitrt.reports.demo import DemoConfig, check

    if tensorrt_available():
        pytest.skip("TensorRT installed")
    with pytest.raises(VitrtError, match="TensorRT is not installed"):
        check(DemoConfig(out=tmp_path / "d", backend="trt"))
    assert list(tmp_path.iterdir()) == []



# --- defects the audit found (each test failed before its fix) ----------------------------------------------------

def test_the_demo_times_a_batch_larger_than_its_test_images_by_repeating_them():
    """The demo timed the first --batch of its 450 test images: --batch 451 compiled every variant and then ended in
    ONNX Runtime's traceback ("Got: 450 Expected: 451"). The timing reads no labels, so the images repeat."""
    import numpy as np

    from vitrt.reports.demo import timing_batch

    images = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    assert timing_batch(images, 2).tolist() == images[:2].tolist()
    assert timing_batch(images, 7).tolist() == images[[0, 1, 2, 0, 1, 2, 0]].tolist()


@pytest.mark.parametrize("fields", [{"input_shape": []}, {"input_shape": 8}, {"quantization": "int8"},
                                    {"sparsity": ["2:4"]}])
def test_lut_query_of_a_damaged_manifest_is_one_line(tmp_path, capsys, fields):
    """`vitrt lut query LUT --manifest M` indexed input_shape blindly (IndexError / TypeError) and read a
    non-object section with .get (AttributeError): tracebacks, exit 1."""
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"model": "digits", "backend": "ort", "input_shape": [8, 3, 32, 32], **fields}))
    assert main(["lut", "query", str(DIGITS_LUT), "--manifest", str(path)]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("vitrt: error:"), err
    # a section that is not an object is named; a shape without a batch is checked as no batch (the query then
    # stops at this hand-made manifest's missing spec)
    assert ("is not a JSON object" in err[0]) == ("input_shape" not in fields), err


def test_prune_plan_to_a_directory_names_the_real_fix(tmp_path, capsys):
    """-o DIR without --force said "exists: pass --force to replace it"; with --force it was then refused as a
    directory. The one line says what is wrong (a directory) the first time."""
    (tmp_path / "plans").mkdir()
    assert main(["prune-plan", "digits", "--prune", "0.7", "--lut", str(DIGITS_LUT), "--batch", "8", "--quiet",
                 "-o", str(tmp_path / "plans")]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "is a directory" in err[0] and "pass --force" not in err[0], err


@pytest.mark.parametrize("flags", [["--json", "{tmp}/rules.json"], ["--strict"]])
def test_lint_trt_rules_refuses_the_options_it_would_ignore(tmp_path, capsys, flags):
    """`vitrt lint-trt --rules --json PATH` exited 0 and wrote nothing; --strict was accepted and meant nothing."""
    assert main(["lint-trt", "--rules", *[f.format(tmp=tmp_path) for f in flags]]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and f"drop {flags[0]} or --rules" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_block_query_refuses_attention_sizes_without_attention_and_tokens_out_beyond_its_tokens(capsys):
    """--heads 0 --qk 5 answered for a block without attention, ignoring --qk; --tokens-out -5 was refused with the
    table's internal name (tokens_out=-5) instead of the flag."""
    code, _, err = _query(capsys, "--emb", 64, "--heads", 0, "--qk", 5, "--mlp", 128, "--tokens", 17)
    assert code == 2 and "--heads 0 removes the attention, which --qk / --v size: drop them" in err, err
    for value in (-5, 0, 18):
        code, _, err = _query(capsys, *BLOCK, "--tokens-out", value)
        assert code == 2 and f"--tokens-out must be in 1..--tokens (17), got {value}" in err, err


def test_synth_refuses_feature_statistics_of_noise(tmp_path, capsys):
    """--feature-stats synthetic was accepted: the inversion then matched the per-block statistics of noise."""
    assert main([*SYNTH, "-o", str(tmp_path / "set"), "--feature-stats", "synthetic"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "would match the statistics of noise" in err[0], err
    assert list(tmp_path.iterdir()) == []
