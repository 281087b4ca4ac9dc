"""vitrt optimize (vitrt.search): recipes and their compile options, the Pareto front, the goal, the resumable state,
the latency-table filter on the digits reference with the recorded digits table, option refusals; and (slow) a whole
search on the digits reference whose chosen engine the recipe replays byte for byte."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vitrt.cli import main as cli
from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.progress import Progress
from vitrt.search.evaluate import Estimate
from vitrt.search.front import best_per_recipe, pareto, thin
from vitrt.search.halving import Clock, Goal, Schedule, SearchState, choose, fill_front, run_rungs, structural_filter
from vitrt.search.optimize import OptimizeConfig, fingerprint
from vitrt.search.space import Merge, Recipe, Space

from conftest import DIGITS_LUT
from search_support import ScriptedEvaluator


def estimate(ms, top1, **recipe):
    return Estimate(Recipe(**recipe), 0, ms, top1)


def test_space_leaves_out_what_the_compile_refuses_and_recipes_round_trip():
    space = Space(prune=(None, 0.5), merge=(None, Merge(4, window=4)), lowrank=(None, 0.9), sparsity=(False, True),
                  precision=("fp32", "int8"))
    recipes = space.recipes()
    assert len(recipes) == 2 * 2 * (4 + 1)  # low rank only with dense fp32
    assert all(not (r.lowrank and (r.sparsity or r.precision != "fp32")) for r in recipes)
    assert len({r.key for r in recipes}) == len(recipes)
    for r in recipes:
        assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    r = Recipe(0.5, Merge(4, skip=None, window=4), None, True, "int8")
    assert r.label() == "prune 0.5 + DFE+LGTM4 r=4 + 2:4 + int8"
    assert r.trainable() == ["prune", "sparsity", "quant"]  # int8 merged: QAT trains after the merge, no distillation
    o = r.options(epochs=2, data="digits", lut="t.json", batch=8, backend="ort", threads=1)
    assert o["prune"] == 0.5 and o["finetune_epochs"] == 2 and o["sparse_finetune_epochs"] == 2 and o["qat_epochs"] == 2
    assert o["tome"] == "4" and o["lgtm_window"] == 4 and "dfe_skip" not in o and "distill_epochs" not in o
    fp32 = Recipe(None, Merge(4, skip=0), None, False, "fp32").options(epochs=1, data="digits", lut=None, batch=8,
                                                                       backend="ort", threads=1)
    assert fp32["distill_epochs"] == 1 and fp32["dfe_skip"] == 0 and "calib_data" not in fp32
    for precision in ("fp16", "int4w"):  # no QAT after the merge: distilled at every precision but int8
        merged = Recipe(merge=Merge(4), precision=precision)
        assert merged.trainable() == ["distill"]
        o = merged.options(epochs=1, data="digits", lut=None, batch=8, backend="ort", threads=1)
        assert o["distill_epochs"] == 1 and o["distill_data"] == "digits"
    assert Recipe(precision="int8").options(epochs=0, data="digits", lut=None, batch=8, backend="ort",
                                            threads=1).get("qat_epochs") is None
    with pytest.raises(OptionError, match="search precision"):
        Recipe(precision="fp64")


def test_pareto_front_goal_and_thinning():
    points = [estimate(10.0, 0.99), estimate(5.0, 0.99, prune=0.5), estimate(6.0, 0.97, prune=0.6),
              estimate(3.0, 0.90, prune=0.3), estimate(4.0, 0.95, prune=0.4, precision="int8")]
    front = pareto(points)
    assert [p.predicted_ms for p in front] == [3.0, 4.0, 5.0]  # 6 ms at 97 % and 10 ms at 99 % are beaten by 5 ms
    goal = Goal(max_drop=1.0)
    ok = [p for p in points if goal.admissible(p, 0.99, 10.0, 0.0)]
    assert min(ok, key=goal.rank).predicted_ms == 5.0
    trained = Estimate(points[2].recipe, 1, 6.0, 0.97)  # trained: a pruned recipe at epochs 0 is let through anyway
    assert goal.admissible(trained, 0.99, 10.0, slack=1.5)  # 2 points within 1 + 1.5
    assert not goal.admissible(trained, 0.99, 10.0, slack=0.5)
    speed = Goal(target_speedup=2.2)
    assert min((p for p in points if speed.admissible(p, 0.99, 10.0, 0.0)), key=speed.rank).predicted_ms == 4.0
    assert not goal.admissible(Estimate(Recipe(), 0, refused="no"), 0.99, 10.0, 0.0)
    many = [estimate(float(i), 0.5 + i / 100) for i in range(1, 21)]
    kept = thin(many, 5, [many[7]])
    assert many[0] in kept and many[-1] in kept and many[7] in kept and len(kept) == 5  # --front-max is a limit
    assert thin(many, 2, [many[7]]) == [many[0], many[7]]


def test_a_drop_of_exactly_max_drop_points_is_admissible():
    """top-1 is a ratio of image counts: 297/300 -> 294/300 is one point, which floats make 1.0000000000000009."""
    goal = Goal(max_drop=1.0)
    assert goal.admissible(estimate(5.0, 294 / 300), 297 / 300, 10.0, 0.0)
    assert not goal.admissible(estimate(5.0, 293 / 300), 297 / 300, 10.0, 0.0)


def test_the_rung_slack_widens_max_drop_and_the_target_speedup_is_inclusive():
    """A recipe judged at rung 0 (merging: nothing trains it before it is judged) is admissible within --max-drop plus
    the rung's slack, not beyond; a predicted speedup of exactly --target-speedup meets it."""
    merged = estimate(5.0, 0.97, merge=Merge(4))  # 2 points below the dense 99 %
    assert Goal(max_drop=1.0).admissible(merged, 0.99, 10.0, slack=1.5)
    assert not Goal(max_drop=1.0).admissible(merged, 0.99, 10.0, slack=0.5)
    assert Goal(target_speedup=2.0).admissible(estimate(5.0, 0.9), 0.99, 10.0, 0.0)  # 10 / 5 = 2 exactly
    assert not Goal(target_speedup=2.0).admissible(estimate(5.1, 0.9), 0.99, 10.0, 0.0)


