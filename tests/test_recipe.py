"""Recipes (vitrt.pipeline.recipe): a compile's options and every stage's plan written down, and ``vitrt compile
MODEL --recipe recipe.json -o OUT`` replaying it bit for bit — nothing planned again, the same model.onnx bytes —
plus its refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import tiny_vit
from vitrt.cli import main as cli
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import canonicalize
from vitrt.compiler.options import from_options
from vitrt.pipeline.config import CompileConfig
from vitrt.pipeline.driver import compile, plan_stages
from vitrt.pipeline.recipe import compile_recipe, read_recipe, write_recipe

# Token merging, 2:4 and int8 with calibration: plans with JSON, arrays and a scale table read against the spec the
# stage meets.
OPTIONS = {"batch": 2, "tome": "2", "sparsity": "2:4", "precision": "int8", "calib_data": "synthetic",
           "calib_images": 16}


def planned_recipe(tmp_path, model, name, options=OPTIONS):
    config = from_options(CompileConfig, {**options, "quiet": True}).validate()
    planned = plan_stages(config, canonicalize(model))
    return write_recipe(tmp_path / "recipe.json", name, options, planned.plans, {"made_by": "test"}), planned


def onnx_bytes(out) -> bytes:
    return (out / "model.onnx").read_bytes()


def test_replay_gives_the_same_bytes_as_compiling_with_the_plans(tmp_path):
    model = tiny_vit(depth=2, img_size=64)
    recipe, planned = planned_recipe(tmp_path, model, "tiny")
    assert set(recipe.plan_files) == {"tome", "sparsity", "quant"}
    assert "calib_data" not in recipe.options and "calib_images" not in recipe.options  # planning only: in the plans
    direct = compile(model, tmp_path / "direct", plans=planned.plans, quiet=True, **OPTIONS)
    first = compile_recipe(tmp_path / "recipe.json", module=model, out=tmp_path / "a", quiet=True, name="mine")
    again = compile_recipe(tmp_path / "recipe.json", module=model, out=tmp_path / "b", quiet=True, verify=True,
                           keep_twin=True, bench=True, bench_iters=5, bench_clock="cpu", threads=1)
    assert onnx_bytes(tmp_path / "a") == onnx_bytes(tmp_path / "b") == onnx_bytes(tmp_path / "direct")
    assert again.manifest["replay_of"]["recipe"] == str(tmp_path / "recipe.json") and "replay_of" not in \
        direct.manifest
    assert again.manifest["verify"]["ok"] and again.manifest["latency"]["clock"] == "cpu"  # measured on a shared
    assert (tmp_path / "b" / "twin").is_dir()  # machine's steady clock; inspectable with vitrt compare
    # the merges change the function: the dense model timed beside it, max(2, 5 // 5) iterations a round
    assert again.manifest["latency"]["versus_dense"]["iterations_per_round"] == 2
    assert first.manifest["params"] == direct.manifest["params"]
    assert first.manifest["model"] == "mine"  # a replay takes the label the Python API gives a module


@pytest.mark.slow  # the digits reference calibrated and compiled twice: minutes on a loaded 2-core machine
def test_cli_replays_a_recipe_for_the_digits_reference(tmp_path, digits_reference, capsys):
    options = {"batch": 2, "tome": "4", "precision": "int8", "calib_data": "digits", "calib_images": 32}
    recipe, _ = planned_recipe(tmp_path, digits_reference[0], "digits", options)
    for out in ("o1", "o2"):
        assert cli(["compile", "digits", "--recipe", str(tmp_path / "recipe.json"), "-o", str(tmp_path / out),
                    "--quiet"]) == 0
    assert onnx_bytes(tmp_path / "o1") == onnx_bytes(tmp_path / "o2")
    manifest = json.loads((tmp_path / "o1" / "manifest.json").read_text())
    assert manifest["model"] == "digits" and manifest["quantization"]["precision"] == "int8"

    # refusals: one line, exit 2, nothing written
    capsys.readouterr()
    assert cli(["compile", "digits", "--recipe", str(tmp_path / "recipe.json"), "-o", str(tmp_path / "x"),
                "--tome", "2"]) == 2
    assert "--recipe sets what is compiled" in capsys.readouterr().err
    assert cli(["compile", "vit_tiny_patch16_224", "--recipe", str(tmp_path / "recipe.json"), "-o",
                str(tmp_path / "y")]) == 2
    assert "was made for model 'digits'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # --force replaces OUT: never when the recipe (or another input) lies inside it
    inside = tmp_path / "o1" / "kept"
    shutil.copytree(tmp_path, inside, ignore=shutil.ignore_patterns("o1", "o2"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "o1").rglob("*"))
    assert cli(["compile", "digits", "--recipe", str(inside / "recipe.json"), "-o", str(tmp_path / "o1"),
                "--force"]) == 2
    assert "lies inside" in capsys.readouterr().err
    assert cli(["compile", "digits", "-o", str(tmp_path / "o1"), "--force", "--precision", "int8",
                "--scale-table", str(tmp_path / "o1" / "scale_table.json")]) == 2
    assert "--scale-table" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "o1").rglob("*")) == before


@pytest.mark.parametrize("mutate, message", [
    (lambda d, _: d.update(format="other"), "is not a vitrt recipe"),
    (lambda d, _: d.update(version=7), "has version 7"),
    (lambda d, _: d["plans"].update(tome="../elsewhere.json"), "is not a file beside it"),  # the file exists (below)
    (lambda d, far: d["plans"].update(tome=str(far)), "is not a file beside it"),  # the same file, named absolutely
    (lambda d, _: d["plans"].update(nope="recipe/tome.json"), "unknown stage 'nope'"),
    (lambda d, _: d.pop("options"), "malformed"),
])
def test_malformed_recipes_are_refused_in_one_line(tmp_path, mutate, message):
    model = tiny_vit(depth=2, img_size=64)
    planned_recipe(tmp_path, model, "tiny", {"batch": 2, "tome": "2"})
    path = tmp_path / "recipe.json"
    elsewhere = tmp_path.parent / "elsewhere.json"
    elsewhere.write_text(path.read_text())  # a real file outside the recipe's folder
    data = json.loads(path.read_text())
    mutate(data, elsewhere)
    path.write_text(json.dumps(data))
    with pytest.raises(VitrtError, match=message) as info:
        read_recipe(path)
    assert "\n" not in str(info.value)


def test_a_replay_refuses_what_would_change_the_compile_or_delete_the_recipe(tmp_path):
    """The in-process twin of the slow CLI test's refusals: an option that selects what is compiled, another model,
    and --force on an OUT that holds the recipe — each one line, nothing written, the recipe kept."""
    model = tiny_vit(depth=2, img_size=64)
    out = tmp_path / "out"
    planned_recipe(out / "kept", model, "tiny", {"batch": 2, "tome": "2"})
    recipe = out / "kept" / "recipe.json"
    with pytest.raises(VitrtError, match="--recipe sets what is compiled; drop --tome"):
        compile_recipe(recipe, module=model, out=tmp_path / "x", tome="2", quiet=True)
    with pytest.raises(VitrtError, match="unknown option 'bogus' for a recipe replay"):  # said "drop --bogus"
        compile_recipe(recipe, module=model, out=tmp_path / "x", bogus=1, quiet=True)
    import vitrt  # a keyword given as None is not given (config=None was refused as "drop --config")

    vitrt.compile(model, out / "none", recipe=recipe, config=None, quiet=True)
    with pytest.raises(VitrtError, match="was made for model 'tiny', not 'other'"):
        compile_recipe(recipe, model="other", module=model, out=tmp_path / "y", quiet=True)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(VitrtError, match="--recipe '.*' lies inside"):
        compile_recipe(recipe, module=model, out=out, force=True, quiet=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_low_rank_recipe_replays_from_its_plan_alone(tmp_path):
    """--lowrank FRACTION and --lowrank-plan are alternatives: the recipe keeps the plan and drops the fraction."""
    model = tiny_vit(depth=2)
    recipe, planned = planned_recipe(tmp_path, model, "tiny", {"batch": 2, "lowrank": 0.5})
    assert "lowrank" not in recipe.options and recipe.options["lowrank_plan"] == "recipe/lowrank.json"
    direct = compile(model, tmp_path / "direct", plans=planned.plans, quiet=True, batch=2, lowrank=0.5)
    compile_recipe(tmp_path / "recipe.json", module=model, out=tmp_path / "replay", quiet=True)
    assert onnx_bytes(tmp_path / "replay") == onnx_bytes(tmp_path / "direct")
    assert direct.manifest["params"]["after"] < direct.manifest["params"]["before"]  # the plan did factor layers


def test_plans_for_stages_the_options_do_not_run_are_refused(tmp_path):
    """A given plan is never silently dropped: one for a stage the options switch off is an error."""
    twin = canonicalize(tiny_vit(depth=2))
    merging = from_options(CompileConfig, {"batch": 2, "tome": "2", "quiet": True}).validate()
    plan = plan_stages(merging, twin).plans["tome"]
    dense = from_options(CompileConfig, {"batch": 2, "quiet": True}).validate()
    with pytest.raises(VitrtError, match="plans given for stage\\(s\\) tome that these options do not run"):
        plan_stages(dense, twin, given={"tome": plan})
