"""Tests added by a second mutation audit of vitrt.compiler's core modules (options, output, pass_manager, target):
each pins a behaviour that a one-line mutation could change without the existing tests (tests/test_output.py,
tests/test_pass_manager.py, tests/test_compiler_core_mutations.py) noticing. Real configs, real files, real passes
on a tiny lowered ViT: seconds each."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

from vitrt.compiler.errors import OptionError, OutputError, VitrtError


# --- target.py ---------------------------------------------------------------------------------------------------

def test_every_quantized_precision_carries_fp16_activations_on_tensorrt_alone():
    """fp8 is a Q/DQ precision like int8 (TensorRT graphs carry FP16 between the quantized layers); ONNX Runtime and
    the torch backend keep FP32 activations for every quantized precision."""
    from vitrt.compiler.target import TargetConfig

    for precision in ("int8", "fp8", "int4w"):
        assert TargetConfig(precision=precision, backend="trt").activation_dtype == "fp16"
        assert TargetConfig(precision=precision, backend="ort").activation_dtype == "fp32"
        assert TargetConfig(precision=precision, backend="torch").activation_dtype == "fp32"
    assert TargetConfig(precision="bf16", backend="torch").activation_dtype == "bf16"


def test_a_batch_range_needs_a_dynamic_batch_and_must_contain_the_batch():
    from vitrt.compiler.target import TargetConfig

    with pytest.raises(OptionError, match="--min-batch / --max-batch set the dynamic batch range: add --dynamic-batch"):
        TargetConfig(min_batch=2).validate()
    with pytest.raises(OptionError, match=r"1 <= --min-batch <= --batch <= --max-batch, got 1 / 8 / 4"):
        TargetConfig(backend="trt", dynamic_batch=True, batch=8, max_batch=4).validate()
    TargetConfig(backend="trt", dynamic_batch=True, batch=8, max_batch=8).validate()


def test_cuda_graphs_run_on_tensorrt_and_on_torch_only_with_a_cuda_device():
    from vitrt.compiler.target import TargetConfig

    TargetConfig(backend="trt", cuda_graph=True).validate()
    TargetConfig(backend="trt", device="cuda:0", no_build=True).validate()  # a numbered GPU is still the GPU
    TargetConfig(backend="torch", device="cuda:local", cuda_graph=True).validate()
    with pytest.raises(OptionError, match="--cuda-graph needs a GPU"):
        TargetConfig(backend="torch", cuda_graph=True).validate()  # no --device: the CPU


def test_validate_refuses_bf16_on_onnx_runtime_itself():
    from vitrt.compiler.target import TargetConfig

    with pytest.raises(OptionError, match="--precision bf16 needs --backend trt or torch"):
        TargetConfig(precision="bf16").validate()
    TargetConfig(precision="bf16", backend="trt").validate()


def test_build_options_carry_every_target_setting_and_default_to_the_cpu(tmp_path):
    from vitrt.compiler.target import TargetConfig

    plain = TargetConfig().build_options()
    assert plain.device == "cpu" and plain.batch_profile is None and plain.threads is None
    assert not plain.cuda_graph and plain.torch_compile == "off" and not plain.sparse_weights
    options = TargetConfig(backend="torch", device="cuda:1", torch_compile="max-autotune", cuda_graph=True,
                           threads=3, dynamic_batch=True, batch=4,
                           timing_cache=tmp_path / "cache").build_options(sparse_weights=True)
    assert (options.device, options.torch_compile, options.cuda_graph, options.threads) == \
        ("cuda:1", "max-autotune", True, 3)
    assert options.batch_profile == (1, 4, 32) and options.timing_cache == tmp_path / "cache"
    assert TargetConfig(backend="trt", dynamic_batch=True, batch=4, max_batch=16).build_options().batch_profile == \
        (1, 4, 16)
    assert options.sparse_weights


# --- pass_manager.py ---------------------------------------------------------------------------------------------

def _scale_pass():
    """A function-changing pass that doubles fc2's weight in ONNX and (as a new twin) in torch."""
    import copy

    from vitrt.compiler.pass_manager import Pass, PassResult

    class ScaleFc2(Pass):
        name = "scale_fc2"
        changes_function = True

        def run(self, view, ctx):
            weight = view.block(0).linear("mlp.fc2").weight
            weight.values = weight.values * 2
            return PassResult(view, True, {"scaled": 1})

        def apply_to_twin(self, twin):
            twin = copy.deepcopy(twin)
            twin.blocks[0].mlp.fc2.weight.data *= 2
            return twin

    return ScaleFc2


