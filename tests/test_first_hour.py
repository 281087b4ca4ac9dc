"""A deployment engineer's first hour: every bad input is refused with one line and exit 2, leaves nothing on
disk, and the option / path / schedule errors come before torch is even imported (what makes them fast; the
timings are recorded by ``python -m vitrt.benchmarks.first_hour`` in benchmarks/results/first_hour.md)."""

import json
import subprocess
import sys

import pytest

from vitrt.benchmarks.first_hour import CASES, CHECKPOINT, OPTION, START, run_case

PROBE = """
import json, sys
from vitrt.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "timm": "timm" in sys.modules}))
"""


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == OPTION], ids=lambda c: c.name)
def test_option_errors_come_before_torch_is_imported(case, tmp_path):
    if case.setup:
        subprocess.run([sys.executable, "-c", case.setup], cwd=tmp_path, check=True)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["code"] == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and case.expect in errors[0], result.stderr
    assert not probe["torch"] and not probe["timm"], f"{case.name}: torch imported before the error"


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == START], ids=lambda c: c.name)
def test_help_and_version_start_without_torch(case, tmp_path):
    result = subprocess.run([sys.executable, "-c", PROBE, *case.argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe == {"code": 0, "torch": False, "timm": False}, result.stderr
    assert result.stdout.startswith(case.expect)
    row = run_case(case)
    assert row["exit"] == 0 and row["one_line"] and not row["traceback"] and row["left_behind"] == [], row


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == CHECKPOINT],
                         ids=lambda c: c.name)
def test_model_and_checkpoint_errors_are_one_line_and_leave_nothing(case):
    if "--pretrained" in case.argv:
        from vitrt.compiler.errors import VitrtError
        from vitrt.compiler.models import check_hub_reachable

        try:  # the refusal is what an offline machine sees; where the hub answers, --pretrained downloads instead
            check_hub_reachable()
        except VitrtError:
            pass
        else:
            pytest.skip("the model hub is reachable from here: the offline refusal cannot be observed")
    row = run_case(case)
    assert row["exit"] == 2 and row["one_line"] and not row["traceback"], row
    assert row["left_behind"] == [], row


def test_an_adjusted_schedule_is_announced_and_recorded(tmp_path):
    """--tome 1000 is capped per block: said in one line and recorded under manifest['adjustments']."""
    from vitrt.cli import main

    out = tmp_path / "out"
    assert main(["compile", "deit_tiny_patch16_224", "--img-size", "64", "--tome", "1000", "-o", str(out)]) == 0
    notes = json.loads((out / "manifest.json").read_text())["adjustments"]
    assert any(n["stage"] == "tome" and "capped" in n["note"] and "1000 -> 8" in n["note"] for n in notes)


