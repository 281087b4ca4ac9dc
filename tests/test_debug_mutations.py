"""Tests added by a mutation audit of the accuracy-debugging tools (vitrt.debug: metrics, compare, points, probes,
bisect, config, sensitivity, digits): each pins a behaviour that a one-line mutation could change without the
existing tests noticing. Tiny ViTs compiled once per module, statistics built from arrays: seconds each."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, tiny_vit
import vitrt
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.progress import QUIET
from vitrt.debug.config import CompareConfig, SensitivityConfig
from vitrt.debug.metrics import Comparison, HeadStats, PointStats
from vitrt.debug.points import Point

COMMON = dict(name="tiny", batch=4, keep_twin=True, quiet=True)


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """fp32 and int8 (--quantize-attention) compiles of a 1-block tiny ViT, with their twin records."""
    root = tmp_path_factory.mktemp("debug_mutations")
    model = tiny_vit(depth=1)
    vitrt.compile(model, root / "fp32", **COMMON)
    vitrt.compile(model, root / "int8", precision="int8", calib_data="synthetic", calib_images=8,
                  quantize_attention=True, **COMMON)
    return root


def stats(name: str, a, b, block=None, kind="stream") -> PointStats:
    s = PointStats(Point(name, kind, block, name, ()))
    s.update(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return s


# --- vitrt.debug.metrics --------------------------------------------------------------------------------------------

def test_ref_max_is_the_largest_magnitude_of_a_negative_reference():
    """ref_max is max |b|: logits that are all negative still give a positive scale for the relative allowance."""
    s = stats("logits", [[-3.0, -1.0]], [[-3.0, -1.5]], kind="head")
    assert s.ref_max == 3.0
    inner = stats("blocks.0.output", np.ones((1, 4)) * 1.01, np.ones((1, 4)), block=0)
    comparison = Comparison([inner, s], HeadStats(), tolerance=0.3)
    assert comparison.point_tolerance(inner) == pytest.approx(0.1) and not comparison.exceeds(inner)


def test_an_image_that_is_zero_on_both_sides_has_cosine_one():
    """cos(a, b) of an image whose two tensors are both zero counts as 1 (identical), not 0 or nan."""
    s = stats("x", [[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]])
    assert s.cosine == 1.0
    s = stats("x", [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]])  # one image identical, one orthogonal
    assert s.cosine == pytest.approx(0.5)


def test_relative_error_against_an_all_zero_reference_is_one_when_anything_differs():
    """rel with ‖b‖ = 0: 1 where a differs from b, 0 where both are zero (not 0 either way)."""
    assert stats("x", [[0.0, 0.5]], [[0.0, 0.0]]).rel == 1.0
    assert stats("x", [[0.0, 0.0]], [[0.0, 0.0]]).rel == 0.0


def test_with_all_zero_reference_logits_every_point_is_held_to_the_absolute_tolerance():
    """exceeds: where max |logits| is 0 there is no relative allowance, so every point is held to max |Δ| <= tol
    (a point with rel error 1 but a max |Δ| of 0.01 is within 0.25)."""
    logits = stats("logits", [[0.1, 0.0]], [[0.0, 0.0]], kind="head")
    inner = stats("blocks.0.output", [[0.02, 0.02]], [[0.01, 0.01]], block=0)
    comparison = Comparison([inner, logits], HeadStats(), tolerance=0.25)
    assert inner.rel == pytest.approx(1.0) and comparison.point_tolerance(inner) == 0.25
    assert not comparison.exceeds(inner) and comparison.first_exceeding() is None
    assert comparison.exceeds(stats("blocks.0.output", [[0.3, 0.0]], [[0.0, 0.0]], block=0))


def test_a_blocks_worst_point_is_the_worst_one_inside_it_not_its_output():
    """block_growth's worst point is the largest rel among the block's internal points, its output excluded."""
    ref = np.ones((1, 4))
    embed = stats("embed", ref, ref)
    small = stats("blocks.0.attn.out", ref * 1.01, ref, block=0)
    large = stats("blocks.0.mlp.out", ref * 1.03, ref, block=0)
    out = stats("blocks.0.output", ref * 1.5, ref, block=0)
    logits = stats("logits", [[1.0]], [[1.0]], kind="head")
    row, = Comparison([embed, small, large, out, logits], HeadStats(), tolerance=1.0).block_growth()
    assert row["worst_point"] == "blocks.0.mlp.out" and row["worst_rel"] == pytest.approx(0.03)


def test_the_stems_worst_point_is_the_largest_error_before_block_0():
    """stem_growth names the point before block 0 with the largest rel, which need not be the stream's embed."""
    ref = np.ones((1, 4))
    patch = stats("patch_embed", ref * 1.3, ref)
    embed = stats("embed", ref * 1.1, ref)
    out0 = stats("blocks.0.output", ref * 1.1, ref, block=0)
    logits = stats("logits", [[1.0]], [[1.0]], kind="head")
    stem = Comparison([patch, embed, out0, logits], HeadStats(), tolerance=1.0).stem_growth()
    assert stem["worst_point"] == "patch_embed" and stem["worst_rel"] == pytest.approx(0.3)
    assert stem["rel_out"] == pytest.approx(0.1)


