"""Tests added by a mutation audit of vitrt.transforms.tome (schedule, config, solve, planner, report, twin,
graph_pass): each pins a behaviour that a one-line mutation could change without the existing tests noticing.
Tiny models (img 32, patch 4: an 8x8 grid) and hand-written latency tables: seconds each."""

from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs
import pytest
import torch

from conftest import tiny_vit
from vitrt.compiler.cost import vit_flops
from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import PassContext
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.verify import _run_chunks, pinned, run_torch, verification_inputs
from vitrt.transforms.tome.config import TomeConfig
from vitrt.transforms.tome.graph_pass import TokenMergePass, _Emitter, emit_merge
from vitrt.transforms.tome.schedule import BlockMerge, MergePlan, TomeSchedule, requested_r, resolve
from vitrt.transforms.tome.solve import UnreachableTarget, solve_flops, solve_latency
from vitrt.transforms.tome.twin import bipartite_merge


@pytest.fixture(scope="module")
def twin():
    """img 32, patch 4: an 8x8 grid, 1 + 64 tokens, 4 blocks."""
    return canonicalize(tiny_vit(depth=4, patch_size=4))


def refused(call, match: str, error=VitrtError) -> str:
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


# --- TomeSchedule: what a schedule may hold --------------------------------------------------------------------
def test_a_schedule_refuses_a_non_integer_r_even_from_json():
    refused(lambda: TomeSchedule(r=2.5), "r must be a non-negative integer")
    refused(lambda: TomeSchedule.from_dict({"r": 2.5}), "r must be a non-negative integer")
    refused(lambda: TomeSchedule(r=-1), "non-negative")
    assert TomeSchedule(r=0).r == 0


def test_the_ramp_inflection_takes_both_ends_of_minus_one_to_one():
    assert requested_r(TomeSchedule(r=4, inflection=-1.0, skip=0), 2) == ([8, 0], 0)
    assert requested_r(TomeSchedule(r=4, inflection=1.0, skip=0), 2) == ([0, 8], 0)
    for bad in (-1.01, 1.01, 1.5):
        refused(lambda: TomeSchedule(r=4, inflection=bad), "inflection must be in \\[-1, 1\\]")


def test_a_negative_per_block_r_is_refused():
    refused(lambda: TomeSchedule(per_block=(0, -1)), "per-block r must be non-negative")


def test_a_negative_dfe_skip_is_refused():
    refused(lambda: TomeSchedule(r=1, skip=-1), "--dfe-skip must be >= 0", OptionError)
    assert TomeSchedule(r=1, skip=0).skip == 0


def test_window_one_is_a_window_and_zero_is_not():
    assert TomeSchedule(r=1, window=1).window == 1
    refused(lambda: TomeSchedule(r=1, window=0), "--lgtm-window must be >= 1", OptionError)


def test_a_transition_of_zero_blocks_means_global_merging_and_a_negative_one_is_refused(twin):
    plan = resolve(TomeSchedule(r=4, skip=0, window=2, transition=0), twin.spec)
    assert [b.windows for b in plan.blocks] == [1, 1, 1, 1] and plan.r == [4, 4, 4, 4]
    refused(lambda: TomeSchedule(r=4, window=2, transition=-1), "--lgtm-transition must be >= 0", OptionError)


def test_schedule_json_that_is_not_an_object_is_refused_in_one_line():
    refused(lambda: TomeSchedule.from_json("3"), "malformed token-merge schedule JSON")


# --- resolve and requested_r ---------------------------------------------------------------------------------
@pytest.mark.parametrize("depth,skip", [(5, 0), (6, 1), (10, 1), (12, 2), (13, 2)])
def test_the_default_dfe_skip_is_the_first_sixth_of_the_blocks(depth, skip):
    assert requested_r(TomeSchedule(r=2), depth)[1] == skip


def test_a_dfe_skip_of_every_block_merges_nothing_and_one_more_is_refused():
    assert requested_r(TomeSchedule(r=2, skip=12), 12) == ([0] * 12, 12)
    refused(lambda: requested_r(TomeSchedule(r=2, skip=13), 12), "--dfe-skip 13 is larger than the model's 12",
            OptionError)


def test_the_ramp_rounds_down_as_tomes_parse_r():
    # low 2, high 6, step 4/3: 2, 3.33, 4.67, 6 -> ToMe's int() gives 2, 3, 4, 6
    assert requested_r(TomeSchedule(r=4, inflection=0.5, skip=0), 4) == ([2, 3, 4, 6], 0)


