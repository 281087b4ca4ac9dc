"""Tests added by a mutation audit of vitrt.compiler.verify, vitrt.compiler.backends.torch_backend,
vitrt.compiler.cleanup, vitrt.compiler.onnx_file, vitrt.transforms.base, vitrt.calib.digits, vitrt.calib.reference
and vitrt.transforms.sparsity.export: each pins a behaviour that a one-line mutation could change without the
existing tests noticing. Hand-built ONNX graphs, tiny ViTs, real ONNX Runtime and torch: seconds each."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import tiny_vit
from lint_support import F, model
from vitrt.compiler.backends import BuildOptions, get_backend
from vitrt.compiler.errors import VitrtError

BF16 = TensorProto.BFLOAT16


def flatten(batch=None, out_type=F) -> onnx.ModelProto:
    """images [batch, 1, 2, 2] -> logits [batch, 4] (``batch`` None: dynamic)."""
    nodes = [helper.make_node("Flatten", ["images"], ["flat"], axis=1)]
    if out_type != F:
        nodes.append(helper.make_node("Cast", ["flat"], ["logits"], to=out_type))
    else:
        nodes[0].output[0] = "logits"
    return model(nodes, [("images", F, [batch, 1, 2, 2])], [("logits", out_type, [batch, 4])])


def shifted(shift: float, batch=None) -> onnx.ModelProto:
    """flatten(images) + shift."""
    nodes = [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
             helper.make_node("Add", ["flat", "shift"], ["logits"])]
    return model(nodes, [("images", F, [batch, 1, 2, 2])], [("logits", F, [batch, 4])],
                 [("shift", np.float32(shift))])


def ort_runner(m: onnx.ModelProto, tmp_path, name="m"):
    """The real ONNX Runtime backend's runner of ``m``."""
    src = tmp_path / f"{name}.onnx"
    onnx.save(m, str(src))
    out = tmp_path / name
    out.mkdir()
    backend = get_backend("ort")
    return backend.load(backend.build(src, out, BuildOptions()), BuildOptions())


def torch_runner(m: onnx.ModelProto, tmp_path, name="m", **options):
    """The real torch backend's runner of ``m`` (built and loaded on the CPU)."""
    src = tmp_path / f"{name}.onnx"
    onnx.save(m, str(src))
    out = tmp_path / name
    out.mkdir()
    backend = get_backend("torch")
    return backend.load(backend.build(src, out, BuildOptions(**options)), BuildOptions(**options))


# --- vitrt.compiler.verify ----------------------------------------------------------------------------------------

def test_verification_inputs_have_the_specs_channel_count():
    """verification_inputs: [count * batch, in_chans, img, img] — a grayscale spec gets one channel, not three."""
    import types

    from vitrt.compiler.verify import verification_inputs

    x = verification_inputs(types.SimpleNamespace(in_chans=1, img=4), 2, count=2)
    assert x.shape == (4, 1, 4, 4)


def test_a_graph_with_only_a_bf16_initializer_computes_in_bfloat16():
    """computes_in_bfloat16 sees a bf16 initializer even where no value_info or output is bf16."""
    import ml_dtypes

    from vitrt.compiler.verify import computes_in_bfloat16

    nodes = [helper.make_node("Cast", ["b"], ["bc"], to=F), helper.make_node("Add", ["x", "bc"], ["y"])]
    m = model(nodes, [("x", F, [2])], [("y", F, [2])], [("b", np.ones(2, ml_dtypes.bfloat16))])
    assert m.graph.initializer[0].data_type == BF16 and not m.graph.value_info
    assert computes_in_bfloat16(m)


def test_a_graph_with_only_a_bf16_output_computes_in_bfloat16():
    """computes_in_bfloat16 sees a bf16 graph output even where no value_info or initializer is bf16, and run_onnx
    then runs the reference evaluator (ONNX Runtime's CPU provider has no such kernels)."""
    from vitrt.compiler.verify import computes_in_bfloat16, run_onnx

    m = flatten(out_type=BF16)
    assert not m.graph.value_info and computes_in_bfloat16(m)
    images = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    assert np.array_equal(np.asarray(run_onnx(m, images, None), np.float32), images.reshape(2, 4))


