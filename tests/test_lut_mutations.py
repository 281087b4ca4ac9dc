"""The latency table's arithmetic and refusals on hand-made tables: every grid value is written in (a linear function
of the point, which multilinear interpolation reproduces exactly), so each assertion is about a value set here, never
about a timing. Each test pins a behaviour that a mutation of vitrt/compiler/lut.py or vitrt/benchmarks/lut_merge.py
left unchecked by the other tests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lut import (MIN_GRID_MS, PART_AXES, REFINE_RADIUS, UNCHECKED, LatencyTable, SubTable,
                                distribute_spanning, measured_threads)
from vitrt.compiler.spec import BlockSpec, ViTSpec

# A small grid (emb 32/64, 1-2 heads of 16/32, MLP 64/128, 9/17 tokens, patch 8, 10 classes); keys and merged have two
# values each so that a merge lookup at heads · qk differs from one at heads · v.
GRID = {"emb": [32, 64], "heads": [1, 2], "qk": [16, 32], "v": [16, 32], "tokens": [9, 17], "mlp": [64, 128],
        "patches": [4, 16], "keys": [32, 64], "merged": [4, 8], "k": [16, 64], "n": [16, 64], "rank": [8, 16]}
# value(part, point) = BASE[part] + Σ SLOPE[axis] · point[axis]: linear, so every query inside the grid is exact.
BASE = {"attn": 1.0, "mlp": 2.0, "stem": 0.5, "head": 0.3, "head_distilled": 0.4, "merge": 0.2, "linear": 0.1,
        "lowrank": 0.05}
SLOPE = {"emb": 0.01, "heads": 0.1, "qk": 0.002, "v": 0.003, "tokens": 0.02, "mlp": 0.004, "patches": 0.05,
         "keys": 0.006, "merged": -0.01, "k": 0.001, "n": 0.0015, "rank": 0.007}
REL = 1e-9  # interpolating a linear function: exact up to rounding


def value(part: str, **point) -> float:
    return BASE[part] + sum(SLOPE[a] * float(point[a]) for a in PART_AXES[part])


def subtable(part: str, axes=None) -> SubTable:
    axes = axes or {a: list(GRID[a]) for a in PART_AXES[part]}
    ms = np.zeros(tuple(len(v) for v in axes.values()))
    for index in np.ndindex(ms.shape):
        ms[index] = value(part, **{a: axes[a][i] for a, i in zip(axes, index)})
    return SubTable(axes, ms)


def hand_table(parts=tuple(PART_AXES), **kwargs) -> LatencyTable:
    kwargs = {"backend": "ort", "device": "test device", "batch": 1, "overhead_ms": 0.25, "patch": 8, "in_chans": 3,
              "num_classes": 10, "meta": {"threads": 1}, **kwargs}
    return LatencyTable(tables={"fp32/dense": {p: subtable(p) for p in parts}}, **kwargs)


BLOCK = dict(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=17)  # a grid point
BLOCK_KEY = {**BLOCK, "tokens_out": 17}


def block(**changes) -> BlockSpec:
    return BlockSpec(**{"heads": 2, "qk": 32, "v": 32, "mlp": 128, "tokens": 17, "scale": 32 ** -0.5, **changes})


def spec_of(*blocks, **changes) -> ViTSpec:
    """emb 64, patch 8 on 32 x 32 images (16 patches + class token = 17 tokens), 10 classes."""
    kwargs = {"emb": 64, "patch": 8, "img": 32, "in_chans": 3, "prefix_tokens": 1, "num_classes": 10, **changes}
    return ViTSpec(blocks=tuple(blocks), **kwargs).validate()


def manifest(spec, per_block_ms, median_ms, table):
    return {"model": "hand", "spec_after": spec.to_dict(),
            "latency": {"backend": table.backend, "device": table.device, "batch": table.batch, "median_ms": median_ms,
                        "per_block_ms": per_block_ms}}


def stored_ratio(table) -> float:
    """The one hand-added block point's measured-over-grid ratio as the table stores it (5 decimals)."""
    (point,) = [p for p in table.points if p["kind"] == "block"]
    key = point["key"]
    return float(np.mean(point["ms"])) / table.grid_block_ms(**{f: key[f] for f in BLOCK_KEY})


def weight(a: dict, b: dict) -> float:
    """The module docstring's w = exp(-(d / REFINE_RADIUS)²), d the Euclidean distance in log2(dimension + 1)."""
    d = math.sqrt(sum((math.log2(a[f] + 1.0) - math.log2(b[f] + 1.0)) ** 2 for f in a))
    return math.exp(-(d / REFINE_RADIUS) ** 2)