def test_the_final_choice_is_the_fastest_recipe_within_max_drop_itself():
    """No rung's slack at the end: a faster recipe beyond --max-drop is never chosen (a pruned one neither, whatever
    its budget), the fastest within it is; under --target-speedup the most accurate fast enough."""
    beyond, pruned = estimate(3.0, 0.95, merge=Merge(4)), estimate(2.0, 0.10, prune=0.3)
    within, slower = estimate(5.0, 0.985, prune=0.5), estimate(6.0, 0.99, prune=0.6)
    points = [slower, beyond, within, pruned]
    assert choose(points, Goal(max_drop=1.0), 0.99, 10.0) is within
    assert choose(points, Goal(target_speedup=1.8), 0.99, 10.0) is within  # 6 ms is 1.67x: not fast enough
    assert choose(points, Goal(max_drop=10.0), 0.99, 10.0) is beyond
    assert choose([beyond, pruned], Goal(max_drop=1.0), 0.99, 10.0) is None


def test_ties_go_to_the_more_accurate_or_the_faster_point():
    """At equal latency only the more accurate point is on the front and ranks first under --max-drop; at equal
    top-1 the faster ranks first under --target-speedup. A front point is a recipe at its largest budget."""
    slow, sure = estimate(5.0, 0.95, prune=0.5), estimate(5.0, 0.99, prune=0.6)
    assert pareto([slow, sure]) == [sure] and pareto([sure, slow]) == [sure]
    assert min([slow, sure], key=Goal(max_drop=5.0).rank) is sure
    fast = estimate(4.0, 0.99, prune=0.4)
    assert min([sure, fast], key=Goal(target_speedup=1.5).rank) is fast
    trained = Estimate(Recipe(prune=0.5), 6, 5.0, 0.97)
    refused = Estimate(Recipe(prune=0.5), 9, refused="no")
    assert best_per_recipe([trained, slow, refused]) == [trained] == best_per_recipe([slow, trained])


def test_a_lossy_extra_needs_to_be_predicted_more_than_the_margin_faster():
    barely, clearly = Recipe(prune=0.5, precision="int8"), Recipe(prune=0.4, precision="int8")
    ms = {Recipe(prune=0.5): 5.0, barely: 5.0 / 1.005, Recipe(prune=0.4): 4.0, clearly: 4.0 / 1.02}
    kept, structural = structural_filter(ScriptedEvaluator(ms, {}), list(ms), Progress(enabled=False))
    assert barely not in kept and structural["notes"][barely.key].startswith("dominated")
    assert clearly in kept and Recipe(prune=0.5) in kept


def test_each_rung_trains_the_fastest_admissible_recipes_of_the_rung_before(tmp_path):
    recipes = [Recipe(prune=p) for p in (0.3, 0.4, 0.5, 0.6, 0.7)]
    ms = {r: 10 * r.prune for r in recipes}
    top1 = {r: 0.99 for r in recipes} | {(recipes[0], 2): 0.90}  # the fastest fails the goal once trained
    evaluator = ScriptedEvaluator(ms, top1)
    last = run_rungs(evaluator, recipes, Goal(max_drop=1.0), Schedule(epochs=(0, 2), keep=(2,), slack=(5.0, 0.0)),
                     SearchState(tmp_path / "state.json", {}), Clock(None, 0.0), lambda e: None,
                     Progress(enabled=False))
    assert [r for r, epochs in evaluator.estimated if epochs == 2] == recipes[:2]
    assert [e.recipe for e in last] == [recipes[1]]


def test_the_budget_keeps_back_the_reserve_and_skips_a_recipe_the_last_ones_cost_says_will_not_fit(tmp_path):
    """A clock fits a cost only within the budget less the reserve (the measurements'); a rung skips the recipes
    whose expected cost (the mean of the estimates it made) no longer fits, and says so in the state's log."""
    assert not Clock(100.0, reserve_s=60.0, already_s=50.0).fits(0.0)
    assert Clock(100.0, reserve_s=60.0, already_s=30.0).fits(5.0)
    recipes = [Recipe(prune=0.3), Recipe(prune=0.5)]
    evaluator = ScriptedEvaluator({r: 10 * r.prune for r in recipes}, {r: 0.99 for r in recipes}, seconds=50.0)
    state = SearchState(tmp_path / "state.json", {})
    run_rungs(evaluator, recipes, Goal(max_drop=1.0), Schedule(epochs=(0,), keep=(), slack=(0.0,)), state,
              Clock(100.0, reserve_s=0.0, already_s=60.0), lambda e: None, Progress(enabled=False))
    assert evaluator.estimated == [(recipes[0], 0)]  # 60 s used + 50 s expected > 100 s
    assert state.log == [{"rung": 0, "skipped_for_budget": [recipes[1].key]}]


def test_filling_the_front_stops_at_the_points_wanted_and_leaves_a_gap_that_gained_none(tmp_path):
    """The front is filled until it has --front-points points, no more; a gap whose recipe did not join the front
    (less accurate than a faster point) is not tried again: the next recipe comes from another gap."""
    def front_state(name):
        state = SearchState(tmp_path / name, {})
        for e in (Estimate(Recipe(prune=0.2), 6, 2.0, 0.90), Estimate(Recipe(prune=0.8), 6, 8.0, 0.99)):
            state.add(e, None)
        return state

    # widest gap 2 -> 8 ms (two recipes there, 4 ms nearest its middle); faster than the front: 1 -> 2 ms
    wide, also_wide, fast = Recipe(prune=0.4), Recipe(prune=0.45), Recipe(prune=0.1)
    ms = {wide: 4.0, also_wide: 4.5, fast: 1.0}
    predicted = {r.key: v for r, v in ms.items()}

    def fill(evaluator, state):
        return fill_front(evaluator, list(ms), predicted, 6, 3, state, Clock(None, 0.0), lambda e: None,
                          Progress(enabled=False))

    joins = ScriptedEvaluator(ms, {r: 0.95 for r in ms})
    assert fill(joins, front_state("joins.json")) == 1 and joins.estimated == [(wide, 6)]
    off_front = ScriptedEvaluator(ms, {wide: 0.85, also_wide: 0.85, fast: 0.5})  # 0.85 at 4 ms: beaten by 2 ms
    assert fill(off_front, front_state("off.json")) == 2
    assert off_front.estimated == [(wide, 6), (fast, 6)]