def test_the_reference_evaluators_gather_elements_takes_a_negative_axis_and_narrower_indices():
    """reference_evaluator's GatherElements follows the ONNX spec: a negative axis counts from the end, indices may
    be narrower than the data along the other dims (the output has the indices' shape) and may be negative."""
    from vitrt.compiler.verify import reference_evaluator

    data = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    indices = np.array([[[4, 0], [-1, 2]]], np.int64)  # [1, 2, 2]: narrower along dims 0 and 1
    node = helper.make_node("GatherElements", ["data", "indices"], ["out"], axis=-1)
    m = model([node], [("data", F, [2, 3, 5]), ("indices", TensorProto.INT64, [1, 2, 2])], [("out", F, [1, 2, 2])])
    out = reference_evaluator(m).run(None, {"data": data, "indices": indices})[0]
    expected = np.array([[[data[0, 0, 4], data[0, 0, 0]], [data[0, 1, 4], data[0, 1, 2]]]], np.float32)
    assert np.array_equal(out, expected)


def test_run_onnx_feeds_a_static_batch_graph_in_chunks_of_its_batch():
    """run_onnx in chunks of ``batch``: a graph compiled for batch 2 runs over 6 images (never all at once)."""
    from vitrt.compiler.verify import run_onnx

    images = np.arange(6 * 4, dtype=np.float32).reshape(6, 1, 2, 2)
    assert np.array_equal(run_onnx(flatten(batch=2), images, 2), images.reshape(6, 4))


class _Noisy(torch.nn.Module):
    """flatten(images) through a dropout: random in training mode, the identity in eval mode."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)
        self.dtype = dtype

    def forward(self, images):
        return self.drop(images.reshape(len(images), -1)).to(self.dtype)


def test_run_torch_runs_the_twin_in_eval_mode_and_returns_float32():
    """run_torch puts the reference in eval mode (no dropout) and returns float32 logits whatever the twin's dtype."""
    from vitrt.compiler.verify import run_torch

    images = np.ones((4, 1, 2, 2), np.float32)
    out = run_torch(_Noisy().train(), images)
    assert np.array_equal(out, np.ones((4, 4), np.float32))
    half = run_torch(_Noisy(torch.float16).train(), images)
    assert half.dtype == np.float32


class _OneOff(torch.nn.Module):
    """flatten(images) with one logit of the first image off by 0.5."""

    def forward(self, images):
        out = images.reshape(len(images), -1).clone()
        out[0, 0] += 0.5
        return out


def test_compare_reports_the_largest_difference_not_the_average():
    """verify.compare (a twin without decisions): max_abs_err is the largest |graph - twin| of any logit."""
    from vitrt.compiler.verify import compare

    check = compare(flatten(), _OneOff(), np.zeros((2, 1, 2, 2), np.float32), None, "twin", tolerance=0.1)
    assert check.max_abs_err == pytest.approx(0.5) and not check.ok


def test_verification_to_dict_reports_a_failure_as_not_ok():
    from vitrt.compiler.verify import Verification

    d = Verification(0.2, "twin", 0.1).to_dict()
    assert d["ok"] is False and d["max_abs_err"] == 0.2 and "decision_flips" not in d


class _WithoutDecisions(torch.nn.Module):
    """flatten(images), with a submodule that declares no decisions (a ToMe block that merges nothing)."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.Identity()
        self.block.decision_tensors = ()

    def forward(self, images):
        return self.block(images.reshape(len(images), -1))


def test_a_submodule_declaring_no_decisions_is_no_decider():
    """decision_modules keeps only submodules with decision tensors: an empty declaration makes no decision
    comparison (decision_flips stays None)."""
    from vitrt.compiler.verify import compare, decision_modules

    twin = _WithoutDecisions()
    assert decision_modules(twin) == []
    check = compare(flatten(), twin, np.ones((2, 1, 2, 2), np.float32), None, "twin")
    assert check.decision_flips is None and check.max_abs_err == 0.0


def test_verify_artifact_runs_a_static_batch_runner_in_chunks_of_its_batch(tmp_path):
    """verify_artifact feeds the built artifact ``batch`` images at a time (a static-batch engine takes no more)."""
    from vitrt.compiler.verify import verify_artifact

    runner = ort_runner(flatten(batch=2), tmp_path)
    images = np.arange(4 * 4, dtype=np.float32).reshape(4, 1, 2, 2)
    check = verify_artifact(runner, flatten(batch=2), images, 2, 1e-6, decisions=False)
    assert check["ok"] and check["max_abs_err"] == 0.0


def test_verify_artifact_passes_at_the_tolerance_and_measures_a_built_graph_below_the_verified_one(tmp_path):
    """verify_artifact: |built - graph| <= tolerance passes (an error equal to it included); an artifact whose
    logits are lower than the graph's is as wrong as one whose logits are higher."""
    from vitrt.compiler.verify import verify_artifact

    images = np.zeros((2, 1, 2, 2), np.float32)
    at = verify_artifact(ort_runner(shifted(0.5), tmp_path, "up"), flatten(), images, None, 0.5, decisions=False)
    assert at["max_abs_err"] == 0.5 and at["ok"]
    below = verify_artifact(ort_runner(shifted(-0.5), tmp_path, "down"), flatten(), images, None, 0.2, decisions=False)
    assert below["max_abs_err"] == 0.5 and not below["ok"]