def test_without_a_compared_block_output_there_is_no_largest_contributor():
    """With no block output compared the contributor is undetermined (None), not the stem by default."""
    ref = np.ones((1, 4))
    comparison = Comparison([stats("embed", ref * 1.1, ref), stats("logits", [[1.0]], [[1.0]], kind="head")],
                            HeadStats(), tolerance=1.0)
    assert comparison.stem_growth() is not None and comparison.largest_contributor() is None


def test_summary_of_exceeding_logits_states_their_max_abs_error():
    """The logits are held to an absolute tolerance: the summary line gives their max |Δ|, not their rel L2."""
    from vitrt.debug.compare import summary_lines

    logits = stats("logits", [[10.0, 0.5]], [[10.0, 0.0]], kind="head")
    head = HeadStats()
    head.update(np.array([[10.0, 0.5]]), np.array([[10.0, 0.0]]), None)
    lines = summary_lines(Comparison([logits], head, tolerance=0.25),
                          {"candidate": "b", "reference": "a", "precision": "int8"})
    assert "first point over its tolerance: logits (max abs 0.5 > 0.25)" in lines


# --- vitrt.debug.compare / probes / points on compiled tiny ViTs -----------------------------------------------------

def compare_config(*outs, **options) -> CompareConfig:
    return CompareConfig(*outs, images=options.pop("images", 8), quiet=True, **options).validate()


def test_compare_with_labelled_data_reports_both_top1s(outs):
    """On digits (labelled) the head statistics carry the candidate's and the reference's top-1."""
    from vitrt.debug.compare import compare_with_twin

    comparison, _ = compare_with_twin(compare_config(outs / "int8", data="digits"), QUIET)
    head = comparison.head.to_dict()
    assert head["images"] == 8 and "top1_candidate" in head and "top1_reference" in head
    assert comparison.head.correct_a == comparison.head.correct_b  # the twin and its graph agree on every image


def test_synthetic_images_of_a_compare_follow_the_seed(outs):
    """--seed chooses the synthetic images, with one OUT and with two."""
    from vitrt.debug.compare import compare_artifacts, compare_with_twin

    for run, out in ((compare_with_twin, (outs / "int8",)), (compare_artifacts, (outs / "fp32", outs / "int8"))):
        refs = [run(compare_config(*out, seed=seed), QUIET)[0].logits.sum_sq_ref for seed in (0, 0, 1)]
        assert refs[0] == refs[1] != refs[2]


def test_compare_a_b_holds_b_against_a(outs):
    """With two OUTs, A is the reference: the reference magnitudes (ref_max) are A's, the error is B's."""
    from vitrt.debug.compare import compare_artifacts, logits_only

    comparison, meta = compare_artifacts(compare_config(outs / "fp32", outs / "int8", images=4), QUIET)
    from vitrt.debug.compare import image_batches, load_artifact

    a = load_artifact(outs / "fp32")
    images = np.concatenate([x for x, _ in image_batches("synthetic", a.spec, 4)[1]])
    logits_a = logits_only(a.model, images)
    assert comparison.logits.ref_max == pytest.approx(float(np.abs(logits_a).max()), rel=1e-6)
    assert meta["reference"].startswith(str(outs / "fp32"))


def test_against_the_float_twin_a_quantized_layer_input_is_compared_with_its_float_input(outs):
    """--against float: the twin has no quantizers, so <layer>.input is the layer's float input there; the attention
    matmuls' Q/DQ points (no float counterpart in the twin) are listed as not in the reference."""
    from vitrt.debug.compare import compare_with_twin

    comparison, _ = compare_with_twin(compare_config(outs / "int8", against="float"), QUIET)
    names = {s.point.name for s in comparison.stats}
    assert {"patch_embed.input", "blocks.0.attn.q.input", "blocks.0.mlp.fc2.input", "head.input"} <= names
    assert comparison.missing == {f"blocks.0.attn.{op}.input_{side}": "not in the reference"
                                  for op in ("qk", "av") for side in "ab"}