# --- lookups and composition --------------------------------------------------------------------------------------
def test_the_hand_table_answers_its_own_values():
    """The fixture itself: a grid point, a point between grid values, and a whole block (attention + MLP)."""
    table = hand_table()
    assert table.grid_block_ms(**BLOCK) == pytest.approx(value("attn", **BLOCK) + value("mlp", **BLOCK), rel=REL)
    between = dict(emb=48, heads=1.5, qk=24, v=20, mlp=96, tokens=13)
    assert table.grid_block_ms(**between) == pytest.approx(value("attn", **between) + value("mlp", **between), rel=REL)


def test_clamping_below_the_grid_answers_at_its_lower_edge():
    """--clamp moves a coordinate below the grid onto its first value, as one above onto its last."""
    table = hand_table()
    low = table.grid_block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=5, clamp=True)
    assert low == pytest.approx(table.grid_block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=9), rel=REL)
    assert table.stem_ms(emb=16, patches=1, clamp=True) == pytest.approx(value("stem", emb=32, patches=4), rel=REL)


def test_a_rebuilt_interpolator_forgets_the_old_answers():
    """The lookup memo belongs to one interpolator: new values (with ``_interp`` reset) are answered, not the old."""
    sub = subtable("stem")
    point = {"emb": 48, "patches": 10}
    assert sub.lookup(point, clamp=False, what="stem") == pytest.approx(value("stem", **point), rel=REL)
    sub.ms = sub.ms * 2.0
    sub._interp = None
    assert sub.lookup(point, clamp=False, what="stem") == pytest.approx(2.0 * value("stem", **point), rel=REL)


def test_the_merge_cost_is_looked_up_at_heads_times_qk_keys():
    """The merge sub-table's ``keys`` axis is heads · qk (the keys the bipartite matching compares), not heads · v;
    the block's MLP runs on the merged tokens. :meth:`merge_ms` reads the same point."""
    table = hand_table()
    query = dict(emb=64, heads=2, qk=16, v=32, mlp=128, tokens=17, tokens_out=9)
    want_merge = value("merge", emb=64, keys=32, tokens=17, merged=8)
    assert want_merge != pytest.approx(value("merge", emb=64, keys=64, tokens=17, merged=8))  # the check can fail
    want = value("attn", **query) + want_merge + value("mlp", emb=64, mlp=128, tokens=9)
    assert table.grid_block_ms(**query) == pytest.approx(want, rel=REL)
    spec = spec_of(block(qk=16, tokens_out=9), block(qk=16, tokens=9))
    assert table.merge_ms(spec) == pytest.approx(want_merge, rel=REL)


def test_merge_ms_counts_only_blocks_that_have_attention_and_merge():
    """A block without attention adds no merge cost to its prediction (there are no keys to match), so merge_ms,
    the merge part of model_ms, leaves it out; a table without a merge sub-table predicts no merge cost at all."""
    table = hand_table()
    spec = spec_of(block(heads=0, qk=0, v=0, tokens_out=9), block(tokens=9))
    assert table.merge_ms(spec) == 0.0
    assert table.model_breakdown(spec)["blocks.0"] == pytest.approx(value("mlp", emb=64, mlp=128, tokens=9), rel=REL)
    no_merge = hand_table(parts=("attn", "mlp", "stem", "head", "head_distilled"))
    merging = spec_of(block(tokens_out=9), block(tokens=9))
    assert no_merge.merge_ms(merging) == 0.0
    assert no_merge.grid_block_ms(**BLOCK, tokens_out=9) == pytest.approx(
        value("attn", **BLOCK) + value("mlp", emb=64, mlp=128, tokens=9), rel=REL)


def test_a_factored_layer_needs_both_the_linear_and_the_lowrank_sub_tables():
    """lowrank(t, k, r, n) - linear(t, k, n): without either sub-table the price is refused in one line."""
    table = hand_table()
    want = value("lowrank", tokens=17, k=64, rank=16, n=64) - value("linear", tokens=17, k=64, n=64)
    assert table.lowrank_delta_ms(tokens=17, k=64, rank=16, n=64) == pytest.approx(want, rel=REL)
    for missing in ("linear", "lowrank"):
        table = hand_table()
        del table.tables["fp32/dense"][missing]
        with pytest.raises(VitrtError, match="no linear / lowrank sub-tables"):
            table.lowrank_delta_ms(tokens=17, k=64, rank=16, n=64)