def _plain_pass(name, **attributes):
    from vitrt.compiler.pass_manager import Pass, PassResult

    def run(self, view, ctx):
        return PassResult(view, False)

    return type(name.title(), (Pass,), {"name": name, "run": run, **attributes})


def test_one_function_changing_pass_makes_the_schedule_change_the_function_and_the_twin_follows(lowered):
    from vitrt.compiler.pass_manager import PassManager

    twin, fresh = lowered
    ScaleFc2, Noop = _scale_pass(), _plain_pass("noop")
    result = PassManager([ScaleFc2(), Noop()]).run(fresh(), twin=twin)
    assert [r.changes_function for r in result.records] == [True, False] and result.changes_function
    assert result.twin is not twin
    assert (result.twin.blocks[0].mlp.fc2.weight == 2 * twin.blocks[0].mlp.fc2.weight).all()


def test_without_a_twin_a_function_changing_pass_runs_and_no_twin_is_made(lowered):
    from vitrt.compiler.pass_manager import PassManager

    result = PassManager([_scale_pass()()]).run(lowered[1]())
    assert result.twin is None and result.records[0].changes_function and result.records[0].stats == {"scaled": 1}


def test_run_after_constrains_only_passes_that_are_both_scheduled():
    """``run_after`` names passes that must come earlier *when both are scheduled*: one absent is no error."""
    from vitrt.compiler.pass_manager import PassManager

    After = _plain_pass("after_cleanup", run_after=("cleanup",))
    PassManager([After()])
    with pytest.raises(VitrtError, match="'after_cleanup' must run after 'cleanup'"):
        PassManager([After(), _plain_pass("cleanup")()])


def test_progress_hears_each_pass_name_before_it_runs(lowered):
    from vitrt.compiler.pass_manager import PassManager

    heard = []
    PassManager([_plain_pass("first")(), _plain_pass("second")()]).run(lowered[1](), progress=heard.append)
    assert heard == ["first", "second"]


def test_a_pass_requires_and_preserves_only_the_canonical_naming_by_default():
    """The defaults of the contract: a pass requires CANONICAL and preserves CANONICAL alone (so a later pass that
    needs TOPOSORTED must follow a pass that ensures it), and the schedule's final properties say so."""
    from vitrt.compiler.pass_manager import CANONICAL, LOWERED_PROPERTIES, TOPOSORTED, PassManager

    Default = _plain_pass("default")
    Lossy = _plain_pass("lossy", preserves=frozenset())
    NeedsSorted = _plain_pass("needs_sorted", requires=frozenset({CANONICAL, TOPOSORTED}))
    assert PassManager([]).final_properties == LOWERED_PROPERTIES
    assert PassManager([Default()]).final_properties == {CANONICAL}
    with pytest.raises(VitrtError, match=r"pass 'default' requires \['canonical'\]"):
        PassManager([Lossy(), Default()])
    with pytest.raises(VitrtError, match=r"pass 'needs_sorted' requires \['toposorted'\]"):
        PassManager([Default(), NeedsSorted()])
    PassManager([NeedsSorted(), Default()])


def test_a_tensor_without_a_dtype_has_no_inferred_shapes_and_problems_come_in_property_order(lowered):
    import onnx_graphsurgeon as gs

    from vitrt.compiler.pass_manager import SHAPES_INFERRED, TOPOSORTED, check_properties

    view = lowered[1]()
    tensor = next(t for t in view.graph.tensors().values() if isinstance(t, gs.Variable) and t.shape is not None
                  and t not in view.graph.inputs)
    tensor.dtype = None
    view.graph.nodes.insert(0, view.graph.nodes.pop())
    problems = check_properties(view, {TOPOSORTED, SHAPES_INFERRED})
    assert len(problems) == 2
    assert problems[0] == f"shapes_inferred: tensor '{tensor.name}' has no inferred dtype or shape"
    assert problems[1].startswith("toposorted: node ")


def test_a_pass_record_rounds_its_seconds_to_a_tenth_of_a_millisecond():
    from vitrt.compiler.pass_manager import PassRecord

    assert PassRecord("p", seconds=0.123456, modified=True).to_dict() == {
        "name": "p", "seconds": 0.1235, "modified": True, "changes_function": False, "stats": {}}