def test_verify_artifact_notes_decision_differences_only_when_the_error_exceeds_the_tolerance(tmp_path):
    from vitrt.compiler.verify import verify_artifact

    images = np.zeros((2, 1, 2, 2), np.float32)
    within = verify_artifact(ort_runner(shifted(0.01), tmp_path), flatten(), images, None, 0.1, decisions=True)
    assert within["ok"] and "note" not in within


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_artifact_with_non_finite_logits_fails_even_when_merge_decisions_may_differ(bad, tmp_path):
    """DEFECT (fixed): with decisions=True any error passed, so an artifact whose logits are NaN (or inf: an fp16
    engine that overflowed) was recorded ok — for NaN without the note, since NaN > tolerance is False. A merge
    decision tipping the other way moves logits by a finite amount; a finite excess is still recorded, not failed."""
    from vitrt.compiler.verify import verify_artifact

    images = np.zeros((2, 1, 2, 2), np.float32)
    broken = verify_artifact(ort_runner(shifted(bad), tmp_path, "bad"), flatten(), images, None, 0.05, decisions=True)
    assert not broken["ok"] and "note" not in broken
    noted = verify_artifact(ort_runner(shifted(1.0), tmp_path, "finite"), flatten(), images, None, 0.05,
                            decisions=True)
    assert noted["ok"] and "recorded, not failed" in noted["note"]


def _passes():
    """(ScaleFc2, Idle): passes over the lowered tiny ViT that change the graph but not the twin."""
    from vitrt.compiler.pass_manager import Pass, PassResult

    class ScaleFc2(Pass):
        """Block 0's fc2 weight times ``factor`` (1.0: a modifying, exact pass), declaring ``declared`` as its
        tolerance (None: fp32's)."""

        def __init__(self, name, factor, declared=None):
            self.name, self.factor, self.declared = name, factor, declared

        def run(self, view, ctx):
            weight = view.block(0).linear("mlp.fc2").weight
            weight.values = weight.values * self.factor
            return PassResult(view, True)

        def tolerance(self):
            return super().tolerance() if self.declared is None else self.declared

    class Idle(Pass):
        name = "idle"

        def run(self, view, ctx):
            return PassResult(view, False)

    return ScaleFc2, Idle


def _verified(passes, lowered):
    """The records of ``passes`` run over the lowered tiny ViT under VerifyInstrument."""
    from vitrt.compiler.pass_manager import PassContext, PassManager
    from vitrt.compiler.verify import VerifyInstrument, verification_inputs

    twin, fresh_view = lowered
    view = fresh_view()
    images = verification_inputs(view.spec, batch=2)
    return PassManager(passes, [VerifyInstrument(images, 2)]).run(view, PassContext(), twin=twin).records


def test_a_raised_tolerance_stays_raised_for_the_passes_after_it(lowered):
    """VerifyInstrument: after a pass that declares a looser tolerance, a later exact pass is held to the raised
    tolerance (the reduced-precision graph is compared with the same twin), not to fp32's again."""
    from vitrt.compiler.pass_manager import FP32_TOLERANCE

    ScaleFc2, _ = _passes()
    first, second = _verified([ScaleFc2("perturb", 1.01, declared=0.05), ScaleFc2("touch", 1.0)], lowered)
    assert FP32_TOLERANCE < first.stats["verify_max_abs_err"] <= 0.05
    assert second.stats["verify_max_abs_err"] == pytest.approx(first.stats["verify_max_abs_err"])


