"""Atomic output directories: nothing half-written, an old OUT never lost, no directories left behind."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.output import OUTPUT_MARKER, atomic_output_dir

from conftest import DIGITS_LUT as DIGITS_LUT_PATH


def _hidden(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


def test_success_renames_staging_into_place_with_normal_permissions(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out, force=False) as staging:
        (staging / "file").write_text("new")
    assert (out / "file").read_text() == "new" and _hidden(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_failure_leaves_nothing_not_even_created_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, force=False) as staging:
            (staging / "file").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_second_rename_puts_the_old_out_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "file").write_text("old")
    (out / OUTPUT_MARKER).write_text("")  # a directory vitrt wrote: --force may replace it
    real_replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # OUT was moved aside; the staging directory cannot be moved in
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        with atomic_output_dir(out, force=True) as staging:
            (staging / "file").write_text("new")
    assert (out / "file").read_text() == "old"
    assert _hidden(tmp_path) == []


def test_an_out_filled_by_another_process_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(VitrtError, match="is not empty"):
        with atomic_output_dir(out, force=False) as staging:
            (staging / "file").write_text("ours")
            out.mkdir()
            (out / "theirs").write_text("keep")
    assert [p.name for p in out.iterdir()] == ["theirs"] and _hidden(tmp_path) == []


def test_a_parent_that_cannot_be_created_is_one_line_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(VitrtError, match="cannot create the output's parent directory"):
        with atomic_output_dir(blocker / "sub" / "out", force=False):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_sigterm_during_a_compile_unwinds_like_ctrl_c_and_leaves_no_staging_directory(tmp_path):
    """A job scheduler's SIGTERM: exit 143, one line, no OUT and no hidden .OUT.staging-* left beside it."""
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "vitrt.cli", "compile", "digits", "-o", str(tmp_path / "OUT"), "--sparsity",
               "2:4", "--sparse-finetune-epochs", "200", "--sparse-data", "digits"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".OUT.staging-") for p in tmp_path.iterdir()):  # the compile is under way
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "vitrt: terminated; nothing was written"
    assert list(tmp_path.iterdir()) == []


DIGITS_LUT = str(DIGITS_LUT_PATH)  # a command-line argument