def test_check_spec_compares_the_number_of_classes():
    """The head was timed with the table's classes: a model with another head size is refused, like another patch."""
    table = hand_table()
    with pytest.raises(VitrtError, match="num_classes=10, the model has num_classes=1000"):
        table.model_ms(spec_of(block(), num_classes=1000))


# --- inversions ---------------------------------------------------------------------------------------------------
def test_an_inversion_is_a_drop_of_more_than_the_tolerance():
    """"Faster by more than 10 %": a larger size exactly 10 % faster is not reported, 10.1 % is."""
    from vitrt.compiler.lut import inversions

    sub = SubTable({"emb": [32, 64], "tokens": [9]}, np.array([[1.0], [0.9]]))
    assert inversions(sub) == (1, [])
    sub.ms[1, 0] = 0.899
    assert inversions(sub)[1] == [{"axis": "emb", "at": {"emb": 32, "tokens": 9}, "larger": 64, "faster_by": 0.101}]


def test_values_at_or_below_the_floor_are_not_compared():
    """A grid value at or below MIN_GRID_MS (the overhead subtraction left nothing) has no ratio to its neighbour:
    the pair is neither counted nor reported, however much smaller the larger size's value."""
    from vitrt.compiler.lut import inversions

    # rows emb 32 / 64, columns tokens 9 / 17: emb 32 -> 64 at tokens 9 drops from half the floor to a tenth of it
    sub = SubTable({"emb": [32, 64], "tokens": [9, 17]}, np.array([[0.5 * MIN_GRID_MS, 1.0], [0.1 * MIN_GRID_MS, 1.0]]))
    assert inversions(sub) == (1, [])  # the one pair compared: emb 32 -> 64 at tokens 17


def test_the_inversion_note_names_the_worst_one():
    """The one line names the largest drop, wherever it is in the list."""
    from vitrt.compiler.lut import inversion_note

    found = [{"part": "mlp", "axis": "mlp", "at": {"emb": 64, "mlp": 64, "tokens": 9}, "larger": 128,
              "faster_by": 0.2},
             {"part": "attn", "axis": "heads", "at": {"emb": 32, "heads": 1}, "larger": 2, "faster_by": 0.4}]
    assert "(worst: attn heads 1 → 2, 40% faster, at emb 32)" in inversion_note(10, found)


def test_the_tables_inversions_name_their_key_and_part():
    """LatencyTable.inversions adds the precision/sparsity key and the sub-table to each inversion, and the note
    names the part of the worst one."""
    table = hand_table()
    mlp = table.tables["fp32/dense"]["mlp"]
    # emb 64, tokens 9: MLP 128 at 2.74 ms, 10.9 % below MLP 64's 3.076 ms (and 9 % below emb 32's 3.012: not reported)
    mlp.ms[1, 1, 0] = 2.74
    compared, found = table.inversions()
    assert found == [{"key": "fp32/dense", "part": "mlp", "axis": "mlp", "at": {"emb": 64, "mlp": 64, "tokens": 9},
                      "larger": 128, "faster_by": 0.109}]
    note = table.record_inversions()
    assert "(worst: mlp mlp 64 → 128, 11% faster, at emb 64, tokens 9)" in note
    assert table.meta["inversions"] == {"tolerance": 0.10, "compared": compared, "found": found}


# --- spanning layers and threads ----------------------------------------------------------------------------------
def test_a_spanning_layer_must_name_a_range_of_the_models_groups():
    """A layer whose first group comes after its last covers no range: refused, not silently dropped; so is one whose
    first group the model does not have (a one-line error, not a KeyError)."""
    order = ["stem", "blocks.0", "blocks.1", "head"]
    predicted = {"stem": 1.0, "blocks.0": 2.0, "blocks.1": 3.0, "head": 1.0}
    with pytest.raises(VitrtError, match="covers blocks.1 .. blocks.0, which is not a range"):
        distribute_spanning({}, [{"layer": "x", "ms": 1.0, "first": "blocks.1", "last": "blocks.0"}], order, predicted)
    with pytest.raises(VitrtError, match="covers blocks.7 .. head, which is not a range"):  # the first unknown
        distribute_spanning({}, [{"layer": "x", "ms": 1.0, "first": "blocks.7", "last": "head"}], order, predicted)