def test_the_python_api_words_errors_for_python(tmp_path):
    import vitrt
    from vitrt.compiler.errors import OptionError, OutputError

    with pytest.raises(OptionError, match="^batch must be >= 1"):
        vitrt.compile("deit_tiny_patch16_224", tmp_path / "a", batch=0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep").write_text("mine")
    with pytest.raises(OutputError, match="pass force=True to replace it"):
        vitrt.compile("deit_tiny_patch16_224", tmp_path / "b")
    with pytest.raises(vitrt.VitrtError, match="unknown option 'bacth' \\(did you mean 'batch'\\?\\); valid options: "):
        vitrt.compile("deit_tiny_patch16_224", tmp_path / "c", bacth=8)
    # a keyword with choices is checked as argparse checks its flag (precision='int9' compiled fp32 in silence)
    with pytest.raises(vitrt.VitrtError, match="precision='int9' is not one of 'fp32'"):
        vitrt.compile("deit_tiny_patch16_224", tmp_path / "d", precision="int9")
    # keyword types are checked as argparse converts flags: a str, a float or a list where an int, a bool or a str
    # is wanted is one line, not a TypeError from deep inside (or, for force="no", a truthy value)
    for options, message in ((dict(batch="8"), "batch takes an int, got '8'"), (dict(seed=1.5), "seed takes an int"),
                             (dict(quant_exclude=["head"]), "quant_exclude takes a str"),
                             (dict(verify="no"), "verify takes a bool")):
        with pytest.raises(OptionError, match=message):
            vitrt.compile("deit_tiny_patch16_224", tmp_path / "t", **options)
    # a model object vitrt would copy wrongly is refused in one line: another dtype (the twin is fp32; precision=
    # chooses the engine's), no values (the meta device), an image size timm crops to the patch grid
    from conftest import tiny_vit
    from vitrt.compiler.errors import UnsupportedModelError

    with pytest.raises(OptionError, match="model must be a timm model name, a timm ViT module or a CanonicalViT, "
                                          "got int"):
        vitrt.compile(42, tmp_path / "n")
    for kwargs, message in ((dict(out=123), "out must be a path"), (dict(config="x"), "config must be a CompileConfig"),
                            (dict(progress="x"), "progress must be a vitrt Progress"), (dict(name=123), "name must be")):
        with pytest.raises(OptionError, match=message):  # TypeError / AttributeError before, or 123 in the manifest
            vitrt.compile(tiny_vit(), **{"out": tmp_path / "n", **kwargs})
    for model, message in ((tiny_vit().half(), "parameters are torch.float16: pass it in float32"),
                           (tiny_vit().to("meta"), "on the meta device"),
                           (tiny_vit(img_size=30, patch_size=8), r"image size \(30, 30\) is not a multiple")):
        with pytest.raises(UnsupportedModelError, match=message):
            vitrt.compile(model, tmp_path / "m")
    # a head vitrt would lower as one Linear, and hooks lowering cannot see, are refused, not compiled differently
    import torch

    custom = tiny_vit()
    custom.head = torch.nn.Sequential(torch.nn.Linear(custom.embed_dim, 8), torch.nn.GELU(), torch.nn.Linear(8, 10))
    hooked = tiny_vit()
    hooked.blocks[1].register_forward_hook(lambda module, args, output: output * 2)
    for model, message in ((custom, "head is Sequential \\(only nn.Linear\\)"),
                           (hooked, "forward hooks on blocks.1 \\(remove them\\)")):
        with pytest.raises(UnsupportedModelError, match=message):
            vitrt.compile(model, tmp_path / "m")
    # flags with a value read as keywords; a vitrt command quoted in the message keeps its flags
    with pytest.raises(OptionError, match=r"^prune needs lut=LUT \(build one with: vitrt lut build --backend ort"):
        vitrt.compile("deit_tiny_patch16_224", tmp_path / "e", prune=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    from vitrt.compiler.options import api_wording
    from vitrt.pipeline.config import CompileConfig

    assert api_wording("use --precision fp16 with --backend ort, or pass --threads 1", CompileConfig) == \
        "use precision='fp16' with backend='ort', or pass threads=1"  # keyword syntax a user can paste
    # an error class built from more than a message is raised as itself, reworded (it was a TypeError)
    from vitrt.transforms.tome.solve import UnreachableTarget

    with pytest.raises(UnreachableTarget, match=r"dense flops; raise the fraction or lower dfe_skip") as info:
        vitrt.compile("digits", tmp_path / "f", tome_flops=0.05, quiet=True)
    assert 0 < info.value.least < 1 and not (tmp_path / "f").exists()


def test_the_python_api_takes_digits_by_name_and_refuses_name_options_for_a_module(tmp_path, digits_reference):
    import torch

    import vitrt
    from vitrt.compiler.errors import OptionError

    result = vitrt.compile("digits-reference", tmp_path / "named", quiet=True)  # any spelling, as the CLI
    assert result.manifest["model"] == "digits" and result.manifest["spec_after"]["img"] == 32
    with pytest.raises(OptionError, match="^img_size does not apply to digits"):
        vitrt.compile("digits", tmp_path / "sized", img_size=64)
    checkpoint = tmp_path / "ck.pt"
    torch.save(digits_reference[0].state_dict(), checkpoint)
    with pytest.raises(OptionError, match="^checkpoint / img_size: for a model name only; a model object is compiled "
                                          "as it is"):  # silently ignored before
        vitrt.compile(digits_reference[0], tmp_path / "module", checkpoint=checkpoint, img_size=64)
    with pytest.raises(OptionError, match="^pretrained=True: for a model name only"):
        vitrt.compile(digits_reference[0], tmp_path / "module", pretrained=True)
    # a config naming a model does not label a module passed beside it
    from vitrt.compiler.options import from_options
    from vitrt.pipeline.config import CompileConfig

    config = from_options(CompileConfig, {"model": "deit_base_patch16_224"})
    labelled = vitrt.compile(digits_reference[0], tmp_path / "named" / "labelled", config=config, quiet=True)
    assert labelled.manifest["model"] != "deit_base_patch16_224"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "named"]


def test_a_default_int8_compile_prints_only_vitrt_lines(tmp_path):
    """No third-party noise on stdout or stderr in a normal (not --quiet) run: every stderr line is vitrt's
    progress (tqdm bars included, they carry the [vitrt] prefix), stdout is the summary."""
    result = subprocess.run([sys.executable, "-m", "vitrt.cli", "compile", "deit_tiny_patch16_224", "--img-size", "32",
                             "--precision", "int8", "--calib-data", "synthetic", "--calib-images", "16", "--verify",
                             "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    stderr = [line for chunk in result.stderr.split("\r") for line in chunk.splitlines() if line.strip()]
    foreign = [line for line in stderr if not line.startswith("[vitrt]")]
    assert stderr and foreign == []
    summary = {line.split()[0] for line in result.stdout.splitlines()}
    assert summary <= {"model", "input", "params", "GFLOPs/image", "max", "latency", "speedup"}


def test_timm_registry_cache_is_per_version_and_read_back(tmp_path, monkeypatch):
    from importlib.metadata import version

    from vitrt.compiler.errors import UnsupportedModelError
    from vitrt.compiler.known_models import check_model_name, timm_modules

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    modules = timm_modules()  # a miss: read from timm's sources and written
    import timm
    from timm.models import _registry

    assert modules == {name: _registry.model_entrypoint(name).__module__ for name in timm.list_models()}
    cache = tmp_path / "vitrt" / f"timm-{version('timm')}-models.json"
    assert json.loads(cache.read_text()) == modules and modules["deit_small_patch16_224"] == "timm.models.deit"
    cache.write_text(json.dumps({**modules, "my_vit_variant": "timm.models.swin_transformer"}))
    with pytest.raises(UnsupportedModelError, match="'my_vit_variant' \\(timm family 'swin_transformer'\\)"):
        check_model_name("my_vit_variant")  # answered from the cache, not from timm
    check_model_name("vit_base_patch16_224.augreg_in21k")  # a pretrained tag names the same model


def test_the_python_api_expands_a_home_directory_in_out(tmp_path, monkeypatch):
    """out="~/x" is the home directory's x, as a shell expands it on the command line (it made a literal ./~)."""
    import vitrt

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    vitrt.compile("digits", "~/x", batch=1, quiet=True)
    assert (tmp_path / "home" / "x" / "manifest.json").is_file() and not (tmp_path / "~").exists()


def test_option_value_refusals_are_option_errors(tmp_path):
    """``except OptionError`` catches every refusal of an option's value from Python (some were bare VitrtError:
    unknown options, choices, token-merging ranges, the bench clock)."""
    import vitrt
    from vitrt.compiler.errors import OptionError

    for options in (dict(bogus=1), dict(precision="fp7"), dict(tome_flops=1.5), dict(tome="2", dfe_skip=-1),
                    dict(tome="2", lgtm_window=0), dict(tome_schedule="a,b"), dict(bench=True, bench_clock="cpu")):
        with pytest.raises(OptionError):
            vitrt.compile("digits", tmp_path / "o", quiet=True, **options)
    assert not (tmp_path / "o").exists()
