"""The latency lookup table: built for real on ONNX Runtime on a tiny grid, then queried, composed, refined,
corrupted and driven through the CLI. No assertion is about absolute speed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from vitrt.compiler.lut import MIN_GRID_MS, LatencyTable, SubTable
from vitrt.benchmarks.lut_build import build_table, grid_of
from vitrt.compiler.timing import Timing
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import spec_of_timm

from conftest import DIGITS_LUT, tiny_vit
from conftest import run_cli as run

QUICK = Timing(warmup=1, iterations=2, min_seconds=0.005)
# tiny_vit(mlp_ratio=2): emb 64, 2 heads of 32, MLP 128, 17 tokens, patch 8, 10 classes — inside the tiny grid.
TINY_ARGS = dict(mlp_ratio=2.0)


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    build_table(path, backend="ort", grid="tiny", batch=1, timing=QUICK)
    return path


@pytest.fixture
def table(lut_path):
    return LatencyTable.load(lut_path)


def parts(table):
    return table.tables["fp32/dense"]


def test_build_writes_a_complete_table_with_provenance(table):
    grid = grid_of("tiny")
    assert (table.backend, table.batch, table.patch, table.num_classes) == ("ort", 1, 8, 10)
    assert table.meta["complete"] and table.meta["grid"] == grid and "onnxruntime" in table.meta["libraries"]
    assert "grid measurement" in table.meta["provenance"]["fp32/dense"]
    attn = parts(table)["attn"]
    assert attn.ms.shape == (2, 2, 2, 2, 2) and np.all(np.isfinite(attn.ms)) and np.all(attn.ms > 0)
    assert parts(table)["mlp"].ms.shape == (2, 2, 2) and parts(table)["stem"].ms.shape == (2, 2)
    assert table.overhead_ms >= 0 and table.points == []


def test_build_reports_where_a_larger_size_timed_faster(table, tmp_path):
    """Inversions: a grid value its larger neighbour undercuts by more than 10 % (a loaded machine, or a real kernel
    effect) is recorded in meta and named in one line, with the worst one; merged tokens are not a work axis."""
    from vitrt.compiler.lut import inversion_note, inversions

    recorded = table.meta["inversions"]
    assert recorded["tolerance"] == 0.10 and recorded["compared"] > 100  # the tiny grid's neighbouring pairs
    assert recorded["found"] == table.inversions()[1]
    mlp = dataclasses.replace(parts(table)["mlp"])  # (emb, mlp, tokens), 2 x 2 x 2
    mlp.ms = np.array([[[1.0, 2.0], [1.0, 2.0]], [[2.0, 4.0], [1.5, 5.0]]])  # emb 64, tokens 9: mlp 128 25 % faster
    compared, found = inversions(mlp)
    assert compared == 12 and found == [{"axis": "mlp", "at": {"emb": 64, "mlp": 64, "tokens": 9}, "larger": 128,
                                         "faster_by": 0.25}]
    mlp.ms[1, 1, 0] = 1.85  # 7.5 % faster: within the tolerance
    assert inversions(mlp)[1] == []
    note = inversion_note(compared, [{"part": "mlp", **found[0]}])
    assert note.startswith("1 of 12 neighbouring grid values are faster at the larger size by more than 10% (worst: "
                           "mlp mlp 64 → 128, 25% faster, at emb 64, tokens 9)") and "\n" not in note
    assert inversion_note(compared, []) is None
    # merging more tokens may cost less (fewer left to concatenate): not an inversion; more tokens in is
    merge = SubTable(axes={"emb": [32], "keys": [64], "tokens": [9, 17], "merged": [1, 8]},
                     ms=np.array([[[[2.0, 1.0], [2.0, 1.0]]]]))
    assert inversions(merge)[1] == []
    merge.ms[0, 0, 1, 0] = 1.0
    assert [(inv["axis"], inv["faster_by"]) for inv in inversions(merge)[1]] == [("tokens", 0.5)]


def floor(ms) -> float:
    """A grid value as a query answers it: floored at MIN_GRID_MS (a part timed under load at or below the per-call
    overhead is stored as 0)."""
    return max(float(ms), MIN_GRID_MS)


def test_query_is_exact_at_grid_points_and_linear_between(table):
    attn, mlp = parts(table)["attn"], parts(table)["mlp"]
    got = table.block_ms(emb=64, heads=2, qk=16, v=32, mlp=64, tokens=9)
    assert got == pytest.approx(floor(attn.ms[1, 1, 0, 1, 0]) + floor(mlp.ms[1, 0, 0]), rel=1e-9)
    # Halfway along heads and along mlp: the mean of the neighbours (multilinear interpolation).
    got = table.block_ms(emb=32, heads=1.5, qk=32, v=16, mlp=96, tokens=17)
    want = (attn.ms[0, 0, 1, 0, 1] + attn.ms[0, 1, 1, 0, 1]) / 2 + (mlp.ms[0, 0, 1] + mlp.ms[0, 1, 1]) / 2
    assert got == pytest.approx(want, rel=1e-9)
    # A quarter of the way along tokens in the attention half.
    got = table.block_ms(emb=32, heads=1, qk=16, v=16, mlp=0, tokens=11)
    assert got == pytest.approx(0.75 * attn.ms[0, 0, 0, 0, 0] + 0.25 * attn.ms[0, 0, 0, 0, 1], rel=1e-9)


def test_removed_halves_and_token_merging(table):
    attn, mlp = parts(table)["attn"], parts(table)["mlp"]
    assert table.block_ms(emb=64, heads=0, qk=0, v=0, mlp=128, tokens=17) == pytest.approx(floor(mlp.ms[1, 1, 1]))
    assert table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=0, tokens=17) == pytest.approx(
        floor(attn.ms[1, 1, 1, 1, 1]))
    assert table.block_ms(emb=64, heads=0, qk=0, v=0, mlp=0, tokens=17) == 0.0
    merged = table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=17, tokens_out=9)
    merge = parts(table)["merge"]  # axes emb, keys (= heads · qk), tokens, merged: 64, 64, 17, 8
    # each part is floored at MIN_GRID_MS: a merge timed under load can come out at 0 (with - without merging)
    assert merged == pytest.approx(floor(attn.ms[1, 1, 1, 1, 1]) + floor(merge.ms[1, 0, 1, 0]) + floor(mlp.ms[1, 1, 0]))


def test_a_block_query_refuses_more_tokens_out_than_in(table):
    for tokens_out in (17, 0):
        with pytest.raises(VitrtError, match=rf"tokens_out={tokens_out} must be in 1..tokens \(9\)"):
            table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=9, tokens_out=tokens_out)


def test_outside_the_grid_is_an_error_unless_clamped(table):
    with pytest.raises(VitrtError, match=r"tokens=40 is outside the table's grid \[9, 17\].*clamp"):
        table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=40)
    clamped = table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=40, clamp=True)
    assert clamped == pytest.approx(table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=17))
    with pytest.raises(VitrtError, match="emb=16 is outside"):
        table.block_ms(emb=16, heads=1, qk=16, v=16, mlp=64, tokens=9)


def test_model_ms_is_overhead_plus_stem_plus_blocks_plus_head(table):
    spec = spec_of_timm(tiny_vit(depth=3, **TINY_ARGS))
    parts_ms = table.model_breakdown(spec)
    assert list(parts_ms) == ["overhead", "stem", "blocks.0", "blocks.1", "blocks.2", "head"]
    block = table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=17)
    want = table.overhead_ms + table.stem_ms(emb=64, patches=16) + 3 * block + table.head_ms(emb=64, tokens=17)
    assert table.model_ms(spec) == pytest.approx(want, rel=1e-9)
    # the head (final norm) runs on what the last block leaves: after a merge in it, its tokens_out. Its grid values
    # are set by hand: timed for real, the head at tokens 9 and 17 is ~0.002 ms either way, a few 1e-5 apart (now
    # and then the other way round), and stored at 5 decimals the two can be equal, failing the check below
    head = parts(table)["head"]  # (emb 32, 64) x (tokens 9, 17)
    head.ms = np.array([[0.001, 0.002], [0.003, 0.004]])
    head._interp = None
    blocks = list(spec.blocks)
    blocks[-1] = dataclasses.replace(blocks[-1], tokens_out=9)
    merged = table.model_breakdown(spec.with_blocks(blocks))
    assert merged["head"] == pytest.approx(table.head_ms(emb=64, tokens=9), rel=1e-9)
    assert merged["head"] != pytest.approx(table.head_ms(emb=64, tokens=17), rel=1e-6)  # the check can fail
    distilled = spec_of_timm(tiny_vit(depth=3, distilled=True, **TINY_ARGS))
    with pytest.raises(VitrtError, match="tokens=18 is outside"):  # 2 prefix tokens: 18 tokens, grid ends at 17
        table.model_ms(distilled)
    wrong_patch = spec_of_timm(tiny_vit(depth=1, patch_size=4, **TINY_ARGS))
    with pytest.raises(VitrtError, match="patch=8.*grid has patch=4"):
        table.model_ms(wrong_patch)
    gray = spec_of_timm(tiny_vit(depth=1, in_chans=1, **TINY_ARGS))
    with pytest.raises(VitrtError, match="in_chans=3, the model has in_chans=1"):
        table.model_ms(gray)


def test_check_rejects_mismatches_in_one_line(table):
    table.check(backend="ort", batch=1, precision="fp32", sparsity="dense")
    for kwargs, message in [({"backend": "trt"}, "built for backend 'ort', not 'trt'"),
                            ({"batch": 8}, "built for batch 1, not 8"),
                            ({"precision": "int8"}, "no 'int8/dense' entries"),
                            ({"sparsity": "2:4"}, "no 'fp32/2:4' entries"),
                            ({"clock": "cpu"}, "wall-clock times"),
                            ({"threads": 2}, "the measurement would use 2 intra-op thread"),
                            ({"device": "GPU: X"}, "measured on")]:
        with pytest.raises(VitrtError, match=message) as info:
            table.check(**kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(VitrtError, match="int8"):
        table.block_ms(emb=64, heads=2, qk=32, v=32, mlp=128, tokens=17, precision="int8")
    # a table timed with 1 thread: a measurement with the runtime's default threads (None) is another measurement
    table.meta["threads"] = 1
    table.check(threads=1)
    with pytest.raises(VitrtError, match="timed with 1 intra-op thread.*would use the runtime's default threads; "
                                         "pass --threads 1"):
        table.check(threads=None)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "{not json", "is corrupt"),
    (lambda d: json.dumps({**d, "format": "something"}), "not a vitrt latency table"),
    (lambda d: json.dumps({**d, "version": 99}), "format version 99"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "backend"}), "missing or invalid field 'backend'"),
    (lambda d: json.dumps({**d, "tables": {"fp32/dense": {**d["tables"]["fp32/dense"],
                                                           "mlp": {"axes": d["tables"]["fp32/dense"]["mlp"]["axes"],
                                                                   "ms": [[1.0]]}}}}), "values have shape"),
    (lambda d: json.dumps({**d, "tables": {"fp33/dense": d["tables"]["fp32/dense"]}}), "unknown table key"),
    (lambda d: json.dumps({**d, "tables": {"fp32/dense": {k: v for k, v in d["tables"]["fp32/dense"].items()
                                                           if k != "head"}}}), "lacks sub-table"),
    (lambda d: json.dumps([1, 2]), "not a vitrt latency table"),
    (lambda d: json.dumps({**d, "points": [{"kind": "block", "table": "fp32/dense", "key": {"emb": 64},
                                            "ms": [1.0], "sources": []}]}), "lacks one of emb, heads"),
    (lambda d: json.dumps({**d, "points": [{"kind": "stem", "table": "fp32/dense", "key": {"emb": 64, "patches": 16},
                                            "ms": [-1.0], "sources": []}]}), "not a positive number"),
    (lambda d: json.dumps({**d, "points": [{"kind": "stem", "table": "fp32/dense", "key": {"emb": 64, "patches": 16},
                                            "ms": [0], "sources": []}]}), "not a positive number"),
    (lambda d: json.dumps({**d, "points": [{"kind": "stem", "table": "fp32/dense", "key": {"emb": 64, "patches": 16},
                                            "ms": [1.0]}]}), "no list of sources"),
    (lambda d: json.dumps({**d, "tables": {"fp32/dense": {**d["tables"]["fp32/dense"],
                                                           "mlp": {**d["tables"]["fp32/dense"]["mlp"],
                                                                   "axes": {**d["tables"]["fp32/dense"]["mlp"]["axes"],
                                                                            "tokens": [9, 9]}}}}}),
     "axis 'tokens' is empty or not strictly increasing"),
    (lambda d: json.dumps({**d, "overhead_ms": -5}), "'overhead_ms' is -5"),
    (lambda d: json.dumps({**d, "batch": 1.7}), "'batch' is 1.7, not a positive integer"),
    (lambda d: json.dumps({**d, "clock": "sundial"}), "clock 'sundial'"),
    (lambda d: json.dumps({**d, "tables": {"fp32/dense": {**d["tables"]["fp32/dense"],
                                                           "mlp": {**d["tables"]["fp32/dense"]["mlp"],
                                                                   "ms": (np.asarray(d["tables"]["fp32/dense"]["mlp"]
                                                                                     ["ms"]) * np.inf).tolist()}}}}),
     "infinite latencies"),
])
def test_malformed_files_give_one_line_errors(lut_path, tmp_path, mutate, message):
    data = json.loads(lut_path.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(mutate(data))
    with pytest.raises(VitrtError, match=message) as info:
        LatencyTable.load(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(VitrtError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


def test_save_is_atomic_and_round_trips(table, tmp_path):
    path = tmp_path / "copy.json"
    table.save(path)
    again = LatencyTable.load(path)
    assert again.to_dict() == table.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["copy.json"]


def test_interrupted_build_resumes_only_the_missing_points(lut_path, tmp_path):
    path = tmp_path / "partial.json"
    shutil.copy(lut_path, path)
    partial = LatencyTable.load(path)
    mlp = parts(partial)["mlp"]
    kept = mlp.ms.copy()
    mlp.ms[1, :, :] = np.nan
    partial.meta["complete"] = False
    partial.save(path)
    with pytest.raises(VitrtError, match="incomplete"):
        LatencyTable.load(path).block_ms(emb=64, heads=0, qk=0, v=0, mlp=64, tokens=9)
    resumed = build_table(path, backend="ort", grid="tiny", batch=1, timing=QUICK)
    ms = parts(resumed)["mlp"].ms
    assert np.all(np.isfinite(ms)) and resumed.meta["complete"]
    np.testing.assert_array_equal(ms[0], kept[0])  # measured points are not re-timed
    np.testing.assert_array_equal(parts(resumed)["attn"].ms, parts(LatencyTable.load(lut_path))["attn"].ms)
    with pytest.raises(VitrtError, match="already a complete table"):
        build_table(path, backend="ort", grid="tiny", batch=1, timing=QUICK)
    with pytest.raises(VitrtError, match="different table"):
        build_table(path, backend="ort", grid="tiny", batch=2, timing=QUICK)


def _manifest(spec, per_block_ms, median_ms, table):
    return {"model": "tiny", "spec_after": spec.to_dict(),
            "latency": {"backend": "ort", "device": table.device, "batch": 1, "median_ms": median_ms,
                        "per_block_ms": per_block_ms}}


def test_refine_fixes_the_refined_model_and_leaves_distant_ones_alone(table):
    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    other = spec_of_timm(tiny_vit(depth=2, embed_dim=32, num_heads=1, **TINY_ARGS))  # emb 32, 1 head of 32, MLP 64
    before, other_before = table.model_ms(spec), table.model_ms(other)
    measured = 1.7 * before  # a measurement the grid under-predicts
    manifest = _manifest(spec, {"stem": 1.0, "blocks.0": 3.0, "blocks.1": 3.2, "head": 0.5, "other": 0.1},
                         measured, table)
    summary = table.refine(manifest, source="out/manifest.json")
    assert summary["predicted_before_ms"] == pytest.approx(before)
    assert table.model_ms(spec) == pytest.approx(measured, rel=1e-3)
    assert abs(table.model_ms(other) / other_before - 1) < 0.25  # 2x away in emb, mlp, heads: tiny weight
    kinds = sorted(p["kind"] for p in table.points)
    assert kinds == ["block", "head", "stem"]  # both identical blocks share one point with two observations
    block = next(p for p in table.points if p["kind"] == "block")
    assert len(block["ms"]) == 2 and block["sources"][0]["source"] == "out/manifest.json"
    with pytest.raises(VitrtError, match="already folded into this table"):  # the same measurement is one, not two
        table.refine(manifest, source="out/manifest.json")
    assert len(block["ms"]) == 2
    # A nearby block (one head fewer) gets part of the correction; the grid itself is untouched.
    grid = table.grid_block_ms(emb=64, heads=1, qk=32, v=32, mlp=128, tokens=17)
    near = table.block_ms(emb=64, heads=1, qk=32, v=32, mlp=128, tokens=17)
    assert 1.0 < near / grid < 1.7


def test_refine_rejects_incomplete_or_mismatched_manifests(table):
    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    with pytest.raises(VitrtError, match="compile with --bench"):
        table.refine({"spec_after": spec.to_dict()})
    with pytest.raises(VitrtError, match="lacks blocks.1"):
        table.refine(_manifest(spec, {"stem": 1.0, "blocks.0": 1.0, "head": 1.0}, 5.0, table))
    bad = _manifest(spec, {"stem": 1.0, "blocks.0": 1.0, "blocks.1": 1.0, "head": 1.0}, 5.0, table)
    bad["latency"]["batch"] = 4
    with pytest.raises(VitrtError, match="batch 1, not 4"):
        table.refine(bad)
    assert table.points == []


def test_refine_refuses_a_measurement_with_other_threads(table):
    """What compile --lut --refine-lut refuses up front, vitrt lut refine refuses too: the manifest records the
    measurement's threads (an int, or 'runtime default (N cores)'); a manifest that does not say is not refused."""
    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    table.meta["threads"] = 1
    manifest = _manifest(spec, {"stem": 1.0, "blocks.0": 1.0, "blocks.1": 1.0, "head": 1.0}, 5.0, table)
    for threads, said in ((2, "would use 2 intra-op thread"), ("runtime default (2 cores)", "would use the runtime's")):
        manifest["latency"]["threads"] = threads
        with pytest.raises(VitrtError, match=f"timed with 1 intra-op thread.*{said}"):
            table.refine(manifest)
    assert table.points == []
    manifest["latency"]["threads"] = 1
    table.refine(manifest, source="one.json")
    del manifest["latency"]["threads"]
    table.refine(manifest, source="unsaid.json")
    assert len(table.meta["refinements"]) == 2