def test_only_modifying_passes_are_verified_and_no_flips_are_recorded_without_decisions(lowered):
    """VerifyInstrument checks a pass that modified the graph (verify_max_abs_err), skips one that did not, and
    records verify_decision_flips only for a twin that makes decisions."""
    from vitrt.compiler.pass_manager import FP32_TOLERANCE

    ScaleFc2, Idle = _passes()
    idle, touch = _verified([Idle(), ScaleFc2("touch", 1.0)], lowered)
    assert "verify_max_abs_err" not in idle.stats
    assert touch.stats["verify_max_abs_err"] <= FP32_TOLERANCE and "verify_decision_flips" not in touch.stats


# --- vitrt.compiler.backends.torch_backend --------------------------------------------------------------------------

def test_check_options_refuses_an_unknown_compile_mode_and_cuda_graphs_on_the_cpu_and_takes_max_autotune():
    """check_options (what TorchBackend.build runs first, whoever calls it): torch.compile modes off / default /
    max-autotune, CUDA graphs only with a cuda device."""
    from vitrt.compiler.backends.torch_backend import check_options

    for mode in ("off", "default", "max-autotune"):
        check_options(BuildOptions(torch_compile=mode))
    with pytest.raises(VitrtError, match="unknown torch.compile mode 'fast'"):
        check_options(BuildOptions(torch_compile="fast"))
    with pytest.raises(VitrtError, match="--cuda-graph needs --device cuda"):
        check_options(BuildOptions(cuda_graph=True, device="cpu"))


def test_torch_backend_build_checks_its_options_before_importing(tmp_path):
    """TorchBackend.build refuses bad options itself (a direct API call, not through the compile's checks), before
    any artifact is written."""
    onnx.save(flatten(), str(tmp_path / "m.onnx"))
    with pytest.raises(VitrtError, match="unknown torch.compile mode"):
        get_backend("torch").build(tmp_path / "m.onnx", tmp_path, BuildOptions(torch_compile="fast"))
    assert not (tmp_path / "model.torch.onnx").exists()


@pytest.mark.parametrize("device, message", [("meta", "runs on cpu or cuda"), ("tpu", "unknown device 'tpu'")])
def test_the_torch_backend_refuses_a_device_when_constructed(device, message):
    from vitrt.compiler.backends.torch_backend import TorchBackend

    with pytest.raises(VitrtError, match=message):
        TorchBackend(device)


def test_the_torch_build_keeps_the_graphs_metadata_and_records_its_settings(tmp_path):
    """The artifact keeps the compiled graph's own metadata_props beside the build record, which carries the
    build's settings (sparse_weights as asked)."""
    from vitrt.compiler.backends.torch_backend import RECORD_KEY

    m = flatten(batch=2)
    helper.set_model_props(m, {"vitrt.manifest": "kept"})
    onnx.save(m, str(tmp_path / "m.onnx"))
    artifact = get_backend("torch").build(tmp_path / "m.onnx", tmp_path, BuildOptions(sparse_weights=True))
    props = {p.key: p.value for p in onnx.load(str(artifact)).metadata_props}
    assert props["vitrt.manifest"] == "kept"
    record = json.loads(props[RECORD_KEY])
    assert record["sparse_weights"] is True and record["device"] == "cpu" and record["torch_compile"] == "off"


def test_loading_a_graph_without_a_torch_build_record_is_refused_in_one_line(tmp_path):
    onnx.save(flatten(), str(tmp_path / "m.onnx"))
    with pytest.raises(VitrtError, match="has no torch build record"):
        get_backend("torch").load(tmp_path / "m.onnx", BuildOptions())


def test_the_torch_runner_sets_the_thread_count_and_reports_a_static_batch(tmp_path):
    """TorchRunner: options.threads is torch's thread count (process-wide); batch is the graph's static batch
    (None for a dynamic one)."""
    before = torch.get_num_threads()
    try:
        runner = torch_runner(flatten(batch=2), tmp_path, "static", threads=2)
        assert torch.get_num_threads() == 2 and runner.batch == 2
    finally:
        torch.set_num_threads(before)
    assert torch_runner(flatten(), tmp_path, "dynamic").batch is None


def test_the_torch_runner_takes_float64_images_and_returns_float32_logits(tmp_path):
    """infer: images of any float dtype become fp32 on the device; fp16 logits come back as float32."""
    images = np.arange(8, dtype=np.float64).reshape(2, 1, 2, 2)
    out = torch_runner(flatten(), tmp_path, "fp32").infer(images)
    assert out.dtype == np.float32 and np.array_equal(out, images.reshape(2, 4).astype(np.float32))
    fine = np.full((2, 1, 2, 2), 1 + 2.0 ** -30)  # 1 in float32; the graph then subtracts 1 in float32
    assert np.array_equal(torch_runner(shifted(-1.0), tmp_path, "minus").infer(fine), np.zeros((2, 4), np.float32))
    half = torch_runner(flatten(out_type=TensorProto.FLOAT16), tmp_path, "fp16").infer(images.astype(np.float32))
    assert half.dtype == np.float32 and np.array_equal(half, images.reshape(2, 4).astype(np.float32))