def test_measured_threads_reads_the_manifests_record():
    """An int is --threads; anything else recorded (``runtime default (N cores)``, or a bool, which is no count) is
    the runtime's default; no record is not compared."""
    assert measured_threads({"threads": 2}) == 2
    assert measured_threads({"threads": "runtime default (2 cores)"}) is None
    assert measured_threads({"threads": True}) is None
    assert measured_threads({}) is UNCHECKED


# --- the correction factor (module docstring) ---------------------------------------------------------------------
def test_a_point_2x_away_in_one_axis_gets_about_2_percent_of_its_correction():
    """A lone point (its a = log(m / g)) whose MLP is half the query's (weight ≈ 0.02 < 1) moves the
    query by m/g to the power w, not by the whole m/g."""
    table = hand_table()
    near = {**BLOCK_KEY, "mlp": 64}
    table.add_point("block", near, 4.0 * table.grid_block_ms(**{**BLOCK, "mlp": 64}))
    w = weight(BLOCK_KEY, near)
    assert 0.015 < w < 0.025  # "~2 % of the correction"
    want = table.grid_block_ms(**BLOCK) * stored_ratio(table) ** w
    assert table.block_ms(**BLOCK) == pytest.approx(want, rel=REL)


def test_the_correction_is_euclidean_in_log2_dimensions():
    """d is the Euclidean distance: a point 2x away in two axes has d² the sum of both squares (weight ≈ e^-8)."""
    table = hand_table()
    near = {**BLOCK_KEY, "mlp": 64, "emb": 32}
    table.add_point("block", near, 50.0 * table.grid_block_ms(**{**BLOCK, "mlp": 64, "emb": 32}))
    w = weight(BLOCK_KEY, near)
    assert 2e-4 < w < 5e-4
    want = table.grid_block_ms(**BLOCK) * stored_ratio(table) ** w
    assert table.block_ms(**BLOCK) == pytest.approx(want, rel=REL)


def test_near_points_are_each_corrected_exactly_and_the_space_between_by_their_common_ratio():
    """Two measured points one head apart (weight 0.25 to each other): each is corrected by its own ratio (a weighted
    mean blended them), and halfway between two points of one ratio the correction is that ratio (Σ w > 1)."""
    table = hand_table()
    near = {**BLOCK_KEY, "heads": 1}
    table.add_point("block", BLOCK_KEY, 1.5 * table.grid_block_ms(**BLOCK))
    table.add_point("block", near, 3.0 * table.grid_block_ms(**{**BLOCK, "heads": 1}))
    assert weight(BLOCK_KEY, near) > 0.2
    for key in (BLOCK_KEY, near):
        query = {f: key[f] for f in BLOCK}
        (ms,) = [p["ms"][0] for p in table.points if p["key"] == key]
        assert table.block_ms(**query) == pytest.approx(ms, rel=REL)
    same = hand_table()
    for key in (BLOCK_KEY, near):
        query = {f: key[f] for f in BLOCK}
        same.add_point("block", key, 2.0 * same.grid_block_ms(**query))
    halfway = {**BLOCK, "heads": 1.5}
    assert 2 * weight({**BLOCK_KEY, "heads": 1.5}, BLOCK_KEY) > 1
    ratio = same.points[0]["ms"][0] / same.grid_block_ms(**BLOCK)  # 2 as stored, to 5 decimals
    assert same.block_ms(**halfway) == pytest.approx(same.grid_block_ms(**halfway) * ratio, rel=1e-6)


def test_points_too_close_to_tell_apart_share_their_mean():
    """MLP 127 and 128 (weight 0.9995): the system that would fit both exactly is near singular (its small singular
    value below REFINE_RCOND of the large one), so the two measurements share their mean in log instead of fitting
    their noise with huge opposite coefficients; MLP 112 and 128 (weight 0.87) are told apart, each exact."""
    for other, exact in ((127, False), (112, True)):
        table = hand_table()
        close = {**BLOCK_KEY, "mlp": other}
        table.add_point("block", BLOCK_KEY, 1.5 * table.grid_block_ms(**BLOCK))
        table.add_point("block", close, 3.0 * table.grid_block_ms(**{**BLOCK, "mlp": other}))
        ratios = [p["ms"][0] / table.grid_block_ms(**{f: p["key"][f] for f in BLOCK}) for p in table.points]
        shared = math.exp(sum(map(math.log, ratios)) / 2)
        for query, ratio in ((BLOCK, ratios[0]), ({**BLOCK, "mlp": other}, ratios[1])):
            want = table.grid_block_ms(**query) * (ratio if exact else shared)
            assert table.block_ms(**query) == pytest.approx(want, rel=1e-3), (other, query)


