"""A damaged twin record or recipe is refused with a one-line VitrtError (exit 2 from the CLI), as
:func:`vitrt.pipeline.replay.load_record` and :func:`vitrt.pipeline.recipe.read_recipe` promise — never a traceback;
a recipe of a FLOPs-targeted token merge replays. Found by the mutation audit of vitrt.pipeline (each test failed
before its fix; the audit's other tests are in tests/test_pipeline_mutations.py). Tiny models: seconds each."""

from __future__ import annotations

import json
import shutil

import pytest

import vitrt
from conftest import tiny_vit
from vitrt.cli import main as cli_main
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import canonicalize
from vitrt.compiler.options import from_options
from vitrt.pipeline.config import CompileConfig
from vitrt.pipeline.driver import plan_stages
from vitrt.pipeline.recipe import read_recipe, write_recipe
from vitrt.pipeline.replay import load_record


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A merged (token merging) compile of a one-block tiny ViT with its twin record (OUT/twin)."""
    out = tmp_path_factory.mktemp("defects") / "out"
    vitrt.compile(tiny_vit(depth=1), out, name="tiny", batch=2, tome="1", keep_twin=True, quiet=True)
    return out


def copy_of(kept, tmp_path):
    shutil.copytree(kept, tmp_path / "out")
    return tmp_path / "out"


def test_a_truncated_twin_record_arrays_file_is_refused_in_one_line(kept, tmp_path, capsys):
    """A half-written arrays.npz (a copy cut short) is a damaged record: np.load raises zipfile.BadZipFile, which
    load_record let through as a traceback (recipes' read_plan already catches it)."""
    out = copy_of(kept, tmp_path)
    npz = out / "twin" / "arrays.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(VitrtError, match="cannot read arrays.npz") as info:
        load_record(out)
    assert "\n" not in str(info.value)
    capsys.readouterr()
    assert cli_main(["compare", str(out), "--images", "4", "-o", str(tmp_path / "report")]) == 2
    assert "cannot read arrays.npz" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    (lambda record: record.update(plans={}), "missing or invalid field"),  # a stage listed without its plan
    (lambda record: record.update(seed="x"), "missing or invalid field"),
])
def test_a_twin_record_with_a_missing_plan_or_a_bad_seed_is_refused_in_one_line(kept, tmp_path, damage, message):
    out = copy_of(kept, tmp_path)
    path = out / "twin" / "record.json"
    record = json.loads(path.read_text())
    damage(record)
    path.write_text(json.dumps(record))
    with pytest.raises(VitrtError, match=message) as info:
        load_record(out)
    assert "\n" not in str(info.value)


def test_a_recipe_whose_plan_file_is_not_a_name_is_refused_in_one_line(tmp_path):
    """read_recipe checked the plan names with Path(name), which raises TypeError for a number or null."""
    config = from_options(CompileConfig, {"batch": 2, "tome": "1", "quiet": True}).validate()
    planned = plan_stages(config, canonicalize(tiny_vit(depth=1)))
    path = tmp_path / "recipe.json"
    write_recipe(path, "tiny", {"batch": 2, "tome": "1"}, planned.plans)
    for name in (5, None, ["recipe/tome.json"]):
        data = json.loads(path.read_text())
        data["plans"]["tome"] = name
        path.write_text(json.dumps(data))
        with pytest.raises(VitrtError, match="tome plan .* is not a file beside it") as info:
            read_recipe(path)
        assert "\n" not in str(info.value)


def test_a_recipe_of_a_flops_targeted_token_merge_replays(tmp_path):
    """write_recipe left --tome-flops out as planning-only but put nothing in its place (as it does --prune-plan and
    --lowrank-plan for pruning and low rank): the replay's options ran no token merging, and the recipe's own merge
    plan was refused ("plans given for stage(s) tome that these options do not run")."""
    from vitrt.pipeline.driver import compile
    from vitrt.pipeline.recipe import compile_recipe

    model = tiny_vit(depth=2)
    options = {"batch": 2, "tome_flops": 0.8}
    config = from_options(CompileConfig, {**options, "quiet": True}).validate()
    planned = plan_stages(config, canonicalize(model))
    write_recipe(tmp_path / "recipe.json", "tiny", options, planned.plans)
    replay = compile_recipe(tmp_path / "recipe.json", module=model, out=tmp_path / "replay", quiet=True)
    direct = compile(model, tmp_path / "direct", plans=planned.plans, quiet=True, **options)
    assert (tmp_path / "replay" / "model.onnx").read_bytes() == (tmp_path / "direct" / "model.onnx").read_bytes()
    assert replay.manifest["spec_after"] == direct.manifest["spec_after"] != direct.manifest["spec_before"]