def test_torch_layer_times_are_keyed_by_onnx_node_names_only(tmp_path):
    """layer_times_ms reports fx nodes under their ONNX node's name; nodes without one (placeholders, outputs)
    are not reported under None."""
    m = shifted(0.5, batch=2)
    m.graph.node[0].name, m.graph.node[1].name = "flat_node", "add_node"
    times = torch_runner(m, tmp_path).layer_times_ms(np.zeros((2, 1, 2, 2), np.float32), 2)
    assert times and None not in times and set(times) <= {"flat_node", "add_node"}


# --- vitrt.compiler.cleanup ---------------------------------------------------------------------------------------

def _tiny_view(batch=1):
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.lower import lower
    from vitrt.compiler.models import canonicalize

    return GraphView.from_onnx(lower(canonicalize(tiny_vit(depth=1)), batch=batch))


def _toposorted(graph) -> bool:
    seen = {t.name for t in graph.inputs} | {n for n, t in graph.tensors().items() if not hasattr(t, "inputs") or
                                             not t.inputs}
    for node in graph.nodes:
        if any(t.name and t.name not in seen for t in node.inputs):
            return False
        seen |= {t.name for t in node.outputs}
    return True


def test_cleanup_removes_a_dead_node_says_so_and_a_second_cleanup_modifies_nothing():
    """CleanupPass: a dead node is removed (nodes_removed 1, modified); cleaning the clean graph again removes
    nothing and reports the graph unmodified (so the verifier skips it)."""
    import onnx_graphsurgeon as gs

    from vitrt.compiler.cleanup import CleanupPass
    from vitrt.compiler.pass_manager import PassContext

    view = CleanupPass().run(_tiny_view(), PassContext()).view  # what lowering leaves to fold, folded
    x = view.graph.inputs[0]
    view.graph.nodes.append(gs.Node("Relu", "dead.relu", inputs=[x], outputs=[gs.Variable("dead.out", np.float32)]))
    view.refresh()
    first = CleanupPass().run(view, PassContext())
    assert first.modified and first.stats["nodes_removed"] == 1
    second = CleanupPass().run(first.view, PassContext())
    assert not second.modified and second.stats["nodes_removed"] == 0


def test_cleanup_keeps_an_unused_graph_input_and_toposorts():
    """CleanupPass leaves the graph's inputs as they are (an unused one included) and puts the nodes in
    topological order."""
    import onnx_graphsurgeon as gs

    from vitrt.compiler.cleanup import CleanupPass
    from vitrt.compiler.pass_manager import PassContext

    view = _tiny_view()
    view.graph.inputs.append(gs.Variable("spare", np.float32, (1,)))
    view.graph.nodes = view.graph.nodes[::-1]
    view.refresh()
    graph = CleanupPass().run(view, PassContext()).view.graph
    assert [t.name for t in graph.inputs][-1] == "spare"
    assert _toposorted(graph)


def test_cleanup_leaves_a_bfloat16_constant_subgraph_unfolded():
    """CleanupPass never folds a bf16 node (ONNX Runtime's CPU provider has no bf16 Mul): the graph keeps it."""
    import ml_dtypes
    import onnx_graphsurgeon as gs

    from vitrt.compiler.cleanup import CleanupPass
    from vitrt.compiler.pass_manager import PassContext

    view = _tiny_view()
    graph = view.graph
    logits = graph.outputs[0]
    c = gs.Constant("bf.c", np.zeros((1,), ml_dtypes.bfloat16))
    product, cast, total = (gs.Variable("bf.mul", ml_dtypes.bfloat16), gs.Variable("bf.cast", np.float32),
                            gs.Variable("bf.total", np.float32, logits.shape))
    graph.nodes += [gs.Node("Mul", "bf.mul", inputs=[c, c], outputs=[product]),
                    gs.Node("Cast", "bf.cast", attrs={"to": TensorProto.FLOAT}, inputs=[product], outputs=[cast]),
                    gs.Node("Add", "bf.add", inputs=[logits, cast], outputs=[total])]
    graph.outputs = [total]
    view.refresh()
    result = CleanupPass().run(view, PassContext())
    assert {"bf.mul", "bf.cast"} <= {n.name for n in result.view.graph.nodes}