def test_an_unrelated_point_leaves_a_block_exactly_as_the_grid_says():
    """"Unrelated blocks are unaffected": a point far away in log2 dimensions (weight below 1e-6) changes nothing,
    not even in the last digits."""
    table = hand_table()
    far = {"emb": 32, "heads": 1, "qk": 16, "v": 32, "mlp": 64, "tokens": 17, "tokens_out": 9}
    assert 1e-8 < weight(BLOCK_KEY, far) < 1e-6
    table.add_point("block", far, 1000.0 * table.grid_block_ms(**{f: far[f] for f in BLOCK}))
    assert table.block_ms(**BLOCK) == table.grid_block_ms(**BLOCK)


def test_an_attention_less_block_is_corrected_whatever_qk_and_v_it_names():
    """With heads == 0 the qk and v of a block are meaningless: a point stored with 0 corrects a query naming any."""
    table = hand_table()
    key = {**BLOCK_KEY, "heads": 0, "qk": 0, "v": 0}
    table.add_point("block", key, 2.0 * table.grid_block_ms(**{**BLOCK, "heads": 0, "qk": 0, "v": 0}))
    query = {**BLOCK, "heads": 0}  # qk 32, v 32 left in
    assert table.block_ms(**query) == pytest.approx(table.grid_block_ms(**query) * stored_ratio(table), rel=REL)


def test_a_merging_blocks_point_is_its_own():
    """tokens_out is part of a block point: a merging block's point corrects that block exactly."""
    table = hand_table()
    merging = {**BLOCK, "tokens_out": 9}
    table.add_point("block", merging, 2.0 * table.grid_block_ms(**merging))
    assert table.block_ms(**merging) == pytest.approx(table.grid_block_ms(**merging) * stored_ratio(table), rel=REL)
    assert table.block_ms(**BLOCK) < 1.1 * table.grid_block_ms(**BLOCK)  # log2(18/10) away: a small part of it


def test_a_point_outside_the_grid_still_corrects_queries_inside_it():
    """A refinement (which clamps) may store a point outside the grid; a later unclamped query inside the grid is
    answered, the stored point's grid value taken at the grid's edge."""
    table = hand_table()
    outside = {**BLOCK_KEY, "emb": 128}
    table.add_point("block", outside, 2.0 * table.grid_block_ms(**BLOCK))  # emb 128 clamps to emb 64
    w = weight(BLOCK_KEY, outside)
    ratio = table.points[0]["ms"][0] / table.grid_block_ms(**BLOCK)
    assert table.block_ms(**BLOCK) == pytest.approx(table.grid_block_ms(**BLOCK) * ratio ** w, rel=REL)


def test_two_noisy_neighbours_never_extrapolate_beyond_what_was_measured():
    """MLP 100 measured at the grid's value and MLP 128 at 1.5x (weight 0.61: told apart, each exact): the exact fit
    continues the slope below MLP 100 (to 0.90 at MLP 64); the correction is clipped to what the points that correct
    a query measured, 1 .. 1.5 here. A point too far to correct it does not widen the range."""
    table = hand_table()
    for mlp, ratio in ((100, 1.0), (128, 1.5)):
        table.add_point("block", {**BLOCK_KEY, "mlp": mlp}, ratio * table.grid_block_ms(**{**BLOCK, "mlp": mlp}))
    for mlp, ratio in ((100, 1.0), (128, 1.5)):
        assert table.block_ms(**{**BLOCK, "mlp": mlp}) == pytest.approx(
            ratio * table.grid_block_ms(**{**BLOCK, "mlp": mlp}), rel=1e-5)
    low = {**BLOCK, "mlp": 64}
    assert table.block_ms(**low) == pytest.approx(table.grid_block_ms(**low), rel=1e-5)  # clipped at 1: the fit, 0.90
    between = {**BLOCK, "mlp": 114}
    assert table.grid_block_ms(**between) < table.block_ms(**between) < 1.5 * table.grid_block_ms(**between)
    far = {"emb": 32, "heads": 1, "qk": 16, "v": 16, "mlp": 64, "tokens": 9, "tokens_out": 9}
    assert weight({**BLOCK_KEY, "mlp": 64}, far) < 1e-6
    table.add_point("block", far, 0.5 * table.grid_block_ms(**{f: far[f] for f in BLOCK}))
    assert table.block_ms(**low) == pytest.approx(table.grid_block_ms(**low), rel=1e-5)