def test_a_distilled_heads_point_leaves_the_plain_head_alone(table):
    """Head points are kept apart by ``distilled``: correcting the two-head variant must not move the plain head
    (without the filter it would get e^-4 of the correction, the distilled flag being one log2 unit away)."""
    plain, distilled = table.head_ms(emb=64, tokens=17), table.head_ms(emb=64, tokens=17, distilled=True)
    table.add_point("head", {"emb": 64, "tokens": 17, "distilled": 1}, 100.0 * distilled)
    assert table.head_ms(emb=64, tokens=17, distilled=True) == pytest.approx(100.0 * distilled)
    assert table.head_ms(emb=64, tokens=17) == pytest.approx(plain, rel=1e-9)


def test_compile_with_lut_predicts_and_refines(lut_path, tmp_path):
    from vitrt.pipeline.driver import compile

    lut = tmp_path / "lut.json"
    shutil.copy(lut_path, lut)
    result = compile(tiny_vit(depth=2, **TINY_ARGS), tmp_path / "out", bench=True, bench_iters=5, bench_warmup=2,
                     lut=lut, refine_lut=True, quiet=True)
    latency = result.manifest["latency"]
    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    assert latency["predicted_ms"] == pytest.approx(LatencyTable.load(lut_path).model_ms(spec), rel=1e-3)
    refined = LatencyTable.load(lut)
    assert len(refined.points) == 3 and refined.meta["refinements"][0]["model"] == "VisionTransformer (Python object)"
    assert refined.model_ms(spec) == pytest.approx(latency["median_ms"], rel=0.05)
    # A model outside the grid (mlp 256 > 128) compiles; the manifest says why there is no prediction.
    wide = compile(tiny_vit(depth=1), tmp_path / "wide", bench=True, bench_iters=2, lut=lut, quiet=True)
    assert wide.manifest["latency"]["predicted_ms"] is None
    assert "mlp=256 is outside" in wide.manifest["latency"]["prediction_unavailable"]
    with pytest.raises(VitrtError, match="built for batch 1, not 2"):  # fails before any work: OUT not created
        compile(tiny_vit(depth=2, **TINY_ARGS), tmp_path / "out2", bench=True, batch=2, lut=lut, quiet=True)
    assert not (tmp_path / "out2").exists()
    # what goes into the table must be measured like it: same threads, same machine, a stem / head it holds
    before = lut.read_bytes()
    with pytest.raises(VitrtError, match="the measurement would use 2 intra-op thread"):
        compile(tiny_vit(depth=2, **TINY_ARGS), tmp_path / "out3", bench=True, threads=2, lut=lut, refine_lut=True,
                quiet=True)
    other = json.loads(before)
    other["device"] = "GPU: another machine"
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(VitrtError, match="measured on 'GPU: another machine'"):
        compile(tiny_vit(depth=2, **TINY_ARGS), tmp_path / "out3", bench=True, lut=tmp_path / "other.json",
                refine_lut=True, quiet=True)
    assert "prediction_note" not in latency  # the table of this machine: nothing to say
    elsewhere = compile(tiny_vit(depth=2, **TINY_ARGS), tmp_path / "out4", bench=True, bench_iters=2,
                        lut=tmp_path / "other.json", quiet=True).manifest["latency"]  # predicting, not refining
    assert elsewhere["prediction_note"].startswith("the table was timed on GPU: another machine, this measurement on")
    shutil.rmtree(tmp_path / "out4")
    with pytest.raises(VitrtError, match="stem/head were measured with patch="):
        compile(tiny_vit(depth=2, **{**TINY_ARGS, "patch_size": 4}), tmp_path / "out3", bench=True, lut=lut,
                refine_lut=True, quiet=True)
    assert not (tmp_path / "out3").exists() and lut.read_bytes() == before
    # a refined table is no grid part, first in the list or not (its points would be dropped without a word)
    from vitrt.benchmarks.lut_merge import merge_tables
    from vitrt.pipeline.feedback import refine_file

    with pytest.raises(VitrtError, match="holds refined points"):
        merge_tables([lut])
    # a table that is not there is refused before a lock file is made beside it
    with pytest.raises(VitrtError, match="does not exist"):
        refine_file(tmp_path / "missing.json", tmp_path / "out" / "manifest.json")
    assert not list(tmp_path.glob(".missing.json*"))