def test_touches_bfloat16_reads_numpy_and_onnx_dtypes_on_inputs_and_outputs():
    """_touches_bfloat16: a bf16 tensor typed as ml_dtypes' numpy dtype (set by vitrt) or as ONNX's enum (an
    imported graph), read or written by the node."""
    import ml_dtypes
    import onnx_graphsurgeon as gs

    from vitrt.compiler.cleanup import _touches_bfloat16

    f32 = gs.Variable("f", np.float32)
    numpy_bf16 = gs.Variable("nb", np.dtype(ml_dtypes.bfloat16))
    enum_bf16 = gs.Variable("eb", TensorProto.BFLOAT16)
    assert not _touches_bfloat16(gs.Node("Relu", inputs=[f32], outputs=[gs.Variable("g", np.float32)]))
    assert _touches_bfloat16(gs.Node("Relu", inputs=[numpy_bf16], outputs=[gs.Variable("g2", np.float32)]))
    assert _touches_bfloat16(gs.Node("Relu", inputs=[enum_bf16], outputs=[gs.Variable("g3", np.float32)]))
    assert _touches_bfloat16(gs.Node("Cast", inputs=[f32], outputs=[numpy_bf16]))


def test_only_a_symbolic_leading_dim_is_a_dynamic_batch():
    import onnx_graphsurgeon as gs

    from vitrt.compiler.cleanup import _is_dynamic_batch

    def var(shape):
        return gs.Variable("t", np.float32, shape)

    assert _is_dynamic_batch(var(("batch", 3, 4)))
    assert not _is_dynamic_batch(var(("batch", "tokens", 4)))
    assert not _is_dynamic_batch(var((None, 4))) and not _is_dynamic_batch(var((2, 4)))
    assert not _is_dynamic_batch(var(()))


# --- vitrt.calib.reference ----------------------------------------------------------------------------------------

# a reference recipe that trains in well under a second (the shipped one takes minutes)
TINY_RECIPE = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=1, epochs=1, batch_size=512,
                   warmup_epochs=0)


def test_the_reference_models_data_config_is_the_digits_pipeline():
    """build_reference_model: timm's data config says what the digits pipeline does — bilinear at the model's
    size, no crop, the digits normalisation (not ImageNet's)."""
    from vitrt.calib.digits import DIGITS_NORMALIZATION
    from vitrt.calib.reference import ReferenceRecipe, build_reference_model

    cfg = build_reference_model(ReferenceRecipe(**TINY_RECIPE)).pretrained_cfg
    mean, std = DIGITS_NORMALIZATION
    assert cfg["input_size"] == (3, 16, 16) and cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == (mean,) * 3 and cfg["std"] == (std,) * 3 and cfg["num_classes"] == 10


def test_the_shipped_reference_loads_in_eval_mode():
    from vitrt.calib.reference import load_reference

    model, info = load_reference()
    assert not model.training and info["test_top1"] > 0.9


def test_shipped_weights_without_their_json_are_refused(tmp_path, monkeypatch):
    """load_reference needs both shipped files: weights whose .json is missing are refused in one line."""
    from vitrt.calib import reference

    recipe = reference.ReferenceRecipe(**TINY_RECIPE)
    monkeypatch.setattr(reference, "SHIPPED_DIR", tmp_path)
    torch.save(reference.build_reference_model(recipe).state_dict(), tmp_path / f"{recipe.name}.pt")
    with pytest.raises(VitrtError, match="no shipped reference weights"):
        reference.load_reference(recipe)


def test_retraining_refuses_a_non_empty_out_before_training(tmp_path, monkeypatch):
    """retrain_and_compare checks OUT before minutes of training: a non-empty OUT without force is refused and
    nothing trains."""
    from vitrt.calib import reference
    from vitrt.compiler.errors import OutputError

    monkeypatch.setattr(reference, "SHIPPED_DIR", tmp_path / "shipped")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    torch.manual_seed(123)
    untouched = torch.rand(1)
    torch.manual_seed(123)
    with pytest.raises(OutputError, match="is not empty"):
        reference.retrain_and_compare(reference.ReferenceRecipe(**TINY_RECIPE), out=out)
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert torch.equal(torch.rand(1), untouched)  # nothing trained: not even the recipe's seed was set