@pytest.mark.parametrize("args, message", [
    (["bench", "digits", "--json", "{missing}/r.json"], "does not exist"),
    (["bench", "digits", "--json", "/proc/vitrt-results.json"], "cannot be written"),  # os.access says yes to root
    (["lint-trt", "m.onnx", "--json", "{tmp}"], "is a directory"),
    (["nvit-table", "a", "b", "-o", "{missing}/table"], "does not exist"),
    (["dcvit-table", "--model", "digits", "-o", "{missing}/table"], "does not exist"),
    (["lut", "build", "--grid", "tiny", "-o", "{missing}/lut.json"], "does not exist"),
    (["lut", "merge", DIGITS_LUT, "-o", "{missing}/lut.json"], "does not exist"),
    (["lut", "plot", DIGITS_LUT, "-o", "{tmp}/surface.txt"], "name a .png"),
    (["bench-quant-accuracy", "--json-out", "{missing}/q.json"], "does not exist"),
])
def test_result_files_are_checked_before_any_work(tmp_path, capsys, args, message):
    """A result path a command writes at the end of its run is refused up front, in one line with exit 2 — not
    as a traceback after the work (or after a whole table build)."""
    from vitrt.cli import main

    args = [a.format(tmp=tmp_path, missing=tmp_path / "missing") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_force_never_replaces_an_out_that_holds_the_compiles_own_inputs(tmp_path, digits_reference):
    """--force replaces OUT: a table, plan or data directory the compile reads from inside OUT would be deleted by
    it, so the compile is refused and OUT kept; and force="no" is no bool (it was truthy and replaced OUT)."""
    import shutil

    import vitrt

    out = tmp_path / "out"
    vitrt.compile(digits_reference[0], out, batch=8, quiet=True)
    shutil.copy(DIGITS_LUT, out / "lut.json")
    from vitrt.calib.synthesis import SET_FORMAT, SET_VERSION

    (out / "set" / "images").mkdir(parents=True)  # a (finished) synthetic metric set, named synth:SET
    (out / "set" / "metadata.json").write_text(json.dumps({"format": SET_FORMAT, "version": SET_VERSION,
                                                           "complete": True}))
    before = sorted(p.name for p in out.iterdir())
    for options, message in ((dict(lut=out / "lut.json", bench=True, force=True), "lut '.*' lies inside"),
                             (dict(eval_data=str(out), force=True), "eval_data '.*' lies inside"),
                             (dict(metric_set=f"synth:{out}/set", force=True), "metric_set 'synth:.*' lies inside"),
                             (dict(force="no"), "force takes a bool, got 'no'")):
        with pytest.raises(VitrtError, match=message):
            vitrt.compile(digits_reference[0], out, batch=8, quiet=True, **options)
        assert sorted(p.name for p in out.iterdir()) == before and (out / "set" / "metadata.json").is_file()


def test_force_replaces_only_a_directory_vitrt_wrote(tmp_path, monkeypatch):
    """--force starts over an OUT vitrt wrote (it holds the marker); a directory of the user's own files, the
    current directory (or one above it) and "/" are refused in one line and left as they were."""
    out = tmp_path / "out"
    with atomic_output_dir(out, force=False) as staging:
        (staging / "file").write_text("first")
    assert (out / OUTPUT_MARKER).is_file()
    with atomic_output_dir(out, force=True) as staging:
        (staging / "file").write_text("second")
    assert (out / "file").read_text() == "second"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(VitrtError, match=r"holds no \.vitrt-output, the mark of a directory written by vitrt"):
        with atomic_output_dir(mine, force=True):
            pass
    import vitrt  # the Python API words the same refusal for keywords

    with pytest.raises(VitrtError, match="so force=True does not replace it: choose another out"):
        vitrt.compile("digits", mine, force=True)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    (mine / "manifest.json").write_text('{"vitrt_version": "0.9"}')  # a compile OUT of a vitrt before the mark
    with atomic_output_dir(mine, force=True) as staging:
        (staging / "file").write_text("third")
    assert sorted(p.name for p in mine.iterdir()) == [OUTPUT_MARKER, "file"]
    assert (mine / OUTPUT_MARKER).read_text().splitlines()[1:] == ["file"]  # what it wrote, listed
    monkeypatch.chdir(out)
    for where in (out, tmp_path, Path("/")):
        with pytest.raises(VitrtError, match="holds the current directory"):
            with atomic_output_dir(where, force=True):
                pass
    assert (out / "file").read_text() == "second" and _hidden(tmp_path) == []


@pytest.fixture(scope="module")
def compiled_digits(tmp_path_factory):
    import vitrt

    out = tmp_path_factory.mktemp("inputs") / "OUT"
    vitrt.compile("digits", out, batch=1, quiet=True)
    return out


@pytest.mark.parametrize("args, message", [
    (["bench", "{out}", "--iterations", "2", "--json", "{out}/manifest.json"], "would overwrite manifest.json of the"),
    (["lint-trt", "{out}/model.onnx", "--json", "{out}/model.onnx"], "is the input"),
    (["nvit-table", "{out}", "{out}", "-o", "{out}/manifest"], "would overwrite manifest.json of the input"),
    (["compare", "{out}", "--images", "2", "-o", "{out}", "--force"], "lies inside"),
    (["sensitivity", "{out}", "--images", "2", "-o", "{out}", "--force"], "MODEL '{out}' lies inside"),
    (["export", "triton", "{out}", "-o", "{out}/..", "--name", "OUT", "--force"], "lies inside"),
    # the mark itself: overwritten, every file vitrt wrote would lose its protection
    (["bench", "{out}", "--iterations", "2", "--json", "{out}/.vitrt-output"], "would overwrite .vitrt-output of"),
])
def test_results_never_replace_the_commands_inputs(compiled_digits, capsys, args, message):
    """A result file or directory that is an input, or would overwrite a file inside an input OUT, is refused in one
    line with exit 2 — the compile OUT is byte-identical afterwards."""
    import hashlib

    from vitrt.cli import main

    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in compiled_digits.iterdir() if p.is_file()}

    before = digest()
    assert main([a.format(out=compiled_digits) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(out=compiled_digits) in err[0], err
    assert digest() == before


def test_compare_and_sensitivity_refuse_a_non_empty_report_before_any_work(compiled_digits, tmp_path, monkeypatch,
                                                                           capsys):
    """Mutation-audit survivors: a non-empty report directory is refused before the comparison or the scoring runs
    (minutes on a real model), and a --data folder inside sensitivity's -o (which --force would delete) is refused."""
    import vitrt.debug.compare as compare
    import vitrt.debug.sensitivity as sensitivity
    from vitrt.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the report directory was checked")

    for module, name in ((compare, "compare_with_twin"), (compare, "compare_artifacts"),
                         (sensitivity, "sensitivity")):
        monkeypatch.setattr(module, name, no_work)
    report = tmp_path / "report"
    report.mkdir()
    (report / "mine.txt").write_text("keep")
    for args in (["compare", str(compiled_digits)], ["compare", str(compiled_digits), str(compiled_digits)],
                 ["sensitivity", str(compiled_digits)]):
        assert main([*args, "--images", "2", "-o", str(report)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not empty" in err[0], (args, err)
    (report / "images" / "0").mkdir(parents=True)
    (report / "images" / "0" / "0.png").write_bytes(b"")
    assert main(["sensitivity", str(compiled_digits), "--images", "2", "--data", str(report / "images"), "-o",
                 str(report), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data" in err[0] and "lies inside" in err[0], err
    assert sorted(p.name for p in report.iterdir()) == ["images", "mine.txt"]


def test_a_result_beside_an_inputs_files_is_written_again_on_a_rerun(compiled_digits, tmp_path, capsys):
    """A new file inside an input OUT (bench OUT --json OUT/bench.json) is not one vitrt wrote there: the rerun that
    meets it rewrites it. In a directory vitrt did not write, an existing file is never overwritten."""
    from vitrt.cli import main

    for _ in range(2):
        assert main(["bench", str(compiled_digits), "--iterations", "2", "--json",
                     str(compiled_digits / "bench.json"), "--quiet"]) == 0
    assert json.loads((compiled_digits / "bench.json").read_text())["iterations"] == 2
    (compiled_digits / "bench.json").unlink()
    legacy = tmp_path / "legacy"  # an OUT without the mark: what it holds is not known, so nothing in it is written
    shutil.copytree(compiled_digits, legacy)
    (legacy / OUTPUT_MARKER).unlink()
    (legacy / "notes.json").write_text("mine")
    assert main(["bench", str(legacy), "--iterations", "2", "--json", str(legacy / "notes.json")]) == 2
    assert "would overwrite notes.json of the input" in capsys.readouterr().err
    assert (legacy / "notes.json").read_text() == "mine"


def test_a_plan_is_never_written_over_the_table_it_is_made_from(tmp_path, capsys):
    from vitrt.cli import main

    lut = tmp_path / "lut.json"
    shutil.copy(DIGITS_LUT, lut)
    before = lut.read_bytes()
    assert main(["prune-plan", "digits", "--prune", "0.7", "--lut", str(lut), "--batch", "8", "-o", str(lut),
                 "--force"]) == 2
    assert "is the --lut the plan is made from" in capsys.readouterr().err and lut.read_bytes() == before


def test_force_is_safe_around_links_interrupts_and_the_current_directory(tmp_path, monkeypatch):
    """Found by the seventh mutation audit: an OUT given as a symbolic link (replacing it swapped the link for a
    directory); an interrupt between the two renames of --force (the old OUT stayed hidden); "-o ." in an empty
    current directory (the shell was left in a deleted directory). Each is refused in one line or undone."""
    out = tmp_path / "out"
    with atomic_output_dir(out, force=False) as staging:
        (staging / "file").write_text("first")
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(VitrtError, match="is a symbolic link; pass the directory it points to"):
        with atomic_output_dir(link, force=True):
            pass
    assert link.is_symlink() and (out / "file").read_text() == "first"
    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(src)
        if len(calls) == 2:  # OUT moved aside, then Ctrl-C before the staging directory is moved in
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out, force=True) as staging:
            (staging / "file").write_text("second")
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out / "file").read_text() == "first" and _hidden(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(VitrtError, match="holds the current directory"):
        with atomic_output_dir(Path("."), force=False):
            pass
    assert empty.is_dir() and Path.cwd() == empty


def test_the_current_directory_is_recognised_through_a_symbolic_link_above_it(tmp_path, monkeypatch):
    """Mutation-audit survivor: -o LINK/sub, where LINK links to a directory holding the current one, names the
    current directory's ancestor by another path: refused as the direct path is, by start_over and check_output_dir."""
    from vitrt.compiler.output import check_output_dir, start_over

    work = tmp_path / "real" / "work"
    (work / "here").mkdir(parents=True)
    (work / "here" / "file").write_text("keep")
    (work / OUTPUT_MARKER).write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(work / "here")
    for check in (start_over, lambda out: check_output_dir(out, force=True)):
        with pytest.raises(VitrtError, match="holds the current directory"):
            check(tmp_path / "link" / "work")
    assert (work / "here" / "file").read_text() == "keep"


def test_results_never_overwrite_a_nested_vitrt_output_or_a_hard_link_to_an_input(compiled_digits, tmp_path, capsys):
    """A report vitrt wrote inside an input OUT (compare's default OUT/compare) is protected by its own mark; a
    result path that is a hard link to an input is the input."""
    from vitrt.cli import main

    out = tmp_path / "OUT"
    shutil.copytree(compiled_digits, out)
    with atomic_output_dir(out / "compare", force=False) as staging:  # as vitrt compare OUT writes its report
        (staging / "compare.md").write_text("report")
    report = (out / "compare" / "compare.md").read_text()
    for result, message in (("compare/compare.md", "would overwrite compare/compare.md of the input"),
                            ("compare/.vitrt-output", "would overwrite compare/.vitrt-output of the input")):
        assert main(["bench", str(out), "--iterations", "2", "--json", str(out / result)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert (out / "compare" / "compare.md").read_text() == report
    os.link(out / "model.onnx", tmp_path / "hard.onnx")
    model = (out / "model.onnx").read_bytes()
    assert main(["lint-trt", str(out / "model.onnx"), "--json", str(tmp_path / "hard.onnx")]) == 2
    assert "is the input" in capsys.readouterr().err
    assert (out / "model.onnx").read_bytes() == model


def test_the_deepest_mark_decides_what_a_result_inside_an_input_would_overwrite(tmp_path):
    """``written_entry``: inside a directory vitrt wrote (``twin``, listed by OUT's mark) every file is vitrt's; a
    nested output's own mark decides below it; a new file is not an entry; without any mark an existing file is."""
    from vitrt.compiler.options import written_entry

    out = tmp_path / "OUT"
    (out / "twin").mkdir(parents=True)
    (out / OUTPUT_MARKER).write_text("# header\nmanifest.json\ntwin\n")
    (out / "report").mkdir()
    (out / "report" / OUTPUT_MARKER).write_text("# header\nreport.md\n")
    assert written_entry(out, out / "twin" / "record.json") == "twin/record.json"
    assert written_entry(out, out / "manifest.json") == "manifest.json"
    assert written_entry(out, out / OUTPUT_MARKER) == OUTPUT_MARKER
    assert written_entry(out, out / "bench.json") is None
    assert written_entry(out, out / "report" / "report.md") == "report/report.md"
    assert written_entry(out, out / "report" / "notes.md") is None  # the nested mark decides, not OUT's
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "sub" / "mine.txt").write_text("x")
    assert written_entry(plain, plain / "sub" / "mine.txt") == "sub/mine.txt"
    assert written_entry(plain, plain / "sub" / "new.txt") is None


def test_inputs_inside_what_a_run_replaces_are_refused_before_any_work(compiled_digits, tmp_path, capsys):
    """``compare --data`` inside the report directory ``--force`` replaces, and ``debug-digits --ranking`` inside the
    ``--work`` it replaces (where an earlier run scored it), are refused in one line and kept."""
    from vitrt.cli import main

    report = tmp_path / "R"
    with atomic_output_dir(report, force=False) as staging:
        (staging / "compare.md").write_text("old report")
    (report / "imgs" / "0").mkdir(parents=True)
    (report / "imgs" / "0" / "a.png").write_bytes(b"png")
    assert main(["compare", str(compiled_digits), str(compiled_digits), "--data", str(report / "imgs"),
                 "-o", str(report), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data" in err[0] and "lies inside" in err[0], err
    assert (report / "imgs" / "0" / "a.png").is_file()
    work = tmp_path / "W"
    (work / "sensitivity").mkdir(parents=True)
    (work / ".vitrt-debug-digits").write_text("made by vitrt debug-digits\n")
    (work / "sensitivity" / "sensitivity.json").write_text("{}")
    assert main(["debug-digits", "--work", str(work), "--results", str(tmp_path / "res"),
                 "--ranking", str(work / "sensitivity" / "sensitivity.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ranking" in err[0] and "lies inside" in err[0], err
    assert (work / "sensitivity" / "sensitivity.json").is_file()


def test_only_a_manifest_vitrt_wrote_marks_an_older_output_and_odd_outs_are_refused(tmp_path):
    """Mutation-audit survivors: a manifest.json of something else (no vitrt_version, or not an object) does not
    let --force replace a directory; an existing empty directory is an OUT without --force; a FIFO is refused as
    not a directory (it would have been renamed aside)."""
    for name, manifest in (("webapp", '{"name": "webapp"}'), ("number", "1"), ("broken", "{")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(manifest)
        with pytest.raises(VitrtError, match="holds no .vitrt-output"):
            with atomic_output_dir(folder, force=True):
                pass
        assert [p.name for p in folder.iterdir()] == ["manifest.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_output_dir(empty, force=False) as staging:
        (staging / "file").write_text("x")
    assert (empty / "file").read_text() == "x"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(VitrtError, match="exists and is not a directory"):
        with atomic_output_dir(fifo, force=True):
            pass
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_inputs_are_recognised_through_links_dots_and_second_positions(compiled_digits, tmp_path, capsys):
    """Mutation-audit survivors: an input named through a symbolic link or "..", a result path that is a link to
    an input, the second artifact of compare, a --checkpoint: each refused in one line, nothing changed."""
    import hashlib

    from vitrt.cli import main

    a = tmp_path / "A"
    shutil.copytree(compiled_digits, a)
    (tmp_path / "d").mkdir()
    shutil.copy(DIGITS_LUT_PATH, tmp_path / "lut.json")
    (tmp_path / "ck.pt").write_bytes(b"weights")
    (tmp_path / "link.onnx").symlink_to(a / "model.onnx")
    plan = ["prune-plan", "digits", "--prune", "0.7", "--batch", "8", "--force"]
    cases = [
        (["lint-trt", str(a / "model.onnx"), "--json", str(tmp_path / "link.onnx")], "is the input"),
        (["lint-trt", str(tmp_path / "link.onnx"), "--json", str(a / "model.onnx")], "is the input"),
        (["compare", str(a), str(compiled_digits), "-o", str(compiled_digits), "--force"], "B '"),
        ([*plan, "--lut", str(tmp_path / "d" / ".." / "lut.json"), "-o", str(tmp_path / "lut.json")],
         "is the --lut the plan is made from"),
        ([*plan, "--lut", str(tmp_path / "lut.json"), "--checkpoint", str(tmp_path / "ck.pt"),
          "-o", str(tmp_path / "ck.pt")], "is the --checkpoint the plan is made from"),
    ]

    def digest():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (*a.iterdir(), *compiled_digits.iterdir(),
                                                                        tmp_path / "lut.json", tmp_path / "ck.pt")
                if p.is_file()}

    before = digest()
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    assert digest() == before


def test_read_onnx_refuses_models_without_nodes_or_opset_in_one_line(tmp_path):
    """Mutation-audit survivors: a model protobuf reads without nodes, or without an opset, is refused in one line
    ending in the fix, as a corrupt file is."""
    import onnx
    from onnx import TensorProto, helper

    from vitrt.compiler.onnx_file import read_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    good = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    no_opset = onnx.ModelProto()
    no_opset.CopyFrom(good)
    del no_opset.opset_import[:]
    no_nodes = onnx.ModelProto()
    no_nodes.CopyFrom(good)
    del no_nodes.graph.node[:]
    for name, model in (("ok", good), ("no_opset", no_opset), ("no_nodes", no_nodes)):
        onnx.save(model, tmp_path / f"{name}.onnx")
    assert read_onnx(tmp_path / "ok.onnx").graph.node[0].op_type == "Relu"
    (tmp_path / "corrupt.onnx").write_bytes(b"\xff\xfe not a protobuf")
    for name in ("no_opset", "no_nodes", "corrupt"):
        with pytest.raises(VitrtError, match="; compile OUT again$") as info:
            read_onnx(tmp_path / f"{name}.onnx")
        assert "\n" not in str(info.value)


def test_read_onnx_loads_external_weights_only_when_asked(tmp_path):
    """Mutation-audit survivor: ``external_data=True`` (the torch backend's import) reads weights stored beside the
    model; the default leaves them outside (a graph pass reads shapes only, a large model need not fit in memory)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vitrt.compiler.onnx_file import read_onnx

    weight = np.arange(4096, dtype=np.float32).reshape(64, 64)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx", save_as_external_data=True, location="m.weights",
              size_threshold=0)
    loaded = read_onnx(tmp_path / "m.onnx", external_data=True).graph.initializer[0]
    assert np.array_equal(numpy_helper.to_array(loaded), weight)
    outside = read_onnx(tmp_path / "m.onnx").graph.initializer[0]
    assert outside.data_location == TensorProto.EXTERNAL and not outside.raw_data


def test_a_non_empty_out_is_refused_before_any_work(tmp_path, monkeypatch):
    """Mutation-audit survivor: compile refuses a non-empty OUT before it inspects or lowers the model, and leaves
    the directory as it was."""
    import vitrt
    import vitrt.pipeline.driver as driver

    def no_work(*args, **kwargs):
        raise AssertionError("work started before OUT was checked")

    monkeypatch.setattr(driver, "inspect_source", no_work)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(VitrtError, match="is not empty; pass force=True"):
        vitrt.compile("digits", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_an_interrupt_while_a_class_is_created_is_recognised_as_the_interrupt():
    """A SIGTERM (or Ctrl-C) that lands while an import creates a class reaches the CLI wrapped by Python in
    "RuntimeError: Error calling __set_name__" (the CI flake of the SIGTERM test above): the CLI unwraps it."""
    from vitrt.cli import Terminated, interruption_in

    class Interrupting:
        def __set_name__(self, owner, name):
            raise Terminated()

    with pytest.raises(RuntimeError) as caught:
        type("Importing", (), {"field": Interrupting()})
    assert isinstance(interruption_in(caught.value), Terminated)
    assert interruption_in(RuntimeError("plain")) is None