def test_lut_refine_files_a_typed_compiles_measurement_under_its_precision(lut_path, tmp_path):
    """vitrt lut refine reads the key from the manifest as compile --refine-lut does: fp16 / bf16 compiles name their
    type only in the ``precision`` section, quantized ones in ``quantization`` (also when typed), 2:4 in
    ``sparsity``."""
    from vitrt.pipeline.feedback import compile_precision, refine_file
    from vitrt.transforms.precision.plan import plan_for

    fp16 = {"precision": plan_for("fp16", 17).report()}  # the section a --precision fp16 compile writes
    assert compile_precision(None, fp16) == ("fp16", "dense")
    assert compile_precision(None, {"precision": {"activations": "bf16"}}) == ("bf16", "dense")
    assert compile_precision(None, {**fp16, "quantization": {"precision": "int8"}}) == ("int8", "dense")
    assert compile_precision(None, {"quantization": {"precision": "int4w"}}) == ("int4w", "dense")
    assert compile_precision(None, {"sparsity": {"pattern": "2:4"}}) == ("fp32", "2:4")
    assert compile_precision(None, {}) == ("fp32", "dense")
    data = json.loads(lut_path.read_text())
    data["tables"]["fp16/dense"] = data["tables"]["fp32/dense"]
    lut = tmp_path / "lut.json"
    lut.write_text(json.dumps(data))
    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    table = LatencyTable.load(lut)
    manifest = {**_manifest(spec, {"stem": 1.0, "blocks.0": 3.0, "blocks.1": 3.0, "head": 0.5}, 9.0, table), **fp16}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    refine_file(lut, tmp_path / "manifest.json")
    refined = LatencyTable.load(lut)
    assert {p["table"] for p in refined.points} == {"fp16/dense"}
    assert refined.model_ms(spec) == pytest.approx(table.model_ms(spec), rel=1e-9)  # fp32 untouched
    assert refined.model_ms(spec, precision="fp16") == pytest.approx(9.0, rel=1e-3)