# --- options.py --------------------------------------------------------------------------------------------------

def _compile_parser(**kwargs):
    from vitrt.compiler.options import add_arguments
    from vitrt.pipeline.config import CompileConfig

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, CompileConfig, **kwargs)
    return parser


def test_the_parser_types_and_checks_values_and_leaves_unset_flags_none():
    """argparse types (``--batch 4`` is an int) and checks choices; a flag not given — a boolean too — is None, not
    False: ``vitrt compile --recipe R`` passes on only the flags given, so a False would override the recipe's."""
    parser = _compile_parser()
    args = parser.parse_args(["m", "--batch", "4"])
    assert args.batch == 4 and type(args.batch) is int and args.model == "m"
    assert args.verify is None and args.force is None and args.precision is None
    assert parser.parse_args(["m", "--verify"]).verify is True
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        parser.parse_args(["m", "--precision", "int9"])


def test_a_skipped_option_gets_no_flag():
    parser = _compile_parser(skip=("batch",))
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        parser.parse_args(["m", "--batch", "2"])
    assert not hasattr(parser.parse_args(["m"]), "batch")


def test_from_args_keeps_a_zero_and_the_caller_s_overrides(tmp_path):
    """A value that is falsy but given (``--batch 0``) is kept, so that validate refuses it instead of compiling
    batch 1; overrides (``prune-plan`` reads -o itself: ``out=None``) replace what was parsed."""
    from vitrt.compiler.options import from_args
    from vitrt.pipeline.config import CompileConfig

    args = _compile_parser().parse_args(["m", "--batch", "0", "-o", str(tmp_path / "plan.json")])
    config = from_args(CompileConfig, args)
    assert config.target.batch == 0 and config.out == tmp_path / "plan.json"
    with pytest.raises(OptionError, match="--batch must be >= 1, got 0"):
        config.target.validate()
    assert from_args(CompileConfig, args, out=None).out is None


def test_a_python_keyword_that_is_falsy_is_still_set():
    from vitrt.compiler.options import from_options
    from vitrt.pipeline.config import CompileConfig

    assert from_options(CompileConfig, dict(batch=0)).target.batch == 0


def test_an_unknown_keyword_gets_the_closest_name_and_an_unknown_leaf_is_a_key_error():
    from vitrt.compiler.options import from_options, leaf
    from vitrt.pipeline.config import CompileConfig

    with pytest.raises(OptionError, match=r"unknown option 'bacth' \(did you mean 'batch'\?\); valid options: "):
        from_options(CompileConfig, dict(bacth=8))
    with pytest.raises(KeyError):
        leaf(CompileConfig, "bacth")


from dataclasses import dataclass as _dataclass, field as _field  # noqa: E402

from vitrt.compiler.options import option as _option, section as _section  # noqa: E402


@_dataclass(frozen=True)
class _Inner:
    batch: int = _option(1, "the batch", type=int)


@_dataclass(frozen=True)
class _Twice:
    inner: _Inner = _section(_Inner)
    size: int = _option(2, "a size", flag="--batch", type=int)


@_dataclass(frozen=True)
class _WithState:
    inner: _Inner = _section(_Inner)
    cache: dict = _field(default_factory=dict)  # plain state, no help: not an option


def test_an_option_name_defined_twice_is_refused_and_a_field_without_help_is_no_option():
    from vitrt.compiler.options import leaves

    with pytest.raises(TypeError, match=r"_Twice: option name\(s\) \['batch'\] are defined twice"):
        leaves(_Twice)
    assert [(leaf_.name, leaf_.path) for leaf_ in leaves(_WithState)] == [("batch", ("inner", "batch"))]


def test_the_recorded_command_line_is_the_program_and_its_quoted_arguments(monkeypatch):
    from vitrt.compiler.options import command_line

    monkeypatch.setattr(sys, "argv", ["/usr/bin/vitrt-main", "compile", "my model", "-o", "out"])
    assert command_line() == "vitrt compile 'my model' -o out"
    assert command_line("python -m vitrt.benchmarks.x") == "python -m vitrt.benchmarks.x compile 'my model' -o out"