def test_a_point_missing_from_the_candidate_is_named_so(outs):
    """compare_probes says which side lacks a point: here the candidate (the float twin) has no QKᵀ quantizer."""
    from vitrt.debug.compare import load_artifact
    from vitrt.debug.metrics import compare_probes
    from vitrt.debug.points import graph_points
    from vitrt.debug.probes import graph_probe, twin_probe
    from vitrt.pipeline.replay import load_record

    artifact = load_artifact(outs / "int8")
    points = graph_points(artifact.model, artifact.spec)
    float_twin = load_record(outs / "int8").twin_after(skip=("quant", "precision"))
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    comparison = compare_probes(twin_probe(float_twin, points), graph_probe(artifact.model, points), points,
                                [(images, None)], 0.25)
    assert comparison.missing["blocks.0.attn.qk.input_a"] == "not in the candidate"


def test_images_not_a_multiple_of_the_static_batch_are_probed_and_counted_once(outs):
    """A graph of static batch 4 probed on 6 images: the last chunk is padded for the run and the padding dropped,
    so every point holds 6 images and the comparison counts 6."""
    from vitrt.debug.compare import compare_with_twin, load_artifact
    from vitrt.debug.points import graph_points
    from vitrt.debug.probes import graph_probe

    artifact = load_artifact(outs / "int8")
    points = graph_points(artifact.model, artifact.spec)
    images = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    values = graph_probe(artifact.model, points)(images)
    assert {len(v) for v in values.values()} == {6}
    comparison, _ = compare_with_twin(compare_config(outs / "int8", images=6), QUIET)
    assert comparison.head.images == 6 and comparison.first_exceeding() is None


# --- vitrt.debug.bisect ----------------------------------------------------------------------------------------------

def test_only_blocks_that_merge_are_revertible_tome_units(tmp_path):
    """A schedule 0,4,0 merges in block 1 only: that block is the one tome unit (reverting the others is a no-op)."""
    from vitrt.debug.bisect import Unit, exclude_flags, revertible_units
    from vitrt.pipeline.replay import load_record

    vitrt.compile(tiny_vit(depth=3), tmp_path / "merged", tome_schedule="0,4,0", **COMMON)
    record = load_record(tmp_path / "merged")
    units, notes = revertible_units(record, ("tome",))
    assert units == [Unit("tome", "blocks.1")] and notes == []
    assert exclude_flags(record, units) == "--tome-schedule 0,0,0"


def test_bisect_on_labelled_data_judges_top1_and_reports_the_compiled_graphs(outs):
    """vitrt compare OUT --bisect --data digits: the metric is top-1 against the labels; 'compiled' is the compiled
    graph's top-1 and 'uncompressed' the fully reverted graph's."""
    import onnx

    from vitrt.calib.data import load_data
    from vitrt.debug.bisect import bisect_out
    from vitrt.debug.compare import logits_only

    config = CompareConfig(outs / "int8", data="digits", images=16, bisect=True, max_drop=100.0,
                           quiet=True).validate()
    result = bisect_out(config, QUIET)
    assert result["metric"] == "top1" and result["reverted"] == [] and result["flags"] == ""
    data = load_data("digits", 32, split="test", limit=16)
    images, labels = data.images.numpy(), data.labels.numpy()
    compiled = logits_only(onnx.load(str(outs / "int8" / "model.onnx")), images)
    fp32 = logits_only(onnx.load(str(outs / "fp32" / "model.onnx")), images)
    assert result["compiled"] == pytest.approx(float(np.mean(compiled.argmax(1) == labels)))
    assert result["uncompressed"] == pytest.approx(float(np.mean(fp32.argmax(1) == labels)))


# --- vitrt.debug.config ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(images=0), "--images must be >= 1, got 0"),
    (dict(b="B", against="float"), "drop B"),
    (dict(backend_b="torch"), "--backend-b needs a second OUT B"),
    (dict(max_drop=1.0), "--bisect-stages / --max-drop need --bisect"),
    (dict(bisect=True, bisect_stages=" , "), "--bisect-stages takes a comma-separated subset"),
    (dict(bisect=True, max_drop=-0.1), r"--max-drop must be a number of points in \[0, 100\]"),
    (dict(bisect=True, max_drop=100.5), r"--max-drop must be a number of points in \[0, 100\]"),
])
def test_compare_options_are_refused_before_any_work(outs, options, message):
    if options.get("b") == "B":
        options["b"] = outs / "fp32"
    with pytest.raises(VitrtError, match=message):
        CompareConfig(outs / "int8", quiet=True, **options).validate()