def test_a_cpu_clock_table_is_predicted_and_refined_by_a_cpu_clock_bench(tmp_path, capsys):
    """--bench-clock cpu: the project's steady clock for the feedback loop (its least time, as the table holds)."""
    from vitrt.pipeline.driver import compile

    lut = tmp_path / "cpu.json"
    build_table(lut, backend="ort", grid="tiny", batch=1, timing=Timing(warmup=1, iterations=3, clock="cpu"),
                threads=1)
    model = tiny_vit(depth=2, **TINY_ARGS)
    result = compile(model, tmp_path / "out", bench=True, bench_iters=6, bench_warmup=2, bench_clock="cpu",
                     threads=1, lut=lut, refine_lut=True, quiet=True)
    latency = result.manifest["latency"]
    assert latency["clock"] == "cpu" and "CPU time" in latency["timer"]
    assert 0 < latency["typical_ms"] <= latency["median_ms"]  # the least CPU time, beside the median
    assert latency["predicted_error"] == pytest.approx(latency["predicted_ms"] / latency["typical_ms"] - 1, abs=1e-3)
    refined = LatencyTable.load(lut)
    assert refined.meta["refinements"][0]["measured_median_ms"] == latency["typical_ms"]
    assert refined.model_ms(spec_of_timm(model)) == pytest.approx(latency["typical_ms"], rel=0.05)
    # the default clock on the CPU is wall: refused before any work, with the fix named
    before = lut.read_bytes()
    with pytest.raises(VitrtError, match="holds cpu-clock times, the measurement is wall-clock; measure with "
                                         "--bench-clock cpu"):
        compile(model, tmp_path / "wall", bench=True, threads=1, lut=lut, refine_lut=True, quiet=True)
    assert not (tmp_path / "wall").exists() and lut.read_bytes() == before
    assert run("compile", "digits", "-o", tmp_path / "o", "--bench", "--bench-clock", "cpu") == 2
    assert "--bench-clock cpu measures the caller thread's CPU time: it needs --threads 1" in capsys.readouterr().err
    assert run("compile", "digits", "-o", tmp_path / "o", "--bench-clock", "cpu", "--threads", "1") == 2
    assert "--bench-clock sets the clock of --bench: add --bench" in capsys.readouterr().err
    assert run("compile", "digits", "-o", tmp_path / "o", "--lut", lut, "--refine-lut", "--prune", "0.5") == 2
    assert "--refine-lut folds --bench's measurement into --lut: add --bench" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_tome_latency_reads_lut_and_refuses_a_table_of_another_batch_or_backend(lut_path, tmp_path):
    """--tome-lut defaults to --lut (which --tome-latency alone now accepts), and the table must be the target's."""
    from vitrt.pipeline.driver import compile

    model = tiny_vit(depth=2, **TINY_ARGS)
    # read as the merge's table, not refused for want of --bench: at 17 tokens merging usually costs more than it
    # saves on this freshly timed table, and the solver says so; where the timing says otherwise, it merges
    try:
        assert any(compile(model, tmp_path / "ok", tome_latency=0.999, lut=lut_path, quiet=True)
                   .manifest["token_merge"]["r"])
    except VitrtError as exc:
        assert "the most merging this schedule allows keeps" in str(exc), exc
    with pytest.raises(VitrtError, match="built for batch 1, not 2"):
        compile(model, tmp_path / "b2", tome_latency=0.999, tome_lut=lut_path, batch=2, quiet=True)
    with pytest.raises(VitrtError, match="built for backend 'ort', not 'torch'"):
        compile(model, tmp_path / "torch", tome_latency=0.999, tome_lut=lut_path, backend="torch", quiet=True)
    assert not (tmp_path / "b2").exists() and not (tmp_path / "torch").exists()