def test_module_main_answers_0_when_the_command_returns_nothing(tmp_path):
    from vitrt.benchmarks.first_hour import FirstHourConfig
    from vitrt.compiler.options import module_main

    ran = []
    assert module_main(FirstHourConfig, ran.append, ["-o", str(tmp_path / "out")]) == 0
    assert ran[0].out == tmp_path / "out"


def test_api_wording_keeps_unknown_flags_and_stops_a_quoted_command_at_a_semicolon():
    from vitrt.compiler.options import api_wording
    from vitrt.pipeline.config import CompileConfig

    assert api_wording("pass --no-such-flag or --lut LUT", CompileConfig) == "pass --no-such-flag or lut=LUT"
    assert api_wording("build it (vitrt lut build --backend ort; then pass --lut LUT and --force)", CompileConfig) \
        == "build it (vitrt lut build --backend ort; then pass lut=LUT and force=True)"


# --- output.py ---------------------------------------------------------------------------------------------------

def test_an_input_named_like_a_new_out_is_no_file_inside_it(tmp_path, monkeypatch):
    """Only a path that exists can lie inside OUT: ``--data synthetic -o synthetic --force`` (a set's name, the OUT
    not made yet) compiles, while a real file inside the OUT --force would replace is refused."""
    from vitrt.compiler.output import check_outside_out
    from vitrt.pipeline.config import CompileConfig

    monkeypatch.chdir(tmp_path)
    check_outside_out("--data", "synthetic", tmp_path / "synthetic")
    check_outside_out("--lut", "runs/lut.json", tmp_path / "runs")  # a missing file: the command says so itself
    from vitrt.compiler.options import from_options

    from_options(CompileConfig, dict(model="digits", out="synthetic", force=True, data="synthetic")).validate()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "lut.json").write_text("{}")
    with pytest.raises(OutputError, match="--lut 'runs/lut.json' lies inside"):
        check_outside_out("--lut", "runs/lut.json", tmp_path / "runs")


def test_write_json_keeps_the_key_order_it_was_given_and_leaves_no_temporary_file(tmp_path):
    """Manifests and results read top-down in the order they were built (the command first, the details last)."""
    import json

    from vitrt.compiler.output import write_json

    write_json(tmp_path / "r.json", {"command": "vitrt bench", "artifact": "model.onnx", "b": [1, 2]})
    text = (tmp_path / "r.json").read_text()
    assert list(json.loads(text)) == ["command", "artifact", "b"] and text.endswith("}\n")
    assert text.startswith('{\n  "command": "vitrt bench",\n') and os.listdir(tmp_path) == ["r.json"]


def test_parents_made_for_an_out_are_removed_when_the_staging_directory_or_a_parent_cannot_be_made(tmp_path):
    """Whatever step fails — the hidden staging directory (its name, ``.OUT.staging-XXXXXXXX``, is longer than the
    file system allows) or a parent of OUT (one component too long) — the run leaves none of the parents it made."""
    from vitrt.compiler.output import atomic_output_dir

    with pytest.raises(OutputError, match="cannot write into '.*b': File name too long"):
        with atomic_output_dir(tmp_path / "a" / "b" / ("x" * 250), force=False):
            pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="cannot create the output's parent directory"):
        with atomic_output_dir(tmp_path / "c" / ("y" * 256) / "out", force=False):
            pass
    assert list(tmp_path.iterdir()) == []


def test_every_item_of_a_list_or_tuple_option_is_an_input_a_result_must_not_replace(tmp_path):
    """``vitrt lut merge A B -o B`` would write the merged table over a part it reads — whether the parts arrive as
    argparse's list or as a tuple from Python."""
    from vitrt.cli.lut import LutMergeConfig
    from vitrt.compiler.options import check_result_paths

    parts = [tmp_path / "lut.part0-of-2.json", tmp_path / "lut.part1-of-2.json"]
    for part in parts:
        part.write_text("{}")
    for given in (parts, tuple(parts)):
        with pytest.raises(OutputError, match=r"--out '.*part1-of-2.json' is the input"):
            check_result_paths(LutMergeConfig(parts=given, out=parts[1]))
    check_result_paths(LutMergeConfig(parts=tuple(parts), out=tmp_path / "lut.json"))