def test_dfe_skip_with_an_explicit_list_is_refused(twin):
    refused(lambda: resolve(TomeSchedule(per_block=(0, 2, 2, 2), skip=1), twin.spec), "cannot be combined")


def test_an_explicit_list_starts_its_local_windows_at_its_first_merging_block(twin):
    plan = resolve(TomeSchedule(per_block=(0, 16, 8, 4), window=2), twin.spec)
    assert [b.windows for b in plan.blocks] == [1, 16, 4, 1]
    assert [b.permute for b in plan.blocks] == [False, True, False, False]


def test_a_transition_without_a_window_is_refused(twin):
    refused(lambda: resolve(TomeSchedule(r=2, transition=1), twin.spec), "needs --lgtm-window")


def test_an_explicit_list_may_ask_exactly_half_of_a_block(twin):
    assert resolve(TomeSchedule(per_block=(32, 16, 0, 0)), twin.spec).r == [32, 16, 0, 0]
    refused(lambda: resolve(TomeSchedule(per_block=(33, 0, 0, 0)), twin.spec), "block 0")


def test_a_block_that_merges_nothing_keeps_tokens_out_unset_in_the_spec(twin):
    spec = resolve(TomeSchedule(r=4, skip=1), twin.spec).apply_to_spec(twin.spec)
    assert spec.blocks[0].tokens_out is None and spec.blocks[1].tokens_out == 61


# --- notes ----------------------------------------------------------------------------------------------------
def test_notes_name_the_capped_blocks_only(twin):
    assert resolve(TomeSchedule(r=4, skip=1), twin.spec).notes() == []
    notes = resolve(TomeSchedule(r=20, skip=0), twin.spec).notes()
    # tokens 65 -> 45 -> 25 -> 13: blocks 2 and 3 have 24 and 12 mergeable tokens, so at most 12 and 6
    assert notes == ["token merging: r capped to half of each block's mergeable tokens in blocks 2 (20 -> 12), "
                     "3 (20 -> 6)"]


# --- MergePlan.from_dict ---------------------------------------------------------------------------------------
def plan_data(twin, schedule):
    return json.loads(json.dumps(resolve(schedule, twin.spec).to_dict()))


def test_a_plan_with_zero_windows_is_refused_in_one_line(twin):
    data = plan_data(twin, TomeSchedule(r=4, skip=0))
    data["windows"][0] = 0
    refused(lambda: MergePlan.from_dict(data), "block 0 cannot split 64 mergeable tokens into 0 window")


def test_a_plan_with_a_negative_merge_count_is_refused(twin):
    data = plan_data(twin, TomeSchedule(r=4, skip=0))  # tokens 65, 61, 57, 53
    data["per_window"][3] = -1
    refused(lambda: MergePlan.from_dict(data), "block 3 cannot split")


def test_a_plan_merging_more_than_the_floor_of_half_an_odd_block_is_refused(twin):
    data = plan_data(twin, TomeSchedule(per_block=(5, 29, 0, 0)))  # block 1: 59 mergeable, at most 29
    assert MergePlan.from_dict(data).r == [5, 29, 0, 0]
    data.update(tokens=[65, 60, 30, 30], per_window=[5, 30, 0, 0])
    refused(lambda: MergePlan.from_dict(data), "block 1 merges 30 per window, more than half of its 59")


# --- TomeConfig ------------------------------------------------------------------------------------------------
def test_two_targets_are_refused():
    refused(lambda: TomeConfig(r="2", flops=0.5).validate(), "at most one of", OptionError)
    assert TomeConfig(r="2", skip=1, window=2).validate().r == "2"


def test_every_target_switches_the_stage_on():
    for options in (dict(r="2"), dict(schedule="0,2"), dict(flops=0.5), dict(latency=0.5)):
        assert TomeConfig(**options).enabled
    assert not TomeConfig(skip=1).enabled


@pytest.mark.parametrize("placement", [dict(skip=1), dict(window=2), dict(transition=1)])
def test_placement_options_without_a_target_are_refused(placement):
    refused(lambda: TomeConfig(**placement).validate(), "need --tome", OptionError)


def test_validate_refuses_malformed_values_without_a_model():
    refused(lambda: TomeConfig(r="1,2,3").validate(), "--tome expects R", OptionError)
    refused(lambda: TomeConfig(schedule="0,a").validate(), "--tome-schedule expects", OptionError)