def test_max_drop_takes_both_ends_of_its_range(outs):
    for drop in (0.0, 100.0):
        assert CompareConfig(outs / "int8", bisect=True, max_drop=drop).validate().max_drop == drop


def test_the_default_report_directory_is_under_b_with_two_outs(outs):
    assert CompareConfig(outs / "fp32", outs / "int8").report_dir == outs / "int8" / "compare"
    assert CompareConfig(outs / "fp32").report_dir == outs / "fp32" / "compare"


@pytest.mark.parametrize("options, message", [
    (dict(calib_images=0), "--images and --calib-images must be >= 1, got 256 and 0"),
    (dict(precision="int4w", quantize_attention=True), "int4w is weight-only"),
    (dict(model="digits_reference", img_size=64), "--checkpoint / --img-size apply to a timm model name"),
    (dict(checkpoint="no/such/state.pt"), "--checkpoint 'no/such/state.pt' does not exist or is not a file"),
    (dict(calib_data="no/such/folder"), "--calib-data"),
])
def test_sensitivity_options_are_refused_before_any_work(tmp_path, options, message):
    options = {"model": "vit_tiny_patch16_224", **options}
    if "checkpoint" in options:
        options["checkpoint"] = __import__("pathlib").Path(options["checkpoint"])
    with pytest.raises(VitrtError, match=message):
        SensitivityConfig(out=tmp_path / "r", quiet=True, **options).validate()


# --- vitrt.debug.digits ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(keep_float_top="2,0"), "--keep-float-top takes comma-separated counts >= 1"),
    (dict(threads=0), "--ranking-images and --threads must be >= 1"),
    (dict(ranking_images=0), "--ranking-images and --threads must be >= 1"),
])
def test_debug_digits_refuses_bad_counts_before_any_work(tmp_path, options, message):
    """Checked by validate(), before the work directory is made and minutes of compiles run."""
    from vitrt.debug.digits import DigitsDebugConfig

    with pytest.raises(VitrtError, match=message):
        DigitsDebugConfig(work=tmp_path / "w", results=tmp_path / "r", quiet=True, **options).validate()
    assert list(tmp_path.iterdir()) == []


# --- vitrt.debug.sensitivity -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranking(outs, tmp_path_factory):
    """vitrt sensitivity on the fp32 OUT (its twin record), scored on 16 digits test images, calibrated on 4
    synthetic ones."""
    report = tmp_path_factory.mktemp("sens") / "r"
    assert run_cli("sensitivity", outs / "fp32", "--data", "digits", "--images", 16, "--calib-data", "synthetic",
                   "--calib-images", 4, "-o", report, "--quiet") == 0
    return json.loads((report / "sensitivity.json").read_text())


def test_sensitivity_ranks_from_one_with_the_drop_against_the_float_twin(ranking):
    layers = ranking["layers"]
    assert [row["rank"] for row in layers] == list(range(1, len(layers) + 1))
    top1_float = ranking["summary"]["top1_float"]
    for row in layers:
        assert row["top1_drop_points"] == pytest.approx((top1_float - row["top1"]) * 100, abs=1e-3)


def test_sensitivity_of_an_out_records_its_model_and_calibration_source(outs, ranking):
    manifest = json.loads((outs / "fp32" / "manifest.json").read_text())
    assert ranking["model_name"] == manifest["model"] and ranking["model"] == str(outs / "fp32")
    assert ranking["calibration"]["data"] == "synthetic" and ranking["calibration"]["images"] == 4
    assert ranking["split"] == "test" and ranking["data"] == "digits"


def test_sensitivity_of_a_quantized_out_scores_the_twin_before_quantization(outs, ranking, tmp_path):
    """MODEL = an int8 OUT: its twin before quantization (the same float model as the fp32 OUT's) is scored, so the
    float top-1 is the fp32 OUT's; a calibration folder of 2 images is recorded as 2 images, not --calib-images."""
    from PIL import Image

    folder = tmp_path / "calib" / "any"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    assert run_cli("sensitivity", outs / "int8", "--data", "digits", "--images", 16, "--calib-data",
                   tmp_path / "calib", "--calib-images", 8, "-o", tmp_path / "r", "--quiet") == 0
    report = json.loads((tmp_path / "r" / "sensitivity.json").read_text())
    assert report["calibration"]["images"] == 2
    assert report["summary"]["top1_float"] == ranking["summary"]["top1_float"]
    assert run_cli("sensitivity", outs / "fp32", "--images", 4, "--calib-images", 4, "-o", tmp_path / "s",
                   "--quiet") == 0
    assert json.loads((tmp_path / "s" / "sensitivity.json").read_text())["split"] is None  # synthetic: no split