def test_a_load_warning_advises_by_the_clock_measured():
    from vitrt.compiler.target import TargetConfig
    from vitrt.pipeline.driver import machine_state

    busy = 10.0 * (os.cpu_count() or 1)  # a load above the cores
    wall = machine_state(TargetConfig(), busy, "wall")["load_warning"]
    cpu = machine_state(TargetConfig(threads=1), busy, "cpu")["load_warning"]
    assert "use --threads 1 --bench-clock cpu" in wall and "--bench-clock" not in cpu and "least CPU time" in cpu


def test_a_load_warning_starts_above_the_cores(monkeypatch):
    """The machine is called shared once the load average (the higher of before and after the benchmark) exceeds
    its cores; a load up to the cores gets no warning."""
    from vitrt.compiler.target import TargetConfig
    from vitrt.pipeline.driver import machine_state

    cores = os.cpu_count() or 1
    for before, after, warned in ((cores - 0.5, cores - 0.5, False), (cores, cores, False),
                                  (cores + 0.5, cores + 0.5, True), (cores + 0.5, 0.0, True), (0.0, cores + 0.5, True)):
        monkeypatch.setattr(os, "getloadavg", lambda: (after, after, after))
        state = machine_state(TargetConfig(), before)
        assert ("load_warning" in state) == warned and state["load_average"] == max(before, after), (before, after)