def test_check_returns_the_merged_spec_of_an_explicit_schedule(twin):
    spec = TomeConfig(r="4", skip=0).check(twin.spec, None)
    assert [b.tokens for b in spec.blocks] == [65, 61, 57, 53]
    assert TomeConfig(flops=0.5).check(twin.spec, None) is None


# --- solvers ---------------------------------------------------------------------------------------------------
def test_the_flops_solver_takes_a_fraction_in_zero_exclusive_to_one_inclusive(twin):
    refused(lambda: solve_flops(twin.spec, 0.0), "fraction in \\(0, 1\\]", OptionError)
    plan = solve_flops(twin.spec, 1.0, skip=0)
    assert plan.schedule.r == 0 and not plan.merges_anything


def test_an_unreachable_target_reports_the_least_fraction_reachable(twin):
    with pytest.raises(UnreachableTarget) as info:
        solve_flops(twin.spec, 0.05, skip=0)
    most = resolve(TomeSchedule(r=64, skip=0), twin.spec)
    assert info.value.least == pytest.approx(vit_flops(most.apply_to_spec(twin.spec)) / vit_flops(twin.spec))
    assert info.value.least > 0.05


@pytest.fixture(scope="module")
def coarse():
    """img 32, patch 8 (the patch of the tiny latency-table grid): a 4x4 grid, 1 + 16 tokens, 4 blocks."""
    return canonicalize(tiny_vit(depth=4))


def linear_table(path, batch=1, grid_preset="tiny"):
    """A latency table whose times are proportional to the token count (written in, not measured)."""
    from vitrt.benchmarks.lut_build import grid_of, grid_points, new_table

    grid = grid_of(grid_preset)
    table = new_table("ort", "cpu", batch, grid, grid_preset, "fp32", "dense", None)
    for name, part in table.tables["fp32/dense"].items():
        for index, point in grid_points(grid, name):
            part.ms[index] = 0.01 * point.get("tokens", point.get("patches", 1)) * point.get("emb", 64)
    table.save(path)
    return path


def test_the_latency_solver_refuses_a_table_of_another_batch(tmp_path, coarse):
    path = linear_table(tmp_path / "lut.json", batch=1)
    assert solve_latency(coarse.spec, 0.9, path, target=TargetConfig(batch=1), skip=0).merges_anything
    refused(lambda: solve_latency(coarse.spec, 0.9, path, target=TargetConfig(batch=8), skip=0),
            "built for batch 1, not 8")


# --- planner ---------------------------------------------------------------------------------------------------
def plan_context(lut_path=None, target=TargetConfig()):
    from vitrt.transforms.base import PlanContext

    return PlanContext(target=target, teacher=None, lut_path=lut_path)


def test_the_planner_hands_the_placement_to_the_flops_solver(twin):
    from vitrt.transforms.tome.planner import plan

    assert plan(twin, plan_context(), TomeConfig(flops=0.8, skip=0)).r[0] > 0
    assert plan(twin, plan_context(), TomeConfig(flops=0.8, skip=2)).r[:2] == [0, 0]


def test_the_planner_prefers_tome_lut_over_lut_and_checks_it_against_the_target(tmp_path, coarse):
    from vitrt.transforms.tome.planner import plan

    good = linear_table(tmp_path / "b1.json", batch=1)
    other = linear_table(tmp_path / "b8.json", batch=8)
    options = TomeConfig(latency=0.9, lut=good, skip=0)
    assert plan(coarse, plan_context(lut_path=other), options).merges_anything  # --tome-lut wins over --lut
    refused(lambda: plan(coarse, plan_context(lut_path=other), TomeConfig(latency=0.9, skip=0)),
            "built for batch 8, not 1")


# --- report ----------------------------------------------------------------------------------------------------
def test_describe_names_r_the_first_merging_block_and_the_window(twin):
    from vitrt.transforms.tome.report import describe

    assert describe(resolve(TomeSchedule(r=4, skip=1, window=2), twin.spec)) == "r=4, skip 1, LGTM w=2"
    assert describe(resolve(TomeSchedule(r=4, skip=1), twin.spec)) == "r=4, skip 1"
    assert describe(resolve(TomeSchedule(per_block=(0, 0, 0, 0)), twin.spec)) == "explicit r, skip 4"