# --- add_point ----------------------------------------------------------------------------------------------------
def test_add_point_refuses_an_infinite_time_and_a_key_the_table_lacks():
    """What the loader would refuse is not stored: an infinite latency, or a point of a precision the table lacks."""
    table = hand_table()
    with pytest.raises(VitrtError, match="not a positive latency"):
        table.add_point("stem", {"emb": 64, "patches": 16}, math.inf)
    with pytest.raises(VitrtError, match="no 'fp16/dense' entries"):
        table.add_point("stem", {"emb": 64, "patches": 16}, 1.0, precision="fp16")
    assert table.points == []


def test_add_point_keeps_its_own_copy_of_the_key():
    """The stored key does not change when the caller reuses its dict."""
    table = hand_table()
    key = {"emb": 64, "patches": 16}
    table.add_point("stem", key, 1.0)
    key["emb"] = 32
    assert table.points[0]["key"] == {"emb": 64, "patches": 16}


# --- refine -------------------------------------------------------------------------------------------------------
TWO_BLOCKS = {"stem": 1.0, "blocks.0": 3.0, "blocks.1": 3.0, "head": 0.5}


def test_refine_scales_the_profile_to_the_measured_time_less_the_overhead():
    """Each group's stored time is its profiled time · (measured - overhead) / Σ profiled groups ('other' left out
    of the sum), and the refined model then predicts the measured time; identical blocks share one point, which names
    its measurement once."""
    table = hand_table()
    spec = spec_of(block(), block())
    table.refine(manifest(spec, {**TWO_BLOCKS, "other": 0.7}, 10.25, table), source="hand/manifest.json")
    scale = (10.25 - 0.25) / 7.5
    stored = {p["kind"]: p for p in table.points}
    assert stored["stem"]["ms"] == [pytest.approx(1.0 * scale, abs=1e-5)]
    assert stored["block"]["ms"] == [pytest.approx(3.0 * scale, abs=1e-5)] * 2
    assert [s["source"] for s in stored["block"]["sources"]] == ["hand/manifest.json"]
    assert table.model_ms(spec) == pytest.approx(10.25, rel=1e-5)


def test_a_block_with_one_half_removed_is_refined():
    """Only a block with neither attention nor MLP is empty; one that keeps either half has profiled time, must be
    in the profile, and gets its own point."""
    table = hand_table()
    spec = spec_of(block(mlp=0), block(heads=0, qk=0, v=0))
    table.refine(manifest(spec, dict(TWO_BLOCKS), 10.25, table), source="halves.json")
    assert sorted(p["kind"] for p in table.points) == ["block", "block", "head", "stem"]
    assert table.model_ms(spec) == pytest.approx(10.25, rel=1e-5)
    with pytest.raises(VitrtError, match="lacks blocks.0"):
        table.refine(manifest(spec, {"stem": 1.0, "blocks.1": 3.0, "head": 0.5}, 9.0, table))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["latency"].pop("median_ms"), "no measured latency with per_block_ms: compile with --bench"),
    (lambda m: m["latency"]["per_block_ms"].pop("head"), "per_block_ms lacks head"),
    (lambda m: m["latency"].update(per_block_ms=dict.fromkeys(TWO_BLOCKS, 0.0)), "figures are not positive"),
    (lambda m: m["latency"].update(median_ms=0.2), "figures are not positive"),  # below the 0.25 ms overhead
    (lambda m: m["spec_after"].update(extra={"lowrank": {"ranks": {"blocks.0.mlp.fc1": 16}}}),
     "factored \\(low-rank\\) layers"),
])
def test_refine_refuses_what_it_cannot_fold_in_one_line(change, message):
    """Each refusal is a one-line VitrtError (not a KeyError or a division by zero), and stores nothing."""
    table = hand_table()
    bad = manifest(spec_of(block(), block()), dict(TWO_BLOCKS), 10.0, table)
    change(bad)
    with pytest.raises(VitrtError, match=message) as info:
        table.refine(bad, source="bad.json")
    assert "\n" not in str(info.value) and table.points == [] and "refinements" not in table.meta


def test_refine_names_a_table_that_cannot_describe_the_model_first():
    """A model whose stem / head the table was not timed for (another patch) is refused for that, before the
    profile's own defects (here: all groups at 0 ms), which a new benchmark would not cure."""
    table = hand_table()
    spec = spec_of(block(tokens=65), block(tokens=65), patch=4)
    with pytest.raises(VitrtError, match="measured with patch=8, the model has patch=4"):
        table.refine(manifest(spec, dict.fromkeys(TWO_BLOCKS, 0.0), 10.0, table))