def test_cli_exit_codes(lut_path, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert run("lut", "build", "--grid", "tiny", "-o", notes) == 2  # not a table to resume: kept, one line
    assert "exists and is not a vitrt latency table this build could resume" in capsys.readouterr().err
    assert notes.read_text() == "mine"
    assert run("lut", "query", lut_path, "--emb", 64, "--heads", 2, "--qk", 32, "--v", 32, "--mlp", 128,
               "--tokens", 17) == 0
    assert "ms (batch 1, ort)" in capsys.readouterr().out
    assert run("lut", "query", lut_path, "--emb", 64, "--heads", 2, "--qk", 32, "--v", 32, "--mlp", 128,
               "--tokens", 40) == 2
    assert "outside the table's grid" in capsys.readouterr().err
    assert run("lut", "query", lut_path, "--emb", 64, "--heads", 2, "--qk", 32, "--v", 32, "--mlp", 128,
               "--tokens", 40, "--clamp", "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert "block_ms" in answer and answer["clamped_to_grid"] is True  # said, not silent
    assert run("lut", "query", lut_path, "--emb", 64, "--heads", 2, "--qk", 32, "--v", 32, "--mlp", 128,
               "--tokens", 40, "--clamp") == 0 and "clamped: outside the table's grid" in capsys.readouterr().out
    assert run("lut", "query", lut_path, "--emb", -5, "--heads", 2, "--qk", 32, "--v", 32, "--mlp", 128,
               "--tokens", 17, "--clamp") == 2 and "--emb -5 is not a size" in capsys.readouterr().err
    assert run("lut", "query", lut_path, "--emb", 64) == 2
    assert "block query needs --heads" in capsys.readouterr().err
    assert run("lut", "query", lut_path, "--emb", 64, "--heads", 2, "--qk", 0, "--v", 32, "--mlp", 128,
               "--tokens", 17, "--clamp") == 2 and "--qk 0 is not a size" in capsys.readouterr().err  # heads > 0
    for both, message in ((["--model", "digits", "--manifest", "m.json"], "pass one"),
                          (["--model", "digits", "--emb", "64"], "--emb sizes a single block")):
        assert run("lut", "query", lut_path, *both) == 2 and message in capsys.readouterr().err
    digits_lut = DIGITS_LUT
    assert run("lut", "query", digits_lut, "--model", "digits") == 0  # the reference by name, as compile takes it
    assert "ms (batch 8, ort)" in capsys.readouterr().out
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "vitrt.lut", ')
    assert run("lut", "query", corrupt, "--emb", 64, "--heads", 2, "--qk", 32, "--v", 32, "--mlp", 128,
               "--tokens", 17) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0]
    (tmp_path / "m.json").write_text(json.dumps({"model": "x"}))
    assert run("lut", "refine", lut_path, "--from", tmp_path / "m.json") == 2
    assert run("lut", "build", "--grid", "tiny", "-o", lut_path) == 2  # already complete: never overwritten
    assert run("compile", "deit_tiny_patch16_224", "-o", tmp_path / "o", "--refine-lut") == 2
    assert run("compile", "deit_tiny_patch16_224", "-o", tmp_path / "o", "--lut", lut_path) == 2
    assert "needs --bench" in capsys.readouterr().err
    png = tmp_path / "lut.png"
    assert run("lut", "plot", lut_path, "-o", png) == 0 and png.stat().st_size > 10_000
    assert run("lut", "plot", lut_path, "-o", tmp_path / "lut.pdf") == 0  # the format follows the suffix
    assert (tmp_path / "lut.pdf").read_bytes()[:4] == b"%PDF"
    unfinished = json.loads(lut_path.read_text())
    unfinished["tables"]["fp32/dense"]["mlp"]["ms"][0][0][0] = float("nan")  # a point an interrupted build left
    (tmp_path / "unfinished.json").write_text(json.dumps(unfinished))
    assert run("lut", "plot", tmp_path / "unfinished.json", "-o", tmp_path / "u.png") == 2
    assert "incomplete" in capsys.readouterr().err and not (tmp_path / "u.png").exists()
    capsys.readouterr()
    assert run("lut", "plot", lut_path, "-o", tmp_path) == 2  # a directory: one line, no stray temporary file
    assert "is a directory" in capsys.readouterr().err and not list(tmp_path.glob(".*.tmp*"))
    copy = tmp_path / "copy.json"
    shutil.copy(lut_path, copy)
    before = copy.read_bytes()
    assert run("lut", "merge", copy, lut_path, "-o", copy) == 2  # never over one of its own inputs
    assert "is the input" in capsys.readouterr().err and copy.read_bytes() == before
    assert run("lut", "build", "--grid", "tiny", "--threads", 0, "-o", tmp_path / "t0.json") == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_refine_is_exact_even_where_overhead_subtraction_left_no_time(table):
    """A tiny block timed under load can measure at or below the per-call overhead; refinement still holds."""
    for half in ("attn", "mlp"):
        sub = parts(table)[half]
        sub.ms = np.full_like(sub.ms, -0.01)
        sub._interp = None
    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    before = table.model_ms(spec)
    assert before > 0
    measured = 1.5 * before
    table.refine(_manifest(spec, {"stem": 1.0, "blocks.0": 3.0, "blocks.1": 3.0, "head": 0.5}, measured, table))
    assert table.model_ms(spec) == pytest.approx(measured, rel=1e-3)


def test_a_whole_block_removed_model_refines_a_table_that_still_loads(table, tmp_path):
    """DC-ViT's --dcvit-whole-blocks leaves a block with no attention and no MLP: it has no nodes, so a real
    manifest's per_block_ms omits it (a hand-made one may say 0 ms). It is skipped, not refused and not stored;
    a group profiled at 0 ms stores nothing either, and a tiny positive time is not rounded to 0."""
    spec = spec_of_timm(tiny_vit(depth=3, **TINY_ARGS))
    spec = spec.with_blocks([dataclasses.replace(spec.blocks[0], heads=0, mlp=0), *spec.blocks[1:]])
    measured = 1.5 * table.model_ms(spec)
    table.refine(_manifest(spec, {"stem": 1.0, "blocks.1": 3.0, "blocks.2": 3.0, "head": 0.5}, measured, table),
                 source="real.json")
    path = tmp_path / "refined.json"
    table.save(path)
    refined = LatencyTable.load(path)
    assert refined.model_ms(spec) == pytest.approx(measured, rel=1e-3)  # the remaining blocks are corrected
    assert refined.block_ms(emb=64, heads=0, qk=0, v=0, mlp=0, tokens=17) == 0.0
    assert sorted(p["kind"] for p in refined.points) == ["block", "head", "stem"]  # blocks 1 and 2 share one point
    # the audit's hand-made form: 0 ms for the emptied block and for the head
    refined.refine(_manifest(spec, {"stem": 1.0, "blocks.0": 0.0, "blocks.1": 3.0, "blocks.2": 3.0, "head": 0.0},
                             measured, table), source="zero.json")
    refined.save(path)
    again = LatencyTable.load(path)
    assert all(m > 0 for p in again.points for m in p["ms"]) and len(again.points) == 3
    # a time below the stored 5 decimals keeps its significant digits; a non-positive one is refused
    again.add_point("stem", {"emb": 32, "patches": 16}, 4e-6)
    assert again.points[-1]["ms"] == [4e-6]
    with pytest.raises(VitrtError, match="not a positive latency"):
        again.add_point("stem", {"emb": 32, "patches": 16}, 0.0)
    again.save(path)
    LatencyTable.load(path)
    # a table an older vitrt refined with an emptied block (a positive time stored for it) still answers: that
    # point has no grid time to correct, and the block stays at 0 ms
    again.add_point("block", {"emb": 64, "heads": 0, "qk": 0, "v": 0, "mlp": 0, "tokens": 17, "tokens_out": 17}, 0.3)
    assert again.block_ms(emb=64, heads=0, qk=0, v=0, mlp=0, tokens=17) == 0.0


# TensorRT's per-layer profile of a ViT it compiled into one Myelin graph: layers are named after ONNX nodes, a
# Myelin region "{ForeignNode[first...last]}" after its first and last node, reformat layers after their target.
TRT_LAYERS_ONE_MYELIN_GRAPH = {
    "Reformatting CopyNode for Input Tensor 0 to patch_embed": 0.011,
    "patch_embed": 0.052,
    "{ForeignNode[prefix_tokens...blocks.1.residual2]}": 1.874,
    "norm + head.select": 0.009,
    "head + head.bias_add": 0.021,
}


def test_refine_shares_a_myelin_region_by_the_tables_own_predictions(table):
    """A profiled layer spanning several blocks is not given to the block its name starts with: its time is split
    over the blocks it covers in proportion to the table's predictions (here block 1 has half block 0's MLP)."""
    import dataclasses

    from vitrt.compiler.backends.base import attribute_layers, canonical_group

    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    spec = spec.with_blocks([spec.blocks[0], dataclasses.replace(spec.blocks[1], mlp=64)])
    per_block, spanning = attribute_layers(TRT_LAYERS_ONE_MYELIN_GRAPH, canonical_group)
    assert spanning == [{"layer": "{ForeignNode[prefix_tokens...blocks.1.residual2]}", "ms": 1.874,
                         "first": "stem", "last": "blocks.1"}]
    assert per_block == pytest.approx({"stem": 0.063, "head": 0.030})  # blocks appear only through the region
    predicted = table.model_breakdown(spec)
    measured = 1.5 * table.model_ms(spec)
    manifest = _manifest(spec, per_block, measured, table)
    manifest["latency"]["spanning_layers"] = spanning
    summary = table.refine(manifest, source="trt/manifest.json")
    assert summary["attribution"].startswith("1 layer(s) spanning several blocks")
    points = {p["kind"] + str(p["key"].get("mlp", "")): p["ms"][0] for p in table.points}
    # blocks.0 / blocks.1 keep the table's ratio between them (not all of 1.874 ms on the first name, 'stem')
    assert points["block128"] / points["block64"] == pytest.approx(predicted["blocks.0"] / predicted["blocks.1"],
                                                                   rel=1e-3)
    stem_share = 0.063 + 1.874 * predicted["stem"] / (predicted["stem"] + predicted["blocks.0"] + predicted["blocks.1"])
    assert points["stem"] / points["block128"] == pytest.approx(
        stem_share / (1.874 * predicted["blocks.0"] / (predicted["stem"] + predicted["blocks.0"] + predicted["blocks.1"])),
        rel=1e-3)
    assert table.model_ms(spec) == pytest.approx(measured, rel=1e-3)


def test_a_spanning_layer_may_cover_a_single_group():
    from vitrt.compiler.lut import distribute_spanning

    order = ["stem", "blocks.0", "blocks.1", "head"]
    predicted = {"stem": 1.0, "blocks.0": 2.0, "blocks.1": 3.0, "head": 1.0}
    got = distribute_spanning({"stem": 0.5}, [{"layer": "x", "ms": 1.5, "first": "blocks.0", "last": "blocks.0"}],
                              order, predicted)
    assert got == {"stem": 0.5, "blocks.0": 1.5}


def test_refine_rejects_a_spanning_layer_outside_the_model(table):
    spec = spec_of_timm(tiny_vit(depth=2, **TINY_ARGS))
    manifest = _manifest(spec, {"stem": 1.0, "head": 1.0}, 5.0, table)
    manifest["latency"]["spanning_layers"] = [{"layer": "{ForeignNode[blocks.0.norm1...blocks.5.residual2]}",
                                               "ms": 2.0, "first": "blocks.0", "last": "blocks.5"}]
    with pytest.raises(VitrtError, match="covers blocks.0 .. blocks.5, which is not a range"):
        table.refine(manifest)
    assert table.points == []


def test_a_table_refined_with_a_pruned_model_answers_every_block_it_was_told():
    """benchmarks/results/lut.md: the digits cpu-clock table refined with a pruned digits model (heads 2 / 1 / 0,
    MLP 80 .. 240, near each other) gives back each measured block time (a weighted mean of the ratios was off by up
    to 7.6 %), and the stem and head."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "lut_ort_digits_b1_cpu_t1_refined_p60.json"
    table = LatencyTable.load(path)
    blocks = [p for p in table.points if p["kind"] == "block"]
    assert len(blocks) == 9 and len({(p["key"]["heads"], p["key"]["mlp"]) for p in blocks}) == 8
    for p in table.points:
        key, want = p["key"], float(np.mean(p["ms"]))
        if p["kind"] == "block":
            got = table.block_ms(**key)
        elif p["kind"] == "stem":
            got = table.stem_ms(**key)
        else:
            got = table.head_ms(**key)
        assert got == pytest.approx(want, rel=1e-6), p