def test_the_report_records_the_flops_fraction_and_draws_only_when_tokens_merge(twin):
    from vitrt.transforms.base import ReportContext
    from vitrt.transforms.tome.report import report

    plan = resolve(TomeSchedule(r=4, skip=0), twin.spec)
    after = TokenMergePass(plan).apply_to_twin(twin)
    section = report(plan, ReportContext(twin, after, TargetConfig()))
    assert section.manifest["flops_fraction"] == round(vit_flops(after.spec) / vit_flops(twin.spec), 4) < 1
    assert list(section.files) == ["token_merge.png"]
    nothing = resolve(TomeSchedule(r=0), twin.spec)
    quiet = report(nothing, ReportContext(twin, twin, TargetConfig()))
    assert quiet.files == {} and "picture" not in quiet.manifest


def test_finish_says_when_the_speedup_is_token_merging_alone(tmp_path, twin):
    from vitrt.transforms.base import Finished
    from vitrt.transforms.tome.report import finish

    versus = {"stages": ["tome"], "flops_dense": 200.0, "flops_compiled": 100.0, "dense_median_ms": 3.0,
              "compiled_median_ms": 2.0, "speedup": 1.5, "method": "side by side"}
    plan = resolve(TomeSchedule(r=4, skip=0), twin.spec)
    section = {}
    files = finish(plan, section, Finished(tmp_path, {}, versus))
    measured = section["measured"]
    assert measured["scope"] == "token merging alone" and measured["flops_reduction"] == 2.0
    assert measured["speedup_over_flops_reduction"] == 0.75 and list(files) == ["token_merge_bench.json"]
    empty = {}
    assert finish(resolve(TomeSchedule(r=0), twin.spec), empty, Finished(tmp_path, {}, versus)) == {} and not empty


# --- the graph pass --------------------------------------------------------------------------------------------
def test_the_pass_reports_the_tokens_left_and_the_flops_fraction(twin):
    view = GraphView.from_onnx(lower(twin, batch=1))
    plan = resolve(TomeSchedule(r=4, skip=0), view.spec)
    stats = TokenMergePass(plan).run(view, PassContext()).stats
    assert stats["merged_tokens"] == 16 and stats["tokens_out_last"] == 49
    assert stats["flops_fraction"] == round(vit_flops(plan.apply_to_spec(twin.spec)) / vit_flops(twin.spec), 4) < 1


def merge_graph(n: int, qk: int, r: int):
    """emit_merge alone: one global window of ``n`` tokens (no prefix, one channel), keys [1, n, qk], ``r`` merges."""
    graph = gs.Graph(opset=17)
    x = gs.Variable("x", dtype=np.float32, shape=(1, n, 1))
    keys = gs.Variable("keys", dtype=np.float32, shape=(1, n, qk))
    graph.inputs = [x, keys]
    out, _ = emit_merge(_Emitter(graph), x, keys, None, BlockMerge(0, n, 1, r, False), prefix=0, emb=1, heads=1,
                        qk=qk, order=None)
    out.dtype, out.shape = np.float32, None
    graph.outputs = [out]
    return gs.export_onnx(graph.cleanup().toposort())


def graph_merge(x: np.ndarray, metric: np.ndarray, r: int) -> np.ndarray:
    import onnxruntime as ort

    model = merge_graph(x.shape[1], metric.shape[-1], r)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "keys": metric})[0]


def twin_merge(x: np.ndarray, metric: np.ndarray, r: int) -> np.ndarray:
    out, _, _ = bipartite_merge(torch.from_numpy(x), torch.from_numpy(metric), torch.ones(*x.shape[:2], 1), r)
    return out.numpy()


def test_the_graph_merges_near_duplicates_into_the_closer_token_by_distance():
    """A0's two candidates have cosines that both round to 1 in float32: the graph's ArgMin over the distances picks
    the truly closer B1, as the twin does (one candidate, by cosine alone, would be B0)."""
    metric = np.array([[[1.0, 0, 0], [1.0, 2e-4, 0], [0, 0, 1.0], [1.0, 1e-4, 0]]], dtype=np.float32)
    x = np.array([[[0.0], [10.0], [20.0], [30.0]]], dtype=np.float32)
    assert graph_merge(x, metric, 1).flatten().tolist() == twin_merge(x, metric, 1).flatten().tolist() == [20, 10, 15]