@pytest.mark.parametrize("blocks_ms", [(3.0, 2.0), (6.0, 1.0)])
def test_a_refined_model_whose_blocks_differ_by_one_head_predicts_its_measurement(blocks_ms):
    """Refine scales the per-block times to add up to the measured median and the correction is exact at each
    measured point: two blocks one head apart (weight 0.25 to each other) with different measured-over-grid ratios
    predict the measured 10.25 ms (a weighted mean of the ratios predicted 10.15 ms, and 8.63 with a 6:1 split)."""
    table = hand_table()
    spec = spec_of(block(heads=2), block(heads=1))
    profile = {"stem": 1.0, "blocks.0": blocks_ms[0], "blocks.1": blocks_ms[1], "head": 0.5}
    table.refine(manifest(spec, profile, 10.25, table))
    assert table.model_ms(spec) == pytest.approx(10.25, rel=1e-5)  # the stored times have 5 decimals


# --- from_dict ----------------------------------------------------------------------------------------------------
def _stem(d):
    return d["tables"]["fp32/dense"]["stem"]


STEM_POINT = {"kind": "stem", "table": "fp32/dense", "key": {"emb": 64, "patches": 16}, "ms": [1.0], "sources": []}


@pytest.mark.parametrize("change, message", [
    (lambda d: _stem(d).update(axes={"emb": [32, 64], "patches": []}, ms=[[], []]), "axis 'patches' is empty"),
    (lambda d: _stem(d)["ms"][0].__setitem__(0, -0.5), "negative or infinite latencies"),
    (lambda d: _stem(d)["axes"].update(emb=[-32, 64]), "negative axis value"),
    (lambda d: d.update(points=[{**STEM_POINT, "table": "fp16/dense"}]), "a refined point is malformed"),
    (lambda d: d.update(points=[{**STEM_POINT, "ms": []}]), "a refined point is malformed"),
    (lambda d: d.update(points=[{**STEM_POINT, "ms": [True]}]), "not a positive number"),
    (lambda d: d.update(points=[{**STEM_POINT, "key": {"emb": -64, "patches": 16}}]), "lacks one of emb, patches"),
    (lambda d: d.update(batch=0), "'batch' is 0, not a positive integer"),
    (lambda d: d.update(overhead_ms=math.inf), "'overhead_ms' is inf"),
    (lambda d: d.update(backend="tensorflow"), "backend 'tensorflow' is not one of"),
    (lambda d: d.update(tables={}), "has no tables"),
])
def test_the_loader_refuses_what_a_query_could_not_use(change, message):
    """A table is checked when loaded, not when a query trips over it: each defect is one line naming it."""
    data = json.loads(json.dumps(hand_table().to_dict()))
    LatencyTable.from_dict(data)  # the unchanged document loads
    change(data)
    with pytest.raises(VitrtError, match=message) as info:
        LatencyTable.from_dict(data)
    assert "\n" not in str(info.value)


# --- lut merge ----------------------------------------------------------------------------------------------------
def write_shards(tmp_path, count=3, *, overheads=None, change=None, name="lut"):
    """The hand table split round-robin over ``count`` shard files (each point in exactly one, NaN elsewhere), as
    sharded builds write them; ``change(k, table)`` alters shard k before it is written."""
    paths = []
    for k in range(count):
        table = hand_table(overhead_ms=(overheads or [0.25] * count)[k],
                           meta={"threads": 1, "libraries": {"onnxruntime": "hand"}, "grid": GRID, "complete": True,
                                 "shard": {"index": k, "count": count}, "build_seconds": float(k + 1)})
        for sub in table.tables["fp32/dense"].values():
            flat = sub.ms.reshape(-1)
            flat[np.arange(flat.size) % count != k] = np.nan
        if change:
            change(k, table)
        path = tmp_path / f"{name}.part{k}-of-{count}.json"
        table.save(path)
        paths.append(path)
    return paths


def test_merged_shards_hold_every_value_and_the_median_overhead(tmp_path):
    """The merge copies each shard's values, takes the median of the parts' overheads (0.1, 0.2, 0.9 -> 0.2, where
    the mean would be 0.4) and adds up their build seconds."""
    from vitrt.benchmarks.lut_merge import merge_tables

    merged = merge_tables(write_shards(tmp_path, overheads=[0.9, 0.1, 0.2]))
    whole = hand_table()
    for name, sub in whole.tables["fp32/dense"].items():
        np.testing.assert_allclose(merged.tables["fp32/dense"][name].ms, sub.ms, rtol=0, atol=1e-5)  # 5 decimals
    assert merged.overhead_ms == 0.2
    assert merged.meta["build_seconds"] == 6.0 and merged.meta["complete"] is True


