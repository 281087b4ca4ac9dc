"""Tests added by a mutation audit of vitrt.compiler's core modules (options, output, pass_manager, target, cost,
twin, progress, jsonfile, errors, distributed): each pins a behaviour that a one-line mutation could change without
the existing tests noticing. Real configs, real passes on a tiny lowered ViT, real files: seconds each."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_vit
from vitrt.compiler.errors import OptionError, OutputError, VitrtError


# --- target.py ---------------------------------------------------------------------------------------------------

def test_a_dynamic_batch_profile_runs_from_1_to_the_larger_of_the_batch_and_32():
    from vitrt.compiler.target import TargetConfig

    assert TargetConfig(dynamic_batch=True, batch=4).batch_profile == (1, 4, 32)
    assert TargetConfig(dynamic_batch=True, batch=48).batch_profile == (1, 48, 48)
    assert TargetConfig(dynamic_batch=True, batch=4, min_batch=2, max_batch=8).batch_profile == (2, 4, 8)
    assert TargetConfig(batch=4).batch_profile is None and TargetConfig(batch=4).static_batch == 4
    assert TargetConfig(dynamic_batch=True, batch=4).static_batch is None


def test_target_validation_boundaries_are_inclusive_where_documented():
    from vitrt.compiler.target import TargetConfig

    for ok in (dict(batch=1), dict(opset=17), dict(opset=21), dict(threads=1),
               dict(backend="trt", dynamic_batch=True, batch=2, min_batch=1, max_batch=2),
               dict(backend="trt", dynamic_batch=True, batch=2, min_batch=2, max_batch=2),
               dict(backend="torch", device="cuda:0", cuda_graph=True), dict(backend="ort", device="cpu"),
               dict(backend="trt", no_build=True), dict(backend="torch", torch_compile="default")):
        TargetConfig(**ok).validate()
    for bad, message in ((dict(batch=0), "--batch must be >= 1"), (dict(opset=16), "--opset 16 is outside"),
                         (dict(opset=22), "--opset 22 is outside"), (dict(threads=0), "--threads must be >= 1"),
                         (dict(max_batch=8), "add --dynamic-batch"),
                         (dict(backend="trt", dynamic_batch=True, batch=2, min_batch=3, max_batch=4),
                          "1 <= --min-batch <= --batch"),
                         (dict(backend="trt", dynamic_batch=True, batch=2, min_batch=0), "1 <= --min-batch"),
                         (dict(dynamic_batch=True, batch=2, min_batch=2), "--backend ort runs any batch"),
                         (dict(backend="torch", dynamic_batch=True, max_batch=8), "--backend torch runs any batch"),
                         (dict(torch_compile="default"), "--torch-compile needs --backend torch"),
                         (dict(backend="torch", device="cpu", cuda_graph=True), "--cuda-graph needs a GPU"),
                         (dict(device="cuda"), "--backend ort runs on the CPU"),
                         (dict(no_build=True), "--no-build is for --backend trt")):
        with pytest.raises(OptionError, match=message):
            TargetConfig(**bad).validate()


def test_bf16_is_refused_on_ort_alone_and_quantized_trt_graphs_carry_fp16():
    from vitrt.compiler.target import TargetConfig, check_precision_runs

    with pytest.raises(OptionError, match="bf16 needs --backend trt or torch"):
        check_precision_runs("bf16", "ort")
    check_precision_runs("bf16", "trt")
    check_precision_runs("bf16", "torch")
    dtypes = {(p, b): TargetConfig(precision=p, backend=b).activation_dtype
              for p in ("fp32", "bf16", "int8", "int4w") for b in ("ort", "trt")}
    assert dtypes == {("fp32", "ort"): "fp32", ("fp32", "trt"): "fp32", ("bf16", "ort"): "bf16",
                      ("bf16", "trt"): "bf16", ("int8", "ort"): "fp32", ("int8", "trt"): "fp16",
                      ("int4w", "ort"): "fp32", ("int4w", "trt"): "fp16"}
    assert TargetConfig(backend="torch").build_options().device == "cpu"


# --- cost.py -----------------------------------------------------------------------------------------------------

def test_flops_count_the_patch_embedding_on_the_patches_and_both_heads_of_a_distilled_model():
    from vitrt.compiler.cost import block_flops, head_flops, stem_flops, vit_flops
    from vitrt.compiler.models import canonicalize

    spec = canonicalize(tiny_vit(distilled=True, depth=1)).spec  # 16 patches + 2 prefix tokens, emb 64, 3x8x8
    assert stem_flops(spec) == 2 * 16 * 64 * 3 * 8 * 8
    assert head_flops(spec) == 2 * 2 * 64 * 10
    assert vit_flops(spec) == stem_flops(spec) + block_flops(64, spec.blocks[0]) + head_flops(spec)


# --- progress.py -------------------------------------------------------------------------------------------------

def test_a_finished_loop_shows_no_eta_and_an_hour_long_one_shows_hours():
    from vitrt.compiler.progress import LineBar, _clock

    stream = io.StringIO()
    bar = LineBar(4, "loop", stream, interval_s=0.0)
    bar.update(4)
    assert "ETA" not in stream.getvalue() and "4/4 (" in stream.getvalue()
    assert _clock(3725) == "1:02:05" and _clock(65) == "01:05" and _clock(0.9) == "00:00"


def test_a_notebook_gets_tqdm_and_a_quiet_config_gets_no_progress(monkeypatch):
    import sys
    import types

    from vitrt.compiler.progress import LineBar, Progress, progress_for
    from vitrt.pipeline.config import CompileConfig

    assert not progress_for(CompileConfig(quiet=True)).enabled and progress_for(CompileConfig()).enabled
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    bar = Progress(stream=io.StringIO()).bar(2, "cell")  # not a terminal, but a notebook draws tqdm.auto's widget
    try:
        assert not isinstance(bar, LineBar)
    finally:
        bar.close()


# --- errors.py, jsonfile.py --------------------------------------------------------------------------------------

def test_an_error_message_is_one_line_whatever_whitespace_it_was_written_with():
    assert str(VitrtError("cannot read\n   'x':  no\tsuch file ")) == "cannot read 'x': no such file"


def test_read_json_names_the_hint_and_reads_a_file_that_is_not_text_as_one_line(tmp_path):
    from vitrt.compiler.jsonfile import read_json

    with pytest.raises(VitrtError, match=r"^latency table '.*' does not exist; build one with vitrt lut build$"):
        read_json(tmp_path / "missing.json", "latency table", hint="build one with vitrt lut build")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VitrtError, match=r"is corrupt: not valid JSON .*; build one$"):
        read_json(tmp_path / "bad.json", "table", hint="build one")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(VitrtError, match=r"^cannot read table '.*binary.json': UnicodeDecodeError$"):
        read_json(tmp_path / "binary.json", "table")


# --- distributed.py ----------------------------------------------------------------------------------------------

def test_a_single_process_writes_whatever_rank_a_stale_environment_names(monkeypatch):
    from vitrt.compiler.distributed import is_writer, world

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    assert is_writer() and world() is None
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert not is_writer()


# --- pass_manager.py ---------------------------------------------------------------------------------------------

def _passes():
    from vitrt.compiler.pass_manager import CANONICAL, SHAPES_INFERRED, TOPOSORTED, Pass, PassResult

    class Untouched(Pass):
        """Declares a function change and a loose tolerance, but changes nothing this time."""

        name = "untouched"
        changes_function = True

        def tolerance(self):
            return 1e-2

        def run(self, view, ctx):
            return PassResult(view, False, build_hints={"sparse_weights": True})

        def apply_to_twin(self, twin):
            raise AssertionError("a pass that modified nothing has no twin change to make")

    class Unsorts(Pass):
        """Moves the last node to the front and honestly gives up TOPOSORTED."""

        name = "unsorts"
        preserves = frozenset({CANONICAL, SHAPES_INFERRED})

        def run(self, view, ctx):
            view.graph.nodes.insert(0, view.graph.nodes.pop())
            return PassResult(view, True)

    class NeedsSorted(Pass):
        name = "needs_sorted"
        requires = frozenset({CANONICAL, TOPOSORTED})

        def run(self, view, ctx):
            return PassResult(view, False)

    return Untouched, Unsorts, NeedsSorted


def test_a_pass_that_modified_nothing_leaves_the_twin_but_keeps_its_tolerance_and_hints(lowered):
    from vitrt.compiler.pass_manager import FP32_TOLERANCE, OpCountInstrument, PassManager

    twin, fresh = lowered
    Untouched, _, _ = _passes()
    result = PassManager([Untouched()], [OpCountInstrument()]).run(fresh(), twin=twin)
    (record,) = result.records
    assert result.twin is twin and not record.modified and not record.changes_function
    assert not result.changes_function and record.tolerance == 1e-2 and result.tolerance == 1e-2 > FP32_TOLERANCE
    assert result.build_hints == {"sparse_weights": True}
    assert record.stats["op_delta"] == {} and record.stats["nodes"] == len(fresh().graph.nodes)


def test_a_pass_scheduled_twice_is_refused_and_a_function_change_without_a_twin_transform_raises(lowered):
    from vitrt.compiler.pass_manager import PassManager

    Untouched, Unsorts, _ = _passes()
    with pytest.raises(VitrtError, match="pass 'unsorts' is scheduled twice"):
        PassManager([Unsorts(), Unsorts()])
    plain = Unsorts()
    assert plain.apply_to_twin(lowered[0]) is lowered[0]
    plain.changes_function = True
    with pytest.raises(NotImplementedError, match="pass 'unsorts' changes the function but has no twin transform"):
        plain.apply_to_twin(lowered[0])


def test_verify_checks_a_passs_requirements_on_the_graph_before_it_runs(lowered):
    from vitrt.compiler.pass_manager import LOWERED_PROPERTIES, PassManager

    _, _, NeedsSorted = _passes()
    view = lowered[1]()
    view.graph.nodes.insert(0, view.graph.nodes.pop())  # the graph handed in is not what the lowering promised
    PassManager([NeedsSorted()], initial_properties=LOWERED_PROPERTIES).run(view)  # the schedule alone trusts it
    with pytest.raises(VitrtError, match=r"before pass 'needs_sorted' \(its requirements\): toposorted: node"):
        PassManager([NeedsSorted()], check_properties=True).run(view)


# --- options.py --------------------------------------------------------------------------------------------------

def test_an_option_is_named_in_messages_by_its_long_flag_or_its_metavar_name():
    from vitrt.compiler.options import leaf
    from vitrt.pipeline.config import CompileConfig

    out = leaf(CompileConfig, "out")
    assert out.flags == ["-o", "--out"] and out.flag == "--out"
    assert leaf(CompileConfig, "model").flag == "MODEL" and leaf(CompileConfig, "prune_plan").flag == "--prune-plan"


def test_a_result_prefix_is_refused_when_its_markdown_twin_cannot_be_written(tmp_path):
    from vitrt.benchmarks.first_hour import FirstHourConfig
    from vitrt.compiler.options import check_result_paths

    (tmp_path / "report.md").mkdir()  # OUT.json is fine, OUT.md is a directory
    with pytest.raises(OutputError, match=r"--out '.*report.md' is a directory"):
        check_result_paths(FirstHourConfig(out=tmp_path / "report"))
    check_result_paths(FirstHourConfig(out=tmp_path / "other"))


def test_python_keywords_are_typed_as_their_flags_would_be(tmp_path):
    """A bool is neither an int nor a number; numpy scalars become Python ones; a path given for a str option is
    its string; the plain types pass as they are."""
    from vitrt.compiler.options import from_options
    from vitrt.pipeline.config import CompileConfig

    for options, message in ((dict(batch=True), "batch takes an int, got True"),
                             (dict(eta=False), "eta takes a number, got False")):
        with pytest.raises(OptionError, match=message):
            from_options(CompileConfig, options)
    config = from_options(CompileConfig, dict(batch=np.int64(4), eta=np.float32(0.25), data=tmp_path / "images",
                                              prune=1))
    assert type(config.target.batch) is int and config.target.batch == 4
    assert type(config.prune.eta) is float and config.prune.eta == 0.25
    assert config.prune.data == str(tmp_path / "images") and config.prune.fraction == 1


def test_replace_options_refuses_an_unknown_name_and_as_dict_writes_paths_as_strings(tmp_path):
    from vitrt.compiler.options import as_dict, replace_options
    from vitrt.pipeline.config import CompileConfig

    config = CompileConfig(out=tmp_path / "out")
    with pytest.raises(OptionError, match="unknown option 'bacth'; valid options: "):
        replace_options(config, bacth=8)
    assert replace_options(config, batch=8).target.batch == 8 and config.target.batch == 1
    values = as_dict(config)
    assert values["out"] == str(tmp_path / "out") and type(values["out"]) is str and values["batch"] == 1


def test_api_wording_keeps_negative_and_decimal_numbers_as_keyword_values():
    from vitrt.compiler.options import api_wording
    from vitrt.pipeline.config import CompileConfig

    assert api_wording("got --seed -1 and --eta 0.5", CompileConfig) == "got seed=-1 and eta=0.5"
    assert api_wording("pass --force to replace it", CompileConfig) == "pass force=True to replace it"
    # a dash inside a word starts no flag: "re-o ordering" is no -o (out)
    assert api_wording("the re-o ordering of a non-batch run", CompileConfig) == "the re-o ordering of a non-batch run"


def test_only_an_existing_path_counts_as_an_input_a_result_must_not_replace(tmp_path, monkeypatch):
    """``bench MODEL --json deit_tiny_patch16_224`` writes a new file named like the model: the model name is no file
    (an option value that names nothing on disk is no input), while a real input file of that name is kept."""
    from vitrt.cli.bench import BenchConfig
    from vitrt.compiler.options import check_result_paths

    monkeypatch.chdir(tmp_path)
    check_result_paths(BenchConfig(target="deit_tiny_patch16_224", json=Path("deit_tiny_patch16_224")))
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(OutputError, match="--json 'model.onnx' is the input"):
        check_result_paths(BenchConfig(target="model.onnx", json=Path("model.onnx")))


# --- output.py ---------------------------------------------------------------------------------------------------

def test_an_out_that_is_a_file_is_refused_and_only_a_non_empty_foreign_directory_is(tmp_path):
    from vitrt.compiler.output import check_output_dir, refuse_foreign_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", force=True)
    (tmp_path / "empty").mkdir()
    refuse_foreign_dir(tmp_path / "empty", False, command="optimize", what="search to resume")
    refuse_foreign_dir(tmp_path / "missing", False, command="optimize", what="search to resume")
    (tmp_path / "empty" / "mine").write_text("x")
    with pytest.raises(OutputError, match="is not empty and holds no search to resume"):
        refuse_foreign_dir(tmp_path / "empty", False, command="optimize", what="search to resume")
    refuse_foreign_dir(tmp_path / "empty", True, command="optimize", what="search to resume")


def test_the_artifact_of_an_out_is_named_or_its_absence_said(tmp_path):
    from vitrt.compiler.output import artifact_in

    with pytest.raises(VitrtError, match=r"holds no engine: it was compiled with --no-build; build it on the GPU "
                                         r"machine \(trtexec --onnx=model.onnx --stronglyTyped\)"):
        artifact_in(tmp_path, {"artifact": None, "precision": "fp16"})
    with pytest.raises(VitrtError, match="model.plan' is missing: compile OUT again"):
        artifact_in(tmp_path, {"artifact": "model.plan"})
    (tmp_path / "model.plan").mkdir()  # a directory is no artifact
    with pytest.raises(VitrtError, match="is missing"):
        artifact_in(tmp_path, {"artifact": "model.plan"})
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert artifact_in(tmp_path, {"artifact": "model.onnx"}) == tmp_path / "model.onnx"


def test_an_out_whose_nearest_ancestor_is_not_writable_is_refused_for_a_user_without_the_right(tmp_path):
    """os.access answers for the real user: under root the test drops to 'nobody' in a forked child (the check is
    what stops a non-root run before its work; root may write anywhere)."""
    from vitrt.compiler.output import check_writable_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # let 'nobody' reach the directory (pytest's base is 0700)
        if parent != parent.parent and parent.stat().st_uid == os.geteuid() and not parent.stat().st_mode & 0o001:
            parent.chmod(parent.stat().st_mode | 0o001)
    if os.geteuid() != 0:
        with pytest.raises(OutputError, match="'.*locked' is not writable"):
            check_writable_dir(locked / "new" / "out")
        return
    pid = os.fork()
    if pid == 0:  # the child: nobody's rights, the answer in the exit status
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            check_writable_dir(locked / "new" / "out")
            code = 1
        except OutputError as exc:
            code = 0 if "is not writable" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# --- twin.py -----------------------------------------------------------------------------------------------------

def test_the_distillation_features_are_the_embedding_every_block_and_all_normalised_prefix_tokens():
    import torch

    from vitrt.compiler.models import canonicalize

    model = tiny_vit(distilled=True, depth=2)
    twin = canonicalize(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, features = twin.forward_with_features(images)
        reference = model(images)
    assert [tuple(f.shape) for f in features] == [(2, 18, 64)] * 3 + [(2, 2, 64)]  # cls and dist tokens
    assert torch.allclose(logits, twin(images)) and torch.allclose(logits, reference, atol=1e-4)
    assert torch.allclose(features[-1], twin.norm(features[-2])[:, :2])


# --- defects the audit found (each test failed before its fix) ----------------------------------------------------

def test_module_main_answers_a_result_path_it_cannot_write_in_one_line_and_exit_2(tmp_path, capsys):
    """``module_main`` promises "the CLI's error handling (one line and exit 2 for a VitrtError)", but it builds the
    config (``from_args``, which checks the ``writes`` paths) outside its ``try``: ``python -m
    vitrt.benchmarks.first_hour -o missing/dir/out`` ended in an OutputError traceback instead."""
    from vitrt.benchmarks.first_hour import FirstHourConfig
    from vitrt.compiler.options import module_main

    ran = []
    code = module_main(FirstHourConfig, ran.append, ["-o", str(tmp_path / "missing" / "out")])
    assert code == 2 and ran == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out ") and "does not exist" in err[0]


def test_a_device_the_trt_backend_cannot_run_on_is_refused_before_any_work():
    """``--device`` is for ``--backend torch`` (its help: "ort runs on the CPU, trt on the current GPU"), and
    ``validate`` refuses ``--backend ort --device cuda`` before any work — but accepts ``--backend trt --device cpu``:
    a ``--no-build`` compile finishes with the device silently dropped, and a build is refused only when
    ``get_backend`` is reached, after the lowering and every pass."""
    from vitrt.compiler.target import TargetConfig

    with pytest.raises(OptionError, match="--backend trt runs on the current GPU; --device cpu needs --backend torch"):
        TargetConfig(backend="trt", device="cpu", no_build=True).validate()
    TargetConfig(backend="trt", device="cuda", no_build=True).validate()
    with pytest.raises(OptionError, match="--device cuda needs --backend torch"):
        TargetConfig(backend="ort", device="cuda").validate()


def test_options_changed_on_a_given_config_are_checked_like_keywords(tmp_path):
    """``from_options`` checks each keyword's type and choices ("precision='int9' compiled fp32 in silence" before),
    but ``replace_options`` — what ``vitrt.compile(model, out, config=config, **options)`` and
    ``CompileConfig.replace`` use — checked only the names: with a config given, ``precision='int9'`` compiled,
    ``verify='no'`` verified and ``batch='2'`` died in a TypeError deep inside the compile."""
    from vitrt.compiler.options import replace_options
    from vitrt.pipeline.config import CompileConfig

    config = CompileConfig(out=tmp_path / "out")
    for options, message in ((dict(precision="int9"), "precision='int9' is not one of 'fp32'"),
                             (dict(batch="2"), "batch takes an int, got '2'"),
                             (dict(verify="no"), "verify takes a bool, got 'no'")):
        with pytest.raises(OptionError, match=message):
            replace_options(config, **options)
    changed = replace_options(config, batch=np.int64(2), model=None)
    assert type(changed.target.batch) is int and changed.target.batch == 2 and changed.model is None