def test_retraining_reproduces_seeded_weights_and_names_a_weight_that_differs(tmp_path, monkeypatch):
    """retrain_and_compare: the recipe's seed makes training reproducible (weights shipped from an earlier run
    match bit for bit); one changed tensor among the shipped ones is no match, with its difference reported."""
    from vitrt.calib import reference

    recipe = reference.ReferenceRecipe(**TINY_RECIPE)
    monkeypatch.setattr(reference, "SHIPPED_DIR", tmp_path)
    torch.manual_seed(123)  # whatever the global generator holds: the recipe's seed decides
    model, info = reference.train_reference(recipe)
    weights, info_path = reference.shipped_paths(recipe)
    torch.save(model.state_dict(), weights)
    info_path.write_text(json.dumps(info))
    torch.manual_seed(456)
    same = reference.retrain_and_compare(recipe)
    assert same["matches_shipped"] and same["max_abs_weight_difference"] == 0.0
    changed = model.state_dict()
    changed["head.bias"] = changed["head.bias"] + 0.25
    torch.save(changed, weights)
    other = reference.retrain_and_compare(recipe)
    assert not other["matches_shipped"] and other["max_abs_weight_difference"] == pytest.approx(0.25)


# --- vitrt.transforms.base ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """An ImageFolder of 4 digits test images (PNG, one directory per class)."""
    from PIL import Image

    from vitrt.calib.digits import digits_split

    root = tmp_path_factory.mktemp("small_folder")
    _, test = digits_split(32)
    for i in range(4):
        (root / str(int(test.labels[i]))).mkdir(exist_ok=True)
        pixels = ((test.images[i, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(root / str(int(test.labels[i])) / f"{i}.png")
    return root


def test_plan_context_data_follows_the_compiles_seed_and_the_models_preprocessing(small_folder):
    """PlanContext.data: synthetic images from the compile's seed; an ImageFolder through the model's own input
    pipeline (the manifest's preprocessing), not timm's defaults."""
    from vitrt.calib.data import load_data, take_images
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.target import TargetConfig
    from vitrt.transforms.base import PlanContext

    twin = canonicalize(tiny_vit(depth=1))
    img = twin.spec.img
    seeded = PlanContext(target=TargetConfig(batch=2), teacher=twin, seed=3)
    assert torch.equal(seeded.data("synthetic", limit=4).images, load_data("synthetic", img, limit=4, seed=3).images)
    assert not torch.equal(seeded.data("synthetic", limit=4).images,
                           load_data("synthetic", img, limit=4, seed=0).images)
    digits_like = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0,
                   "crop_mode": "center", "input_size": (3, img, img)}
    ctx = PlanContext(target=TargetConfig(batch=2), teacher=twin, preprocessing=digits_like)
    got = torch.cat(list(take_images(ctx.data(str(small_folder), limit=4), 4)))
    want = torch.cat(list(take_images(load_data(str(small_folder), img, limit=4, preprocessing=digits_like), 4)))
    default = torch.cat(list(take_images(load_data(str(small_folder), img, limit=4), 4)))
    assert torch.equal(got, want) and not torch.equal(got, default)


def test_plan_context_data_reads_the_split_it_is_asked_for():
    from vitrt.calib.digits import digits_split
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.target import TargetConfig
    from vitrt.transforms.base import PlanContext

    twin = canonicalize(tiny_vit(depth=1))
    test = PlanContext(target=TargetConfig(batch=2), teacher=twin).data("digits", split="test", limit=5)
    assert torch.equal(test.images, digits_split(twin.spec.img)[1].images[:5])


# --- vitrt.calib.digits -------------------------------------------------------------------------------------------

def test_the_digits_test_split_is_stratified():
    """digits_split: the 25 % test split keeps each digit's share (stratified), so every class is tested alike."""
    from vitrt.calib.digits import digits_split

    train, test = digits_split(8)
    for label in range(10):
        total = int((train.labels == label).sum() + (test.labels == label).sum())
        assert abs(int((test.labels == label).sum()) - 0.25 * total) <= 1, label


def test_an_image_set_subset_keeps_the_labels_and_an_unlabelled_set_says_so():
    from vitrt.calib.digits import ImageSet

    images, labels = torch.arange(5.0).reshape(5, 1, 1, 1), torch.tensor([4, 3, 2, 1, 0])
    part = ImageSet(images, labels).subset([1, 3])
    assert torch.equal(part.images.flatten(), torch.tensor([1.0, 3.0])) and torch.equal(part.labels, torch.tensor([3, 1]))
    assert part.labelled and not ImageSet(images, None).labelled
    assert [len(x) for x, _ in ImageSet(images, labels).batches(2)] == [2, 2, 1]
    order = torch.cat([y for _, y in ImageSet(images, labels).batches(2, shuffle=True,
                                                                        generator=torch.Generator().manual_seed(1))])
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4] and order.tolist() != [4, 3, 2, 1, 0]


def test_augment_shifts_by_up_to_three_pixels_either_way_padding_with_normalised_black():
    """augment: a random translation by -3..+3 pixels on each axis (both extremes occur), the uncovered border
    filled with -1 (black after the digits normalisation)."""
    from vitrt.calib.digits import augment

    images = torch.ones(200, 1, 8, 8)
    out = augment(images, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    top = (out[:, 0, :3, :] == -1).flatten(1).all(1)  # shifted down by 3: the top 3 rows are padding
    bottom = (out[:, 0, -3:, :] == -1).flatten(1).all(1)  # shifted up by 3
    assert top.any() and bottom.any()
    assert not (out[:, 0, :4, :] == -1).flatten(1).all(1).any()  # never more than 3


def test_the_torch_runner_feeds_bf16_activations_as_bf16(tmp_path):
    """_to_device keeps bf16 inputs (a typed subgraph, a latency-table point) in bf16: 1 + 2⁻⁹ rounds to 1 in
    bf16 arithmetic, as the graph says; the same sum in fp32 would not."""
    import ml_dtypes

    bf16 = ml_dtypes.bfloat16
    nodes = [helper.make_node("Add", ["x", "c"], ["y"])]
    m = model(nodes, [("x", BF16, [2, 4])], [("y", BF16, [2, 4])], [("c", np.full((4,), 2.0 ** -9, bf16))])
    out = torch_runner(m, tmp_path).infer(np.ones((2, 4), bf16))
    assert out.dtype == np.float32 and np.array_equal(out, np.ones((2, 4), np.float32))


def test_cleanup_counts_a_tensor_shape_inference_knows_nothing_about():
    """CleanupPass: the output of an op shape inference cannot see into (a custom-domain op) has no shape at all;
    it is counted among the tensors without a static shape, not a crash."""
    import onnx_graphsurgeon as gs

    from vitrt.compiler.cleanup import CleanupPass
    from vitrt.compiler.pass_manager import PassContext

    view = _tiny_view()
    graph = view.graph
    out = gs.Variable("opaque.out", np.float32)
    graph.nodes.append(gs.Node("Opaque", "opaque", inputs=[graph.outputs[0]], outputs=[out], domain="custom"))
    graph.outputs.append(out)
    view.refresh()
    result = CleanupPass().run(view, PassContext())
    assert result.view.graph.tensors()["opaque.out"].shape is None
    assert result.stats["tensors_without_static_shape"] == 1


# --- vitrt.transforms.sparsity.export -----------------------------------------------------------------------------

def test_a_layer_off_the_cutlass_tile_is_exported_row_major_with_its_logical_and_padded_shapes(tmp_path):
    """write_sparse_weights: an operand whose shape is not a whole CUTLASS tile is stored row-major; the index
    gives its logical shape (operand_shape) and the padded one apart."""
    from vitrt.kernels import sparse24
    from vitrt.transforms.sparsity.export import write_sparse_weights
    from vitrt.transforms.sparsity.plan import LayerDecision

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 32)).astype(np.float32)  # MatMul B [K=8, N=32]: operand A [32, 8]
    weight *= sparse24.mask_2to4(weight, axis=0)
    write_sparse_weights(tmp_path / "w.npz", [LayerDecision("fc", "matmul", weight.shape, 0, True)],
                         {"fc.weight": weight})
    entry = json.loads((tmp_path / "sparse_weights.json").read_text())["layers"]["fc"]
    assert entry["layout"] == "rowmajor" and entry["operand_shape"] == [32, 8]
    assert entry["padded_shape"] == list(sparse24.padded_shape((32, 8), "fp16", "rowmajor")) != [32, 8]
    with np.load(tmp_path / "w.npz") as arrays:
        packed = sparse24.Compressed("fp16", entry["layout"], tuple(entry["operand_shape"]),
                                     tuple(entry["padded_shape"]), arrays[entry["values"]], arrays[entry["meta"]])
    assert np.array_equal(sparse24.decompress(packed), weight.T.astype(np.float16))