def test_a_mark_above_the_input_directory_does_not_decide_what_a_result_inside_it_overwrites(tmp_path):
    """``written_entry`` looks at the marks between the target and the input directory only: with OUT/twin as the
    input, OUT's mark (which lists ``twin``) does not make a new file in it an entry, and an existing one still is."""
    from vitrt.compiler.options import written_entry
    from vitrt.compiler.output import OUTPUT_MARKER

    out = tmp_path / "OUT"
    (out / "twin").mkdir(parents=True)
    (out / OUTPUT_MARKER).write_text("# header\nmanifest.json\ntwin\n")
    (out / "twin" / "record.json").write_text("{}")
    assert written_entry(out / "twin", out / "twin" / "bench.json") is None
    assert written_entry(out / "twin", out / "twin" / "record.json") == "record.json"


def test_a_path_option_takes_a_string_or_a_path_like_and_nothing_else(tmp_path):
    from vitrt.compiler.options import from_options
    from vitrt.pipeline.config import CompileConfig

    config = from_options(CompileConfig, dict(out=str(tmp_path / "out"), checkpoint=tmp_path / "w.pt"))
    assert str(config.out) == str(tmp_path / "out") and config.checkpoint == tmp_path / "w.pt"
    with pytest.raises(OptionError, match="checkpoint takes a path, got 3"):
        from_options(CompileConfig, dict(checkpoint=3))


def test_a_single_symbolic_dimension_is_allowed_only_in_the_batch_position(lowered):
    """A static-batch graph whose one symbolic dimension is the token count has no inferred shapes."""
    import onnx_graphsurgeon as gs

    from vitrt.compiler.pass_manager import SHAPES_INFERRED, check_properties

    view = lowered[1]()
    assert check_properties(view, {SHAPES_INFERRED}) == []
    tensor = next(t for t in view.graph.tensors().values() if isinstance(t, gs.Variable) and t.shape
                  and len(t.shape) == 3)
    tensor.shape = [tensor.shape[0], "tokens", tensor.shape[2]]
    assert check_properties(view, {SHAPES_INFERRED}) == [
        f"shapes_inferred: tensor '{tensor.name}' has a non-static shape {list(tensor.shape)}"]


def test_the_view_is_reindexed_after_every_pass_so_later_passes_find_new_nodes(lowered):
    import onnx_graphsurgeon as gs

    from vitrt.compiler.pass_manager import PassManager, PassResult

    AddsNode = _plain_pass("adds_node")
    found = []

    def add(self, view, ctx):
        source = view.graph.outputs[0]
        view.graph.nodes.append(gs.Node("Identity", name="extra.identity", inputs=[source],
                                        outputs=[gs.Variable("extra.out", dtype=source.dtype, shape=source.shape)]))
        return PassResult(view, True)

    def look(self, view, ctx):
        found.append(view.has_node("extra.identity"))
        return PassResult(view, False)

    AddsNode.run = add
    Looks = _plain_pass("looks", run=look)
    result = PassManager([AddsNode(), Looks()]).run(lowered[1]())
    assert found == [True] and result.view.has_node("extra.identity")


# --- a defect found by this audit (fixed with these tests) -------------------------------------------------------

@pytest.mark.parametrize("prefix", [".", "/", "..", "results/.."])
def test_a_result_prefix_that_names_no_file_is_refused_in_one_line(tmp_path, monkeypatch, prefix):
    """``-o OUT`` of a result prefix (OUT.json, OUT.md) is checked before the run (``from_args`` ->
    ``check_result_paths``), but ``result_file`` builds the names with ``Path.with_name``, which raises a ValueError
    for a path with no name: ``python -m vitrt.benchmarks.first_hour -o .`` (and ``vitrt nvit-table A B -o .``) end
    in a ValueError traceback instead of a one-line error; ``-o ..`` wrote ``...json`` into the current directory."""
    from vitrt.benchmarks.first_hour import FirstHourConfig
    from vitrt.compiler.options import check_result_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(OutputError, match="names no file"):
        check_result_paths(FirstHourConfig(out=Path(prefix)))


def test_module_main_answers_a_nameless_result_prefix_with_exit_2(tmp_path, monkeypatch, capsys):
    from vitrt.benchmarks.first_hour import FirstHourConfig
    from vitrt.compiler.options import module_main

    monkeypatch.chdir(tmp_path)
    ran = []
    assert module_main(FirstHourConfig, ran.append, ["-o", "."]) == 2 and ran == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