def test_exact_ties_go_to_the_lower_index_in_the_twin_and_the_graph():
    """A0 is exactly as far from B0 as from B1: both pick B0 (TopK's and ArgMin's first index). With 200 identical
    tokens every score ties: every A token's best is B0 and the first r A tokens merge (an unstable sort of the
    scores would not keep 100 ties in order)."""
    metric = np.array([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, -1.0, 0]]], dtype=np.float32)
    x = np.array([[[0.0], [10.0], [20.0], [30.0]]], dtype=np.float32)
    assert graph_merge(x, metric, 1).flatten().tolist() == twin_merge(x, metric, 1).flatten().tolist() == [20, 5, 30]
    n, r = 200, 3
    x, metric = np.arange(n, dtype=np.float32).reshape(1, n, 1), np.ones((1, n, 3), dtype=np.float32)
    want = np.concatenate([x[0, 2 * r::2, 0], [(1 + 0 + 2 + 4) / 4], x[0, 3::2, 0]])
    assert np.array_equal(twin_merge(x, metric, r).flatten(), want)
    assert np.array_equal(graph_merge(x, metric, r).flatten(), want)


def test_a_block_without_attention_after_the_first_merge_keeps_its_graph(twin):
    """The pass rewrites the token counts of the blocks after the first merge; one whose attention was pruned away
    has no per-head reshapes to rewrite, and ONNX Runtime still equals the twin."""
    import dataclasses

    from vitrt.compiler.pass_manager import FP32_TOLERANCE, PassManager
    from vitrt.compiler.verify import run_onnx
    from vitrt.transforms.prune.graph_pass import PrunePass
    from vitrt.transforms.prune.plan import BlockPlan, PruningPlan

    prune = PruningPlan.keep_all(twin.spec)
    blocks = list(prune.blocks)
    blocks[2] = BlockPlan((), (), (), blocks[2].mlp)
    prune = dataclasses.replace(prune, blocks=tuple(blocks)).validate()
    pruned = PrunePass(prune).apply_to_twin(twin)
    plan = resolve(TomeSchedule(r=4, skip=0), pruned.spec)
    assert plan.r == [4, 4, 0, 4]
    result = PassManager([PrunePass(prune), TokenMergePass(plan)]).run(
        GraphView.from_onnx(lower(twin, batch=1)), PassContext(), twin=twin)
    images = verification_inputs(twin.spec, 1, seed=2, count=1)
    assert float(np.max(np.abs(run_onnx(result.view.to_onnx(), images, 1) - run_torch(result.twin, images)))) \
        <= FP32_TOLERANCE


# --- verification's pinned decisions ----------------------------------------------------------------------------
def test_a_decision_flip_in_one_window_counts_the_image_for_its_src_and_for_its_dst(twin):
    """Under LGTM an image has many windows: one window decided otherwise (its merged A token, or only the B token
    it merges into) makes the image a flip."""
    # only block 0 merges (16 windows, 1 merge each): a changed decision there cannot tip a later block's decisions
    plan = resolve(TomeSchedule(per_block=(16, 0, 0, 0), window=2), twin.spec)
    assert [(b.windows, b.per_window) for b in plan.blocks] == [(16, 1), (4, 0), (1, 0), (1, 0)]
    view = TokenMergePass(plan).run(GraphView.from_onnx(lower(twin, batch=1)), PassContext()).view
    merged_twin = TokenMergePass(plan).apply_to_twin(twin)
    decider = merged_twin.blocks[0]
    names = decider.decision_tensors
    images = verification_inputs(twin.spec, 1, seed=3, count=1)
    outputs = _run_chunks(view.to_onnx(), images, 1, tuple(n for m in merged_twin.blocks
                                                            for n in getattr(m, "decision_tensors", ())))[0]
    all_names = [n for m in merged_twin.blocks for n in getattr(m, "decision_tensors", ())]
    values = dict(zip(all_names, outputs[1:]))
    deciders = [m for m in merged_twin.blocks if getattr(m, "decision_tensors", ())]

    def flips(changed):
        with pinned(deciders, changed, 1) as flipped:
            run_torch(merged_twin, images)
        return flipped()

    assert flips(values) == 0
    src, dst = values[names[0]].copy(), values[names[0].replace("edges.indices", "dst.out")].copy()
    assert src.shape == dst.shape == (16, 1)
    other_src = dict(values)
    other_src[names[0]] = src.copy()
    other_src[names[0]][5, 0] = 1 - src[5, 0]  # window 5 merges its other A token
    assert flips(other_src) == 1
    other_dst = dict(values)
    other_dst[names[1]] = dst.copy()
    other_dst[names[1]][5, 0] = 1 - dst[5, 0]  # window 5 merges into its other B token
    assert flips(other_dst) == 1


# Defects the audit found, fixed with these tests

def small_twin(depth):
    """img 32, patch 4: an 8x8 grid, 1 + 64 tokens."""
    return canonicalize(tiny_vit(depth=depth, patch_size=4))