def test_the_twin_sensitivity_scores_for_a_quantized_out_is_its_float_twin(outs, tmp_path):
    """load_twin(int8 OUT) is the twin before quantization: it computes what the fp32 OUT's twin computes."""
    import torch

    from vitrt.debug.sensitivity import load_twin

    twins = [load_twin(SensitivityConfig(str(outs / name), out=tmp_path / "r").validate(), QUIET).eval()
             for name in ("int8", "fp32")]
    images = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(twins[0](images), twins[1](images))


def test_points_are_marked_when_the_graph_types_only_some_of_their_tensors(outs):
    """mark_outputs infers the element types whenever any point's tensor has none recorded (here one value_info
    recorded for the first point, none for the others), rather than refusing the others."""
    import onnx

    from vitrt.debug.compare import load_artifact
    from vitrt.debug.points import graph_points
    from vitrt.debug.probes import graph_probe, mark_outputs

    artifact = load_artifact(outs / "int8")
    model = onnx.ModelProto()
    model.CopyFrom(artifact.model)
    points = graph_points(model, artifact.spec)
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    del model.graph.value_info[:]
    model.graph.value_info.append(inferred[points[1].tensor])
    marked = mark_outputs(model, points)
    assert {p.tensor for p in points} <= {o.name for o in marked.graph.output} | {i.name for i in model.graph.input}
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert set(graph_probe(model, points)(images)) == {p.name for p in points}


def test_a_2_4_compile_without_fine_tuning_has_its_sparse_layers_as_units(tmp_path):
    """Without 2:4 fine-tuning the dense weights are in the record: every 2:4 layer is a revertible unit, no note."""
    from vitrt.debug.bisect import revertible_units
    from vitrt.pipeline.replay import load_record

    vitrt.compile(tiny_vit(depth=1), tmp_path / "sparse", sparsity="2:4", **COMMON)
    units, notes = revertible_units(load_record(tmp_path / "sparse"), ("sparsity",))
    assert [u.name for u in units] == [f"blocks.0.{layer}" for layer in ("attn.q", "attn.k", "attn.v", "attn.proj",
                                                                         "mlp.fc1", "mlp.fc2")]
    assert notes == []


# --- defects found by this audit (fixed with these tests) -----------------------------------------------------------

def test_kt_is_compared_transposed_even_where_tokens_equal_the_head_size(tmp_path):
    """QKᵀ's second operand: the graph holds Kᵀ, the twin's quantizer K. Where merging leaves as many tokens as the
    head has channels (17 - 1 = 16 tokens, head size 16) the two shapes agree and K was compared with Kᵀ untransposed:
    a relative error of ~1.4 named as the first point over its tolerance in a graph that matches its twin."""
    from vitrt.debug.compare import compare_with_twin

    vitrt.compile(tiny_vit(depth=2, embed_dim=32), tmp_path / "out", precision="int8", calib_data="synthetic",
                  calib_images=8, quantize_attention=True, tome_schedule="1,0", **COMMON)
    comparison, _ = compare_with_twin(CompareConfig(tmp_path / "out", images=8, quiet=True).validate(), QUIET)
    stats = {s.point.name: s for s in comparison.stats}
    assert stats["blocks.1.attn.qk.input_b"].shape == (2, 16, 16)  # square: the case in question
    assert stats["blocks.1.attn.qk.input_b"].rel < 1e-5
    assert comparison.first_exceeding() is None


def test_bisect_stages_with_a_trailing_comma_are_read_as_validate_read_them(tmp_path):
    """--bisect-stages 'quant,' passes CompareConfig.validate (empty names dropped), and bisect_out — run after the
    whole comparison — refused it as "unknown stage ''"."""
    from vitrt.debug.bisect import bisect_out

    vitrt.compile(tiny_vit(depth=1), tmp_path / "int8", precision="int8", calib_data="synthetic", calib_images=4,
                  **COMMON)
    config = CompareConfig(tmp_path / "int8", bisect=True, bisect_stages="quant,", max_drop=100.0, images=4,
                           quiet=True).validate()
    result = bisect_out(config, QUIET)
    assert result["stages"] == ["quant"] and result["reverted"] == []