def test_state_persists_resumes_and_refuses_other_arguments(tmp_path):
    path = tmp_path / ".search" / "state.json"
    path.parent.mkdir()
    state = SearchState(path, {"model": "digits", "max_drop": 1.0})
    assert path.is_file()  # written at once: a run stopped before its first estimate is still resumable
    e = Estimate(Recipe(0.5), 2, 4.0, 0.98, 100, 200, 1.5)
    state.add(e, "recipes/x")
    state.note(rung=0, skipped_for_budget=["a"])
    again = SearchState(path, {"model": "digits", "max_drop": 1.0})
    assert again.get(Recipe(0.5), 2).to_dict() == e.to_dict() and again.get(Recipe(0.5), 1) is None
    assert again.recipe_dir(Recipe(0.5), 2) == "recipes/x" and again.log == [{"rung": 0, "skipped_for_budget": ["a"]}]
    with pytest.raises(VitrtError, match=r"other arguments \(--max-drop\)"):
        SearchState(path, {"model": "digits", "max_drop": 2.0})


@pytest.mark.parametrize("args, message", [
    (["--max-drop", "1"], "no output directory"),
    (["-o", "OUT"], "exactly one of --max-drop"),
    (["-o", "OUT", "--max-drop", "1", "--target-speedup", "2"], "exactly one of --max-drop"),
    (["-o", "OUT", "--max-drop", "-1"], "--max-drop must be >= 0"),
    (["-o", "OUT", "--target-speedup", "0.5"], "--target-speedup must be > 1"),
    (["-o", "OUT", "--max-drop", "1", "--precisions", "fp64"], "--precisions takes"),
    (["-o", "OUT", "--max-drop", "1", "--epochs", "2,1"], "--epochs must be rising"),
    (["-o", "OUT", "--max-drop", "1", "--prune-fractions", "0.5,x"], "comma-separated numbers"),
    (["-o", "OUT", "--max-drop", "1", "--prune-fractions", "1.5"], "must lie in"),
    (["-o", "OUT", "--max-drop", "1", "--prune-fractions", "0"], "--prune-fractions must lie in (0, 1]"),
    (["-o", "OUT", "--max-drop", "1", "--front-max", "1"], "--front-max >= 2"),
    (["-o", "OUT", "--max-drop", "1", "--data", "synthetic"], "must be labelled"),
    (["-o", "OUT", "--max-drop", "1", "--lut", "manifest.json"], "is not a vitrt latency table"),
    (["-o", "OUT", "--max-drop", "1", "--lut", "missing.json"], "does not exist"),
    (["-o", "OUT", "--max-drop", "nan"], "--max-drop must be a finite number"),
    (["-o", "OUT", "--target-speedup", "inf"], "--target-speedup must be a finite number"),
    (["-o", "OUT", "--max-drop", "1", "--budget-minutes", "nan"], "--budget-minutes must be a finite number"),
    (["-o", "OUT", "--max-drop", "1", "--seed", "-1"], "--seed must be >= 0"),
    (["-o", "OUT", "--max-drop", "1", "--merge-r", "-3"], "--merge-r takes tokens merged per block"),
    (["-o", "OUT", "--max-drop", "1", "--precisions", "fp32,fp32"], "each once"),
    (["-o", "OUT", "--max-drop", "1", "--budget-minutes", "2"], "--budget-minutes 2 leaves no time to search"),
    (["-o", "OUT", "--max-drop", "1", "--lut", str(DIGITS_LUT), "--batch", "4"], "built for batch 8, not 4"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    """Refused in one line before any work (a table that does not fit: before anything was recorded), and no OUT
    left behind: there is nothing to resume."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "manifest.json").write_text('{"model": "digits"}')  # a compile's manifest, not a latency table
    assert cli(["optimize", "digits", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "OUT").exists()


@pytest.mark.parametrize("command, model, args, message", [
    ("optimize", "nosuch", ["--max-drop", "1"], "unknown model 'nosuch'"),
    ("optimize", "swin_tiny_patch4_window7_224", ["--max-drop", "1"], "unsupported architecture"),
    ("optimize", "digits", ["--max-drop", "1", "--backend", "trt"], "TensorRT is not installed"),
    ("study", "nosuch", [], "unknown model 'nosuch'"),
])
def test_a_model_or_runtime_that_cannot_run_is_refused_before_out_is_made(tmp_path, capsys, command, model, args,
                                                                          message):
    from vitrt.compiler.backends.trt import tensorrt_available

    if "trt" in args and tensorrt_available():
        pytest.skip("TensorRT is installed: --backend trt runs")
    assert cli([command, model, "-o", str(tmp_path / "OUT"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_output_without_a_search_is_refused(tmp_path, capsys):
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT" / "mine.txt").write_text("keep me")
    assert cli(["optimize", "digits", "-o", str(tmp_path / "OUT"), "--max-drop", "1"]) == 2
    assert "holds no search to resume" in capsys.readouterr().err
    assert (tmp_path / "OUT" / "mine.txt").read_text() == "keep me"
    # --force starts over a search, never a directory of something else
    assert cli(["optimize", "digits", "-o", str(tmp_path / "OUT"), "--max-drop", "1", "--force"]) == 2
    assert "--force only starts over a directory made by vitrt optimize" in capsys.readouterr().err
    assert (tmp_path / "OUT" / "mine.txt").read_text() == "keep me"
    # a search started over is never the current directory (or one above it): --force would delete the shell's
    (tmp_path / "OUT" / "mine.txt").unlink()
    (tmp_path / "OUT" / ".search").mkdir()
    (tmp_path / "OUT" / "notes.tex").write_text("keep me")
    for here, out in ((tmp_path / "OUT", "."), (tmp_path / "OUT" / ".search", "..")):
        os.chdir(here)
        try:
            assert cli(["optimize", "digits", "-o", out, "--max-drop", "1", "--force"]) == 2
        finally:
            os.chdir(tmp_path)
        assert "holds the current directory" in capsys.readouterr().err
        assert (tmp_path / "OUT" / "notes.tex").read_text() == "keep me"


def test_force_never_deletes_the_searchs_own_inputs(tmp_path, capsys):
    (tmp_path / "OUT" / ".search").mkdir(parents=True)
    shutil.copy(DIGITS_LUT, tmp_path / "OUT" / "lut.json")
    assert cli(["optimize", "digits", "-o", str(tmp_path / "OUT"), "--max-drop", "1", "--force",
                "--lut", str(tmp_path / "OUT" / "lut.json")]) == 2
    assert "lies inside" in capsys.readouterr().err and (tmp_path / "OUT" / "lut.json").is_file()


def test_force_never_deletes_a_studys_own_table(tmp_path, capsys):
    """study --force starts over a study, never deleting the --lut it is given from inside it."""
    (tmp_path / "S" / "engines").mkdir(parents=True)
    (tmp_path / "S" / "engines" / "settings.json").write_text("{}")
    shutil.copy(DIGITS_LUT, tmp_path / "S" / "lut.json")
    assert cli(["study", "digits", "-o", str(tmp_path / "S"), "--force", "--lut", str(tmp_path / "S" / "lut.json"),
                "--rows", "dense", "--quiet"]) == 2
    assert "--lut" in (err := capsys.readouterr().err) and "lies inside" in err
    assert (tmp_path / "S" / "lut.json").is_file()


def test_force_never_deletes_an_image_folder_given_as_data(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "OUT" / ".search").mkdir(parents=True)
    images = tmp_path / "OUT" / "imgs" / "zero"
    images.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(images / f"{i}.png")
    assert cli(["optimize", "digits", "-o", str(tmp_path / "OUT"), "--max-drop", "1", "--force",
                "--data", str(tmp_path / "OUT" / "imgs")]) == 2
    assert "--data" in (err := capsys.readouterr().err) and "lies inside" in err
    assert sorted(p.name for p in images.iterdir()) == ["0.png", "1.png", "2.png"]


def test_the_default_schedule_is_the_documented_one():
    """12, 6, 3 recipes go on; the slack on --max-drop shrinks 30, 3, 1 points to 0 at the last rung."""
    config = OptimizeConfig(model="digits", out=Path("x"), max_drop=1.0)
    assert config.schedule == Schedule(epochs=(0, 1, 3, 6), keep=(12, 6, 3), slack=(30.0, 3.0, 1.0, 0.0))


def test_a_resumed_search_must_share_the_seed_and_the_tables_contents(tmp_path):
    lut = tmp_path / "lut.json"
    shutil.copy(DIGITS_LUT, lut)
    config = OptimizeConfig(model="digits", out=tmp_path / "OUT", max_drop=1.0, lut=lut)
    before = fingerprint(config)
    assert before != fingerprint(replace(config, seed=1))
    assert before == fingerprint(replace(config, budget_minutes=5.0, force=True))  # these may change on a resume
    mtime = lut.stat().st_mtime_ns
    os.utime(lut, ns=(mtime, mtime + 10**9))  # the table rebuilt in place
    assert fingerprint(config) != before


def test_the_latency_table_drops_recipes_it_shows_cannot_pay(digits_reference):
    """On the recorded digits table (ORT CPU, measured): fp16 and int4w run slower than fp32 there (ONNX Runtime's
    CPU kernels cast / dequantize), so every fp16 or int4w recipe is dominated by the same recipe in fp32 and gets no
    accuracy estimate; int8 is predicted faster and stays; a key the table lacks is said."""
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.models import canonicalize
    from vitrt.search.evaluate import Evaluator, Target
    from vitrt.search.halving import structural_filter
    from vitrt.search.holdout import search_data

    twin = canonicalize(digits_reference[0]).eval()
    data = search_data("digits", twin.spec.img)
    assert len(data.fit) + len(data.holdout) == 1347 and len(data.test) == 450
    evaluator = Evaluator(twin, "digits", data, LatencyTable.load(DIGITS_LUT), DIGITS_LUT, Target(8, "ort", 1),
                          Progress(enabled=False))
    assert evaluator.dense_holdout > 0.95
    recipes = Space(prune=(None,), merge=(None, Merge(4)), lowrank=(None,), sparsity=(False, True),
                    precision=("fp32", "int8", "fp16", "int4w")).recipes()
    kept, structural = structural_filter(evaluator, recipes, Progress(enabled=False))
    assert Recipe(precision="int8") in kept and Recipe(merge=Merge(4), precision="int8") in kept
    assert all(r.precision in ("fp32", "int8") for r in kept)
    notes = structural["notes"]
    for precision in ("fp16", "int4w"):
        assert notes[Recipe(precision=precision).key].startswith("dominated")
        assert notes[Recipe(merge=Merge(4), precision=precision).key].startswith("dominated")
    assert "no int8/2:4 key" in notes[Recipe(sparsity=True, precision="int8").key]
    predicted = structural["predicted_ms"]
    assert predicted[Recipe(precision="int8").key] < predicted[Recipe().key] == pytest.approx(evaluator.dense_ms)
    evaluator.calibrate(1.25)  # the dense engine measured 25 % slower than the table: every prediction follows
    assert evaluator.dense_ms == pytest.approx(1.25 * predicted[Recipe().key])
    assert evaluator.predict(Recipe(precision="int8"), twin.spec) == pytest.approx(
        1.25 * predicted[Recipe(precision="int8").key])


@pytest.mark.slow  # a real search: estimates, compiles and side-by-side timing on the digits reference (minutes)
def test_a_search_on_digits_writes_the_front_and_a_recipe_that_replays_the_engine(tmp_path, digits_reference):
    from vitrt.pipeline.recipe import compile_recipe
    from vitrt.search.halving import Schedule
    from vitrt.search.optimize import run

    config = OptimizeConfig(model="digits", out=tmp_path / "OUT", max_drop=1.0, lut=DIGITS_LUT, front_max=3,
                            rounds=1, quiet=True)
    space = Space(prune=(None,), merge=(None, Merge(4)), lowrank=(None,), sparsity=(False,),
                  precision=("fp32", "int8"))
    result = run(config, space=space, schedule=Schedule(epochs=(0,), keep=(), slack=(0.0,)))
    out = tmp_path / "OUT"
    for name in ("pareto.md", "pareto.json", "pareto.png", "recipe.json", "engine/model.onnx"):
        assert (out / name).is_file()
    # every recipe is estimated or dropped by the table (merging by the factor measured on this machine at the start)
    estimated, dropped = {e["key"] for e in result["estimates"]}, set(result["structural"]["notes"])
    assert estimated | dropped == {r.key for r in space.recipes()} and Recipe().key in estimated
    assert result["merge_factor"] > 0 and result["chosen"] is not None and result["engine_verify"]["ok"]
    for point in result["front"]:
        assert point["measured"]["cpu_ms"] > 0 and point["measured"]["top1"] is not None
    replay = compile_recipe(out / "recipe.json", out=tmp_path / "replay", quiet=True, verify=True)
    assert (tmp_path / "replay" / "model.onnx").read_bytes() == (out / "engine" / "model.onnx").read_bytes()
    assert replay.manifest["verify"]["ok"]
    # a rerun with the same arguments resumes: nothing estimated again
    again = run(config, space=space, schedule=Schedule(epochs=(0,), keep=(), slack=(0.0,)))
    assert [e["seconds"] for e in again["estimates"]] == [e["seconds"] for e in result["estimates"]]


def test_study_rows_and_refusals(tmp_path, capsys):
    from vitrt.search.study import StudyConfig, rows

    table = rows("digits", 2, DIGITS_LUT)
    assert table["qat"][1]["qat_epochs"] == 2 and table["lowrank70"][1]["lowrank_finetune_epochs"] == 2
    assert table["prune_dfe_int8"][1]["prune"] == 0.5 and table["prune_dfe_int8"][1]["precision"] == "int8"
    assert table["prune30_dfe_int8"][1]["prune"] == 0.3 and table["dfe"][1]["tome"] == "4"  # digits: 2 per 64 tokens
    from vitrt.compiler.known_models import known_spec

    deit = rows("digits", 0, DIGITS_LUT, known_spec("deit_small_patch16_224"))
    assert deit["tome"][1]["tome"] == "6" and deit["dfe"][1]["tome"] == "12"  # 3 % of 196 tokens
    assert deit["lgtm"][1]["lgtm_window"] == 7  # a window dividing the 14 x 14 grid
    every = StudyConfig(model="digits", out=tmp_path / "s", lut=DIGITS_LUT).row_names
    assert every[0] == "dense" and set(every) == set(table)
    assert "prune" not in StudyConfig(model="digits", out=tmp_path / "s").validate().row_names  # no table: left out
    with pytest.raises(OptionError, match="--rows prune prune to a latency target: add --lut"):
        StudyConfig(model="digits", out=tmp_path / "s", rows="int8,prune,tome").validate()  # asked for: said
    assert cli(["study", "digits", "-o", str(tmp_path / "s"), "--rows", "int8,bogus"]) == 2
    assert "unknown row(s) bogus" in capsys.readouterr().err
    (tmp_path / "set" / "images").mkdir(parents=True)  # a synthetic metric set: its labels were assigned
    (tmp_path / "set" / "metadata.json").write_text("{}")
    (tmp_path / "manifest.json").write_text('{"model": "digits"}')
    for bad, message in ((["--epochs", "-1"], "--epochs and --seed must be >= 0"), (["--seed", "-1"], "--seed"),
                         (["--data", "synthetic"], "--data must be labelled"),
                         (["--data", f"synth:{tmp_path / 'set'}"], "its data-free estimate is --metric-set"),
                         (["--lut", str(tmp_path / "manifest.json")], "is not a vitrt latency table")):
        assert cli(["study", "digits", "-o", str(tmp_path / "s"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    # a study's engines are reused on resume only with the settings they were made with
    (tmp_path / "s" / "engines").mkdir(parents=True)
    (tmp_path / "s" / "engines" / "settings.json").write_text(json.dumps(
        StudyConfig(model="digits", out=tmp_path / "s", epochs=0).settings()))
    with pytest.raises(OptionError, match=r"other settings \(--epochs\)"):
        StudyConfig(model="digits", out=tmp_path / "s", epochs=5).validate()
    StudyConfig(model="digits", out=tmp_path / "s", epochs=0).validate()
    # --force starts over a study, never a directory of something else
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    assert cli(["study", "digits", "-o", str(tmp_path / "mine"), "--force"]) == 2
    assert "holds no study" in capsys.readouterr().err and (tmp_path / "mine" / "thesis.tex").is_file()
    # a folder that merely has an engines directory is not a study: not resumed into, not deleted with --force
    (tmp_path / "mine" / "engines").mkdir()
    (tmp_path / "mine" / "engines" / "my.plan").write_text("keep")
    for force in ([], ["--force"]):
        assert cli(["study", "digits", "-o", str(tmp_path / "mine"), "--rows", "dense", "--epochs", "0", *force]) == 2
        assert "holds no study" in capsys.readouterr().err
        assert (tmp_path / "mine" / "thesis.tex").is_file() and (tmp_path / "mine" / "engines" / "my.plan").is_file()


def test_a_pruned_recipe_is_judged_after_fine_tuning_not_before():
    from vitrt.search.evaluate import Estimate
    from vitrt.search.halving import Goal

    goal = Goal(max_drop=1.0)
    pruned, merged = Recipe(prune=0.3), Recipe(merge=Merge(4))
    chance = dict(predicted_ms=1.0, holdout_top1=0.10)
    assert goal.admissible(Estimate(pruned, 0, **chance), 1.0, 8.0, slack=30.0)  # rung 0: trained later
    assert not goal.admissible(Estimate(merged, 0, **chance), 1.0, 8.0, slack=30.0)  # nothing will train it
    assert not goal.admissible(Estimate(pruned, 6, **chance), 1.0, 8.0, slack=3.0)  # trained: judged
    assert not goal.admissible(Estimate(pruned, 0, **chance), 1.0, 8.0, slack=0.0)  # the final choice: never


def test_front_ties_in_top1_are_broken_by_the_held_out_cross_entropy():
    """On a few hundred held-out images many recipes tie at the same top-1 (100 % most often): among them a slower
    recipe is on the front only when its held-out cross-entropy is lower."""
    def point(ms, top1, loss):
        return Estimate(Recipe(prune=ms / 10), 6, ms, top1, holdout_loss=loss)

    points = [point(2.0, 0.99, 0.30), point(3.0, 1.0, 0.20), point(4.0, 1.0, 0.25), point(5.0, 1.0, 0.10),
              point(6.0, 0.995, 0.01)]
    assert [p.predicted_ms for p in pareto(points)] == [2.0, 3.0, 5.0]  # 4 ms: same top-1, worse loss; 6: lower top-1
    old = Estimate(Recipe(), 0, 9.0, 1.0)  # a state written before the loss was kept: never beats a tie
    assert old not in pareto(points + [old])
    assert Estimate.from_dict(points[1].to_dict()).holdout_loss == 0.20


def test_merge_is_a_dominance_axis_and_the_merge_factor_reproduces_the_measured_ratio(digits_reference):
    """The offset makes the table's ratio of a small engine to dense the measured one, the merge factor then that
    of the merging probe; a merging recipe the calibrated table does not predict faster than without merging is
    dropped."""
    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.models import canonicalize
    from vitrt.search.evaluate import Evaluator, Target, merge_factor, table_offset
    from vitrt.search.holdout import search_data

    assert Recipe(0.5, Merge(2), 0.9).without("merge") == Recipe(0.5, None, 0.9)
    assert Recipe(0.5).without("merge") is None
    twin = canonicalize(digits_reference[0]).eval()
    lut = LatencyTable.load(DIGITS_LUT)
    evaluator = Evaluator(twin, "digits", search_data("digits", twin.spec.img), lut, DIGITS_LUT,
                          Target(8, "ort", 1), Progress(enabled=False))
    probe = Recipe(merge=Merge(2))
    spec = evaluator.predicted_spec(probe)
    part = lut.merge_ms(spec, clamp=True)
    assert part > 0 and lut.merge_ms(twin.spec) == 0.0
    merged = evaluator.table_ms(probe, spec)
    offset = table_offset(dense_table_ms=evaluator.dense_table_ms, small_table_ms=0.5 * evaluator.dense_table_ms,
                          measured_ratio=0.55)  # the small engine ran slower than the table says: a per-run cost
    assert (0.5 * evaluator.dense_table_ms + offset) / (evaluator.dense_table_ms + offset) == pytest.approx(0.55)
    k = merge_factor(dense_table_ms=evaluator.dense_table_ms + offset, merged_table_ms=merged + offset,
                     merge_part_ms=part, measured_ratio=1.15)
    evaluator.calibrate(1.0, k, offset)
    assert evaluator.table_ms(probe, spec) / evaluator.dense_table_ms == pytest.approx(1.15)
    assert evaluator.table_ms(probe, spec, calibrated=False) == pytest.approx(merged)
    assert merge_factor(dense_table_ms=8.0, merged_table_ms=7.0, merge_part_ms=0.0, measured_ratio=2.0) == 1.0
    assert merge_factor(dense_table_ms=8.0, merged_table_ms=7.0, merge_part_ms=0.1, measured_ratio=9.0) == 10.0
    assert table_offset(dense_table_ms=8.0, small_table_ms=4.0, measured_ratio=0.4) == 0.0  # faster than the table
    assert table_offset(dense_table_ms=8.0, small_table_ms=4.0, measured_ratio=1.2) == 0.0  # cannot tell
    from vitrt.search.halving import structural_filter

    kept, structural = structural_filter(evaluator, [Recipe(), probe], Progress(enabled=False))
    assert kept == [Recipe()]  # at 1.15x the dense time, merging cannot pay on this model
    assert structural["notes"][probe.key].startswith("dominated: predicted not faster than fp32")


def test_the_calibration_formulas_clamp_and_chain():
    """The offset is clamped at a quarter of the dense table time, the merge factor at 0 below; the merge factor is
    fitted on the table times with the offset added; the machine's scale makes the calibrated dense time the
    measured one."""
    from vitrt.search.evaluate import fit_calibration, lut_scale, merge_factor, table_offset

    # (7.9 + c) / (8 + c) = 0.999 needs c = 92 ms: more than 0.25 x 8
    assert table_offset(dense_table_ms=8.0, small_table_ms=7.9, measured_ratio=0.999) == 2.0
    assert merge_factor(dense_table_ms=8.0, merged_table_ms=9.0, merge_part_ms=0.1, measured_ratio=0.5) == 0.0
    # by hand: (4 + c) / (8 + c) = 0.55 -> c = 0.4 / 0.45 = 8/9; (8 + c) * 0.9 = 7 + c + (k - 1) * 0.5 -> k = 11/9
    assert fit_calibration(8.0, small=(4.0, 0.55), merge=(7.0, 0.5, 0.9)) == pytest.approx((8 / 9, 11 / 9))
    assert fit_calibration(8.0) == (0.0, 1.0)
    assert lut_scale(10.0, 8.0, 2.0) == 1.0 and lut_scale(12.0, 8.0, 0.0) == 1.5


def test_the_front_is_filled_in_its_widest_latency_gap():
    from vitrt.search.halving import widest_gap_candidate

    recipes = {ms: Recipe(prune=ms / 10) for ms in (0.5, 1.5, 2.2, 4.5, 5.5, 7.0)}
    predicted = {r.key: ms for ms, r in recipes.items()}
    front = [1.0, 2.0, 8.0]  # widest gap (log): 2 -> 8; its middle is 4 ms
    assert widest_gap_candidate(front, list(recipes.values()), predicted) == (recipes[4.5], (2.0, 8.0))
    # a gap that was tried and did not gain a point is passed over: next widest, 0.5 (faster than the front) -> 1
    assert widest_gap_candidate(front, list(recipes.values()), predicted, {(2.0, 8.0)}) == \
        (recipes[0.5], (0.5, 1.0))
    # slower than the slowest point is a gap too (up to the slowest candidate)
    assert widest_gap_candidate([1.0, 2.0], [recipes[7.0], recipes[1.5]], predicted) == (recipes[7.0], (2.0, 7.0))
    assert widest_gap_candidate(front, [], predicted) == (None, None)


def test_dcvit_is_a_search_axis_apart_from_nvit_pruning():
    from vitrt.search.space import DCVIT_FEW_SHOT

    space = Space(prune=(None, 0.5), merge=(None,), lowrank=(None,), sparsity=(False,), precision=("fp32",),
                  dcvit=(None, 0.7))
    assert set(space.recipes()) == {Recipe(), Recipe(0.5), Recipe(dcvit=0.7)}  # never NViT and DC-ViT together
    with pytest.raises(OptionError, match="not both"):
        Recipe(prune=0.5, dcvit=0.7)
    r = Recipe(merge=Merge(6), precision="int8", dcvit=0.7)
    assert r.label() == "DC-ViT 0.7 MACs + DFE r=6 + int8" and r.key.endswith("-dc0.7")
    assert Recipe(0.5).key == "p0.5-m0-lr0-dense-fp32"  # keys without DC-ViT are those older states hold
    assert r.trainable() == ["dcvit", "quant"] and Recipe.from_dict(r.to_dict()) == r
    assert r.without("precision") == Recipe(merge=Merge(6), dcvit=0.7) and r.structural().precision == "fp32"
    rung0 = r.options(epochs=0, data="digits", lut=None, batch=8, backend="ort", threads=1)
    assert rung0["dcvit_epochs"] == 0 and rung0["dcvit_score_epochs"] == 0  # explicit: DC-ViT's default is 50
    assert rung0["dcvit_metric"] == "digits" and rung0["few_shot"] == DCVIT_FEW_SHOT and "prune" not in rung0
    trained = r.options(epochs=6, data="digits", lut=None, batch=8, backend="ort", threads=1)
    assert trained["dcvit_epochs"] == 6 and trained["dcvit_score_epochs"] == 2  # scoring's brief fine-tuning: capped
    goal = Goal(max_drop=1.0)
    assert goal.admissible(Estimate(Recipe(dcvit=0.7), 0, 1.0, 0.5), 1.0, 8.0, slack=30.0)  # judged once trained
    config = OptimizeConfig(model="digits", out=Path("x"), max_drop=1.0, dcvit_macs="0.8,1")
    assert config.space_override(space).dcvit == (None, 0.8)
    from vitrt.compiler.known_models import known_spec
    from vitrt.search.space import default_space

    assert default_space(known_spec("deit_small_patch16_224")).dcvit == (None, 0.85, 0.7)


@pytest.mark.parametrize("args, message", [
    (["--dcvit-macs", "0.7,x"], "comma-separated numbers"),
    (["--dcvit-macs", "1.5"], "--dcvit-macs must lie in"),
])
def test_bad_dcvit_axis_is_one_line(tmp_path, capsys, args, message):
    assert cli(["optimize", "digits", "-o", str(tmp_path / "OUT"), "--max-drop", "1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "OUT").exists()


def test_a_dcvit_recipe_is_estimated_on_the_fit_split_and_replays(digits_reference, tmp_path):
    """Rung 0 of a DC-ViT recipe on the digits reference: blocks scored and compressed on the fit split (no
    fine-tuning), the latency table predicting the compressed spec (attention removed, MLP reduced); its recipe
    replays the plan (a front point is compiled that way)."""
    from vitrt.pipeline.recipe import compile_recipe, write_recipe

    from vitrt.compiler.lut import LatencyTable
    from vitrt.compiler.models import canonicalize
    from vitrt.search.evaluate import Evaluator, Target
    from vitrt.search.holdout import search_data

    twin = canonicalize(digits_reference[0]).eval()
    lut = LatencyTable.load(DIGITS_LUT)
    evaluator = Evaluator(twin, "digits", search_data("digits", twin.spec.img), lut, DIGITS_LUT,
                          Target(8, "ort", 1), Progress(enabled=False))
    e = evaluator.estimate(Recipe(dcvit=0.7), 0)
    assert e.ok, e.refused
    meta = e.plans["prune"].meta["dcvit"]
    assert meta["macs_fraction"] <= 0.7 and meta["metric_set"]["images"] == 256 and meta["epochs"] == 0
    assert e.params < 607_946  # the dense reference's
    assert e.predicted_ms < 0.8 * evaluator.dense_ms and e.holdout_top1 > 0.9 and e.holdout_loss is not None
    recipe = write_recipe(tmp_path / "r" / "recipe.json", "digits", evaluator.options(e.recipe, 0), e.plans)
    assert "dcvit_macs" not in recipe.options and "prune_plan" in recipe.options
    replay = compile_recipe(tmp_path / "r" / "recipe.json", out=tmp_path / "engine", quiet=True, verify=True)
    assert replay.manifest["verify"]["ok"] and replay.manifest["params"]["after"] == e.params


def test_the_table_check_needs_a_table(tmp_path, capsys):
    from vitrt.search.table_check import main

    assert main(["-o", str(tmp_path / "x")]) == 2
    assert "pass --lut LUT" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_the_dense_recipe_can_be_the_choice(tmp_path, digits_reference):
    """A recipe with no planned stage (dense fp32) has no plan directory; choosing it still writes OUT/recipe.json and
    a verified OUT/engine."""
    from vitrt.pipeline.recipe import write_recipe
    from vitrt.search.optimize import finalize_choice

    out = tmp_path / "OUT"
    source = out / ".search" / "recipes" / "p1-m0-lr0-dense-fp32-e0"
    write_recipe(source / "recipe.json", "digits", Recipe().options(epochs=0, data="digits", lut=None, batch=8,
                                                                      backend="ort", threads=1), {})
    assert not (source / "recipe").exists()
    config = OptimizeConfig(model="digits", out=out, max_drop=1.0, quiet=True)
    verify = finalize_choice(config, out, str(source.relative_to(out)), digits_reference[0], Progress(enabled=False))
    assert verify["ok"] and (out / "recipe.json").is_file() and (out / "engine" / "model.onnx").is_file()


def test_dropped_recipes_are_counted_by_reason():
    """The search's log says why recipes were dropped before training: a refusal is not a missing table key."""
    from vitrt.search.halving import dropped_summary

    notes = {"a": "refused: --dcvit-macs 0.99 keeps more than removing one attention module allows",
             "b": "dominated: predicted not faster than dense", "c": "the latency table has no x key",
             "d": "refused: other"}
    assert dropped_summary(notes) == ("2 refused, 1 dominated, 1 no latency-table key; first refusal: --dcvit-macs "
                                      "0.99 keeps more than removing one attention module allows")
    assert dropped_summary({}) == "none dropped"


def test_the_report_claims_only_what_was_written():
    from vitrt.search.front import chosen_line

    assert chosen_line(None, None) == "Chosen: none — no recipe met the goal; no engine or recipe was written."
    line = chosen_line({"label": "prune 0.5 + fp32"}, {"ok": True, "max_abs_err": 3.2e-6, "tolerance": 1e-4})
    assert line == "Chosen: prune 0.5 + fp32 — OUT/engine (verified, max abs error 3.2e-06), OUT/recipe.json."
    assert "VERIFICATION FAILED" in chosen_line({"label": "x"}, {"ok": False, "max_abs_err": 1.0})


def test_the_report_re_scales_a_front_points_table_time():
    """pareto.md predicts a front point as its table time x the scale of the measuring run, not the search's
    prediction; a result written before table_ms was kept falls back to that."""
    from vitrt.search.front import predicted_ms

    assert predicted_ms({"table_ms": 2.0, "predicted_ms": 9.0}, 1.5) == 3.0
    assert predicted_ms({"predicted_ms": 9.0}, 1.5) == 9.0


def test_ctrl_c_in_a_search_says_what_is_kept(tmp_path):
    from vitrt.compiler.errors import Interrupted
    from vitrt.search.halving import resumable

    path = tmp_path / ".search" / "state.json"
    path.parent.mkdir()
    state = SearchState(path, {"model": "digits"})
    state.add(Estimate(Recipe(0.5), 2, 4.0, 0.98, 100, 200, 1.5), "recipes/x")
    with pytest.raises(Interrupted, match="1 estimates are kept in .*: run the same command again to continue"):
        with resumable(state, tmp_path / ".search"):
            raise KeyboardInterrupt


def test_the_held_out_split_is_a_fifth_of_every_class_and_never_fitted_on():
    from vitrt.calib.digits import ImageSet
    from vitrt.search.holdout import split_holdout

    labels = torch.tensor([c for c in range(3) for _ in range(10 * (c + 1))])  # 10, 20, 30 images
    data = ImageSet(torch.arange(len(labels), dtype=torch.float32).reshape(-1, 1, 1, 1), labels)
    fit, held = split_holdout(data)
    assert [int((held.labels == c).sum()) for c in range(3)] == [2, 4, 6] and len(fit) == 48
    assert not set(fit.images.flatten().tolist()) & set(held.images.flatten().tolist())
    assert torch.equal(split_holdout(data)[1].images, held.images)  # a fixed seed: the same split every run
    few = ImageSet(torch.zeros(10, 1, 1, 1), torch.tensor([0, 0] + [1] * 8))
    assert split_holdout(few)[1].labels.tolist().count(0) == 1  # a fifth of 2 rounds to none: one still held out


def test_the_search_trains_on_the_fit_split_and_its_test_split_stays_the_sources():
    """A planner asking the search's context for the source's training data gets the fit split (never the held-out
    part); asking for the test split gets the source's own test split."""
    from conftest import tiny_vit
    from vitrt.calib.digits import ImageSet
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.target import TargetConfig
    from vitrt.search.holdout import HoldoutContext, SearchData

    fit = ImageSet(torch.zeros(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    held = ImageSet(torch.ones(2, 3, 32, 32), torch.tensor([0, 1]))
    ctx = HoldoutContext(target=TargetConfig(), teacher=canonicalize(tiny_vit()),
                         search=SearchData("digits", fit, held, None))
    assert ctx.data("digits") is fit and len(ctx.data("digits", limit=2)) == 2
    test = ctx.data("digits", split="test")
    assert len(test) == 450  # the digits test split, not the fit images
    # as QAT asks (labels used): the same answers, a PlanContext's signature (a TypeError broke int8 searches)
    assert ctx.data("digits", labelled=True) is fit and len(ctx.data("digits", split="test", labelled=True)) == 450


def test_measured_speedups_say_how_many_times_faster_than_the_reference(tmp_path, digits_reference):
    """The front's measurement: a model pruned to half the FLOPs is timed side by side with the dense one and its
    speedup is > 1 — dense time over its time, as the two clocks' typical times say (not the inverse)."""
    import vitrt
    from vitrt.search.measure import measure

    vitrt.compile(digits_reference[0], tmp_path / "dense", batch=8, quiet=True)
    vitrt.compile(digits_reference[0], tmp_path / "small", batch=8, quiet=True, prune=0.5, lut=DIGITS_LUT,
                  data="digits", prune_samples=16)
    timed = measure({"dense": tmp_path / "dense", "small": tmp_path / "small"}, "dense", rounds=3, iterations=3)
    dense, small = timed["dense"], timed["small"]
    assert dense.speedup_cpu == dense.speedup_wall == 1.0
    assert small.speedup_cpu > 1.0 and small.speedup_cpu == pytest.approx(dense.cpu_ms / small.cpu_ms, rel=0.3)


def test_an_interrupted_new_search_keeps_its_half_built_table(tmp_path, monkeypatch):
    """Ctrl-C while a new search builds its latency table keeps OUT (the same command resumes the table), as the
    message says; a refusal before anything was made leaves no OUT (test_bad_options_...)."""
    import vitrt.benchmarks.lut_build as lut_build
    from vitrt.compiler.errors import Interrupted
    from vitrt.search.optimize import run

    def interrupted_build(path, **_):
        Path(path).write_text("{}")  # the first points of the table, saved as it goes
        raise KeyboardInterrupt

    monkeypatch.setattr(lut_build, "build_table", interrupted_build)
    with pytest.raises(Interrupted, match="run the same command again to continue"):
        run(OptimizeConfig(model="digits", out=tmp_path / "OUT", max_drop=1.0, quiet=True))
    assert (tmp_path / "OUT" / ".search" / "lut.json").is_file()