def test_the_flops_solver_looks_past_an_lgtm_plateau():
    """Fixed after the audit (the test failed before): under LGTM, consecutive r give the same plan (ceil(r / windows)
    per window), so the solver's "stop when r no longer changes the plan" ended the search at r=2 and called a
    reachable target unreachable."""
    spec = small_twin(depth=2).spec  # both blocks local: 16 windows, then 4
    ratio = {r: vit_flops(resolve(TomeSchedule(r=r, skip=0, window=2), spec).apply_to_spec(spec)) / vit_flops(spec)
             for r in (4, 5)}
    assert ratio[5] < ratio[4]  # r=5 merges more than r=1..4, which all give the same plan
    plan = solve_flops(spec, ratio[5], skip=0, window=2)
    assert plan.schedule.r == 5


def plan_with_windows(depth=4):
    spec = small_twin(depth).spec
    return spec, json.loads(json.dumps(resolve(TomeSchedule(r=4, skip=1, window=2, transition=2), spec).to_dict()))


@pytest.mark.parametrize("window", [None, 4])
def test_a_plan_whose_windows_its_schedule_cannot_make_is_refused(window):
    """Fixed after the audit (the test failed before): MergePlan.from_dict (a recipe's or a twin record's plan) checks
    the plan for consistency, but not its windows against the schedule's --lgtm-window: without one the twin died in
    quadtree_order (TypeError), with another (4: 4 windows, the plan splits into 16) the merge silently ran in
    windows that are not spatial."""
    _, data = plan_with_windows()
    data["schedule"]["window"] = window
    with pytest.raises(VitrtError, match="window") as info:
        MergePlan.from_dict(data)
    assert "\n" not in str(info.value)


def test_a_merge_plan_for_blocks_without_attention_is_refused_in_one_line():
    """Fixed after the audit (the test failed before): check_matches (the "made for another model" refusal) compares
    depth, prefix, grid and tokens but not which blocks have attention: a plan merging in a block whose attention
    was pruned away crashed the twin with AttributeError ('NoneType' object has no attribute 'heads') and the graph
    pass with a misleading SpecError."""
    import dataclasses

    from vitrt.transforms.prune.graph_pass import PrunePass
    from vitrt.transforms.prune.plan import BlockPlan, PruningPlan
    from vitrt.transforms.tome.twin import apply_plan

    twin = small_twin(4)
    plan = resolve(TomeSchedule(r=4, skip=0), twin.spec)  # merges in every block
    prune = PruningPlan.keep_all(twin.spec)
    blocks = list(prune.blocks)
    blocks[1] = BlockPlan((), (), (), blocks[1].mlp)
    pruned = PrunePass(dataclasses.replace(prune, blocks=tuple(blocks)).validate()).apply_to_twin(twin)
    with pytest.raises(VitrtError, match="block.*1.*attention") as info:
        apply_plan(pruned, plan)(torch.zeros(1, 3, 32, 32))
    assert "\n" not in str(info.value)


def test_schedule_json_with_a_non_numeric_inflection_is_refused_in_one_line():
    """Fixed after the audit (the test failed before): from_json turns malformed JSON into a one-line VitrtError,
    except a ValueError from float(): an inflection of "x" escaped as a bare ValueError."""
    with pytest.raises(VitrtError, match="malformed token-merge schedule JSON"):
        TomeSchedule.from_json('{"r": 3, "inflection": "x"}')


@pytest.mark.parametrize("options", [dict(tome="-2"), dict(tome="4,2"), dict(tome_schedule="-1,0,0,0"),
                                     dict(tome="2", lgtm_transition=1), dict(tome_flops=0.5, lgtm_transition=1),
                                     dict(tome_schedule="0,2,2,2", dfe_skip=1)])
def test_token_merging_option_values_are_refused_with_option_errors(tmp_path, options):
    """Fixed after the audit (the test failed before): ``except OptionError`` catches every refusal of an option's
    value (tests/test_first_hour.py), but a negative r, an inflection outside [-1, 1], a negative per-block r,
    --lgtm-transition without --lgtm-window and --dfe-skip with --tome-schedule were bare VitrtErrors
    (TomeSchedule.__post_init__, requested_r, resolve)."""
    import vitrt
    from vitrt.compiler.errors import OptionError

    with pytest.raises(OptionError):
        vitrt.compile(tiny_vit(depth=4, patch_size=4), tmp_path / "o", quiet=True, **options)
    assert not (tmp_path / "o").exists()