def test_a_merge_reports_inversions_across_the_shards_seams(tmp_path):
    """Neighbouring grid values measured by different shards are compared once merged: an inversion no single shard
    could see is recorded in the merged table's meta."""
    from vitrt.benchmarks.lut_merge import merge_tables

    def slow_small_mlp(k, table):
        # emb 64, MLP 64, tokens 9 is flat index 4 (shard 1); its larger neighbours MLP 128 (index 6) and tokens 17
        # (index 5) belong to shards 0 and 2
        if k == 1:
            table.tables["fp32/dense"]["mlp"].ms[1, 0, 0] = 10.0
    merged = merge_tables(write_shards(tmp_path, change=slow_small_mlp))
    found = merged.meta["inversions"]["found"]
    assert sorted((inv["part"], inv["axis"]) for inv in found) == [("mlp", "mlp"), ("mlp", "tokens")]
    assert all(inv["at"] == {"emb": 64, "mlp": 64, "tokens": 9} for inv in found)


def test_another_keys_whole_table_joins_the_shards(tmp_path):
    """A complete unsharded table of another precision/sparsity key joins as it is; one whole table merges alone."""
    from vitrt.benchmarks.lut_merge import merge_tables

    fp16 = hand_table(meta={"threads": 1, "libraries": {"onnxruntime": "hand"}, "grid": GRID, "complete": True})
    fp16.tables = {"fp16/dense": fp16.tables.pop("fp32/dense")}
    fp16.save(tmp_path / "fp16.json")
    merged = merge_tables([*write_shards(tmp_path), tmp_path / "fp16.json"])
    assert merged.keys() == ["fp16/dense", "fp32/dense"]
    assert merged.block_ms(**BLOCK, precision="fp16") == pytest.approx(hand_table().block_ms(**BLOCK), abs=1e-4)
    assert merge_tables([tmp_path / "fp16.json"]).keys() == ["fp16/dense"]


def _classes(k, table):
    if k == 2:
        table.num_classes = 1000


def _threads(k, table):
    if k == 2:
        table.meta["threads"] = 2


def _overlap(k, table):  # shard 1 also measured stem point 0, which shard 0 owns
    if k == 1:
        table.tables["fp32/dense"]["stem"].ms.reshape(-1)[0] = 1.0


def _gap(k, table):  # shard 2 lost its first stem point (flat index 2)
    if k == 2:
        table.tables["fp32/dense"]["stem"].ms.reshape(-1)[2] = np.nan


def _two_keys(k, table):
    if k == 2:
        table.tables["fp16/dense"] = table.tables["fp32/dense"]


@pytest.mark.parametrize("change, message", [
    (_classes, "differs from .* in classes: 1000 vs 10"),
    (_threads, "differs from .* in threads"),
    (_overlap, "measured fp32/dense stem points another shard measured too"),
    (_gap, "the fp32/dense shards leave 1 stem point\\(s\\) unmeasured"),
    (_two_keys, "holds several precision/sparsity keys"),
])
def test_merge_refuses_parts_that_are_not_one_build(tmp_path, change, message):
    from vitrt.benchmarks.lut_merge import merge_tables

    with pytest.raises(VitrtError, match=message) as info:
        merge_tables(write_shards(tmp_path, change=change))
    assert "\n" not in str(info.value)


def test_merge_refuses_shards_of_builds_split_differently(tmp_path):
    from vitrt.benchmarks.lut_merge import merge_tables

    halves, thirds = write_shards(tmp_path, 2, name="a"), write_shards(tmp_path, 3, name="b")
    with pytest.raises(VitrtError, match=r"come from builds split \[2, 3\] ways"):
        merge_tables([halves[0], thirds[1]])


def test_merge_refuses_a_whole_table_listed_before_shards_of_its_key(tmp_path):
    """Whichever comes first, a whole table and shards of the same key are not one build."""
    from vitrt.benchmarks.lut_merge import merge_tables

    whole = hand_table(meta={"threads": 1, "libraries": {"onnxruntime": "hand"}, "grid": GRID, "complete": True})
    whole.save(tmp_path / "whole.json")
    with pytest.raises(VitrtError, match="mix a whole table with shards"):
        merge_tables([tmp_path / "whole.json", *write_shards(tmp_path)])
