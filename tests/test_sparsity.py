"""2:4 sparsity (vitrt.transforms.sparsity): the common recipe — tiny model, expected structure, ONNX Runtime vs
the twin at the fp32 tolerance, ONNX checker — plus 2:4 along the axis TensorRT checks (Polygraphy agrees),
eligibility and include / exclude, channel permutation, the plan's JSON + arrays round trip, a stateless pass
and a twin transform that never mutates its input, export, sparse fine-tuning with fixed masks, CLI errors, and
a compile that leaves the caller's model untouched."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import max_abs, tiny_vit
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import FP32_TOLERANCE, OpCountInstrument, PassContext, PassManager
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.verify import VerifyInstrument, run_onnx, run_torch, verification_inputs
from vitrt.kernels import sparse24
from vitrt.transforms.base import Finished, PlanContext
from vitrt.transforms.sparsity import planner, report
from vitrt.transforms.sparsity.config import DEFAULT_MIN_WEIGHTS, SparsityConfig
from vitrt.transforms.sparsity.graph_pass import SparsityPass
from vitrt.transforms.sparsity.plan import SparsityPlan, decide_layers, onnx_mask, prune_axis

BATCH = 2
# tiny_vit: 2 blocks x 6 projections are eligible; patch_embed (C = 3) and head (640 weights) stay dense
TINY_SKIPPED = {"patch_embed": "input channels C = 3 is not a multiple of 4",
                "head": "below the size threshold: 640 weights < 4096"}


def polygraphy_sparse_tensors(model: onnx.ModelProto) -> tuple[set[str], dict[str, int]]:
    """Polygraphy's own checker (``polygraphy inspect sparsity``): tensors it finds 2:4, and the axis it checks."""
    from polygraphy.tools.sparse import SparsityPruner

    pruner = SparsityPruner(model)
    with warnings.catch_warnings():
        # Polygraphy compares each np.float32 |w| with sys.float_info.max; NumPy 2 casts that Python float to
        # float32 (inf) and warns. Harmless for the check, and only this call does it.
        warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning)
        pruner.check()
    return set(pruner.sparse_tensors), {info.name: info.axis for info in pruner.prune_infos.values()}


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def plan_sparsity(twin, **options) -> SparsityPlan:
    """The planner on ``twin`` with ``--sparsity 2:4`` and ``options`` (SparsityConfig fields)."""
    config = SparsityConfig(pattern="2:4", **options).validate()
    return planner.plan(twin, PlanContext(target=TargetConfig(batch=BATCH), teacher=twin), config)


def run_pass(twin, plan: SparsityPlan) -> onnx.ModelProto:
    """SparsityPass alone on the lowered ``twin`` (no instruments)."""
    return SparsityPass(plan).run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext()).view.to_onnx()


def compile_tiny(tmp_path, name="out", model=None, **options):
    import vitrt

    options.setdefault("quiet", True)
    return vitrt.compile(model or tiny_vit(), tmp_path / name, verify=True, sparsity="2:4", **options)


def test_pass_prunes_every_eligible_weight_along_k_and_polygraphy_agrees():
    twin = canonicalize(tiny_vit())
    dense = lower(twin, batch=BATCH)
    plan = plan_sparsity(twin)
    images = verification_inputs(twin.spec, BATCH, seed=1, count=2)
    manager = PassManager([SparsityPass(plan)], [OpCountInstrument(), VerifyInstrument(images, BATCH)],
                          check_properties=True)
    result = manager.run(GraphView.from_onnx(lower(twin, batch=BATCH)), PassContext(), twin=twin)
    model = result.view.to_onnx()
    onnx.checker.check_model(model)
    # structure: same ops, same node count, only weight values changed; the backend is told to use sparse math
    record = result.records[0]
    assert record.name == "sparsity_2to4" and record.changes_function
    assert record.stats["op_delta"] == {} and (record.stats["eligible"], record.stats["skipped"]) == (12, 2)
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in dense.graph.node]
    assert result.build_hints == {"sparse_weights": True}
    assert {d.name: d.reason for d in plan.decisions if not d.eligible} == TINY_SKIPPED
    eligible = {d.initializer for d in plan.eligible}
    assert len(eligible) == 12
    weights = initializers(model)
    for name in eligible:
        assert sparse24.is_2to4(weights[name], 0), name
        assert not sparse24.is_2to4(weights[name], 1), name  # ... and not by accident along N
    found, axes = polygraphy_sparse_tensors(model)
    assert found == eligible
    assert all(axes[name] == 0 for name in eligible)  # Polygraphy checks MatMul B along axis 0 too
    assert polygraphy_sparse_tensors(dense)[0] == set()  # the dense graph is not 2:4 for Polygraphy (can fail)
    # ONNX Runtime vs the twin with the same masks, at the fp32 tolerance (the pass only zeroes weights)
    assert max_abs(run_onnx(model, images, BATCH), run_torch(result.twin, images)) <= FP32_TOLERANCE
    assert record.stats["verify_max_abs_err"] <= FP32_TOLERANCE
    assert max_abs(run_torch(twin, images), run_torch(result.twin, images)) > 1e-3  # the function did change
    # the masks are plain data for later stages: {canonical name: numpy bool array shaped like the twin weight}
    assert set(plan.masks) == {d.name for d in plan.eligible}
    for d in plan.eligible:
        mask = plan.masks[d.name]
        weight = result.twin.get_submodule(d.name).weight.detach().numpy()
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == weight.shape
        assert np.array_equal(weight.T, weights[d.initializer])
        dropped = weights[d.initializer][~onnx_mask(d, mask)]
        assert not dropped.any() and not np.signbit(dropped).any()  # +0, never -0
        assert int(mask.sum()) == mask.size // 2


def test_eligibility_reasons():
    layers = [("patch_embed", "conv", (64, 3, 8, 8)), ("blocks.0.attn.q", "matmul", (64, 64)),
              ("blocks.0.mlp.fc2", "matmul", (10, 64)), ("blocks.0.mlp.fc1", "matmul", (64, 256)),
              ("head", "matmul", (64, 10)), ("tiny", "matmul", (8, 8))]
    decisions = {d.name: d for d in decide_layers(layers, exclude="blocks.0.mlp.fc1", min_weights=1000)}
    assert decisions["patch_embed"].reason == "input channels C = 3 is not a multiple of 4"
    assert decisions["blocks.0.attn.q"].eligible and decisions["blocks.0.attn.q"].axis == 0
    assert decisions["blocks.0.mlp.fc2"].reason == "K = 10 is not a multiple of 4"
    assert decisions["blocks.0.mlp.fc1"].reason == "excluded by --sparse-exclude 'blocks.0.mlp.fc1'"
    assert decisions["head"].reason == "below the size threshold: 640 weights < 1000"
    only = {d.name: d for d in decide_layers(layers, include="blocks.*", min_weights=0)}
    assert only["head"].reason == "not matched by --sparse-include 'blocks.*'"
    assert only["blocks.0.mlp.fc1"].eligible and not only["blocks.0.mlp.fc2"].eligible
    assert prune_axis("gemm", trans_b=True) == 1 and prune_axis("gemm") == 0 and prune_axis("conv") == 1
    gemms = decide_layers([("g", "gemm", (64, 30), True), ("h", "gemm", (64, 30), False)], min_weights=0)
    assert gemms[0].reason == "K = 30 is not a multiple of 4" and gemms[0].axis == 1  # B[N, K] with transB
    assert gemms[1].eligible and gemms[1].axis == 0 and gemms[1].operand_shape() == (30, 64)
    for flag, kwargs in (("--sparse-exclude", {"exclude": "blocks.0.ml.*"}), ("--sparse-include", {"include": "nope"})):
        with pytest.raises(VitrtError, match=f"{flag} pattern .* matches no layer"):
            decide_layers(layers, **kwargs)
    assert DEFAULT_MIN_WEIGHTS == 4096


def test_include_exclude_in_the_compiled_graph(tmp_path):
    result = compile_tiny(tmp_path, sparse_exclude="blocks.1.*,blocks.0.attn.q", sparse_min_weights=0)
    weights = initializers(onnx.load(result.onnx_path))
    by_name = {layer["name"]: layer for layer in result.manifest["sparsity"]["layers"]}
    assert by_name["blocks.1.mlp.fc1"]["reason"] == "excluded by --sparse-exclude 'blocks.1.*'"
    assert by_name["blocks.0.attn.q"]["reason"] == "excluded by --sparse-exclude 'blocks.0.attn.q'"
    assert by_name["head"]["eligible"]  # size threshold 0
    assert sparse24.is_2to4(weights["head.weight"], 0)
    assert not sparse24.is_2to4(weights["blocks.0.attn.q.weight"], 0)
    assert not sparse24.is_2to4(weights["blocks.1.mlp.fc2.weight"], 0)
    assert sparse24.is_2to4(weights["blocks.0.attn.k.weight"], 0)
    assert result.manifest["verify"]["max_abs_err"] <= FP32_TOLERANCE


def test_patch_embedding_conv_is_pruned_along_input_channels(tmp_path):
    result = compile_tiny(tmp_path, model=tiny_vit(in_chans=4), sparse_include="patch_embed")
    model = onnx.load(result.onnx_path)
    conv = initializers(model)["patch_embed.weight"]  # [64, 4, 8, 8]
    assert sparse24.is_2to4(conv, 1) and (conv != 0).sum() == conv.size // 2
    assert not sparse24.is_2to4(conv.reshape(64, -1), 1)  # not along the flattened C·R·S
    found, axes = polygraphy_sparse_tensors(model)
    assert found == {"patch_embed.weight"} and axes["patch_embed.weight"] == 1
    assert result.manifest["verify"]["max_abs_err"] <= FP32_TOLERANCE
    mask = result.plans["sparsity"].masks["patch_embed"]
    assert mask.shape == (64, 4, 8, 8) and np.array_equal(mask, conv != 0)  # the conv weight keeps its layout


def test_permutation_is_exact_before_masking():
    twin = canonicalize(tiny_vit(depth=2, embed_dim=64, num_heads=4))
    permuted = canonicalize(tiny_vit(depth=2, embed_dim=64, num_heads=4))
    retained = planner.permute_twin(permuted)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_abs(permuted(images), twin(images)) <= FP32_TOLERANCE
    assert sorted(retained) == ["blocks.0.attn.proj", "blocks.0.mlp.fc2", "blocks.1.attn.proj", "blocks.1.mlp.fc2"]
    for figures in retained.values():
        assert figures["with_permutation"] >= figures["without_permutation"]
    # V dims moved only within their head: each head's block of proj columns is a permutation of itself
    v_dim = 16
    for block_twin, block_perm in zip(twin.blocks, permuted.blocks):
        before, after = block_twin.attn.proj.weight.detach(), block_perm.attn.proj.weight.detach()
        assert not torch.equal(before, after)  # something moved (the check below can fail)
        for head in range(4):
            cols = slice(head * v_dim, (head + 1) * v_dim)
            assert torch.equal(before[:, cols].sort(dim=1).values, after[:, cols].sort(dim=1).values)


def test_permutation_raises_retained_magnitude_on_trained_weights(digits_reference):
    from vitrt.transforms.sparsity.permutation import retained_fraction, search_permutation

    model, _ = digits_reference
    weight = model.blocks[6].mlp.fc2.weight.detach().numpy()  # a real trained weight, A[64, 256]
    order = search_permutation(weight)
    assert sorted(order.tolist()) == list(range(256))
    before, after = retained_fraction(weight), retained_fraction(weight[:, order])
    assert after > before + 0.01, (before, after)


def test_permuted_compile_verifies(tmp_path):
    result = compile_tiny(tmp_path, permute=True)
    section = result.manifest["sparsity"]
    assert section["permutation"]["mean_retained_with"] > section["permutation"]["mean_retained_without"]
    fc2 = next(layer for layer in section["layers"] if layer["name"] == "blocks.0.mlp.fc2")
    assert fc2["retained_magnitude"]["with_permutation"] > fc2["retained_magnitude"]["without_permutation"]
    assert result.manifest["verify"]["max_abs_err"] <= FP32_TOLERANCE
    assert polygraphy_sparse_tensors(onnx.load(result.onnx_path))[0] == {
        layer["name"] + ".weight" for layer in section["layers"] if layer["eligible"]}


def test_storage_accounting_and_export(tmp_path):
    result = compile_tiny(tmp_path, export_sparse=True)
    manifest = result.manifest
    assert [p["name"] for p in manifest["passes"]] == ["sparsity_2to4", "cleanup"]
    assert manifest["verify"]["reference"] == "torch twin" and manifest["verify"]["max_abs_err"] <= FP32_TOLERANCE
    storage = manifest["sparsity"]["storage"]
    assert storage["fp16"]["eligible_saved"] == 0.4375 and storage["int8"]["eligible_saved"] == 0.375
    assert 0 < storage["fp16"]["saved"] < 0.4375  # the skipped patch embedding and head stay dense
    index = json.loads((result.out / "sparse_weights.json").read_text())
    arrays = np.load(result.out / "sparse_weights.npz")
    weights = initializers(onnx.load(result.onnx_path))
    assert len(index["layers"]) == 12
    for name, entry in index["layers"].items():
        packed = sparse24.Compressed("fp16", entry["layout"], tuple(entry["operand_shape"]), tuple(entry["padded_shape"]),
                                     arrays[entry["values"]], arrays[entry["meta"]])
        expected = weights[entry["initializer"]].T.astype(np.float16)
        assert sparse24.decompress(packed).tobytes() == expected.tobytes(), name
        assert entry["bytes"] / entry["dense_bytes"] == 1 - 0.4375
        # CUTLASS-ordered where the tile fits: FP16 metadata reorders in tiles of 32 rows and pairs of 16-column
        # metadata words (sparse24's module doc), else row-major
        m, k = entry["operand_shape"]
        assert entry["layout"] == ("cutlass" if m % 32 == 0 and k % 32 == 0 else "rowmajor"), name
    assert any(entry["layout"] == "cutlass" for entry in index["layers"].values())


def test_an_eligible_conv_is_exported_as_its_nhwc_gemm_operand(tmp_path):
    """A Conv weight [M, C, R, S] pruned 2:4 along C is exported as the GEMM operand [M, R·S·C], C fastest."""
    from vitrt.transforms.sparsity.export import write_sparse_weights
    from vitrt.transforms.sparsity.plan import LayerDecision

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 4, 2, 2)).astype(np.float32)
    weight *= sparse24.mask_2to4(weight, axis=1)
    write_sparse_weights(tmp_path / "w.npz", [LayerDecision("patch_embed", "conv", weight.shape, 1, True)],
                         {"patch_embed.weight": weight})
    entry = json.loads((tmp_path / "sparse_weights.json").read_text())["layers"]["patch_embed"]
    with np.load(tmp_path / "w.npz") as arrays:
        packed = sparse24.Compressed("fp16", entry["layout"], tuple(entry["operand_shape"]),
                                     tuple(entry["padded_shape"]), arrays[entry["values"]], arrays[entry["meta"]])
    expected = weight.transpose(0, 2, 3, 1).reshape(32, 16).astype(np.float16)
    assert entry["operand_shape"] == [32, 16] and np.array_equal(sparse24.decompress(packed), expected)


def test_plan_round_trips_through_json_and_arrays(tmp_path):
    twin = canonicalize(tiny_vit())
    plan = plan_sparsity(twin, permute=True, export=True)  # permuted: the plan carries twin weights too
    assert plan.weights is not None and plan.permutation is not None
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    np.savez(tmp_path / "plan.npz", **plan.arrays())
    data = json.loads((tmp_path / "plan.json").read_text())
    with np.load(tmp_path / "plan.npz") as stored:
        arrays = dict(stored)
    loaded = SparsityPlan.from_dict(data, arrays)
    assert loaded.to_dict() == plan.to_dict() and loaded.decisions == plan.decisions
    assert set(loaded.masks) == set(plan.masks) and set(loaded.weights) == set(plan.weights)
    assert all(np.array_equal(loaded.masks[k], plan.masks[k]) for k in plan.masks)
    assert all(np.array_equal(loaded.weights[k], plan.weights[k]) for k in plan.weights)
    # the loaded plan rewrites the graph exactly as the original does
    before, after = initializers(run_pass(twin, plan)), initializers(run_pass(twin, loaded))
    assert all(np.array_equal(before[k], after[k]) for k in before)

    def refused(message, data=data, arrays=arrays):
        with pytest.raises(VitrtError, match=message) as info:
            SparsityPlan.from_dict(data, arrays)
        assert "\n" not in str(info.value)

    q = "mask/blocks.0.attn.q"
    refused("format 2 is not supported", data={**data, "format": 2})
    refused("missing or invalid field 'pattern'", data={k: v for k, v in data.items() if k != "pattern"})
    refused("missing or invalid field 'axis'", data={**data, "decisions": [
        {k: v for k, v in d.items() if k != "axis"} for d in data["decisions"]]})
    refused(r"masks for \['blocks.0.attn.q'\] do not match", arrays={k: v for k, v in arrays.items() if k != q})
    refused("'blocks.0.attn.q' is not 2:4 along axis 0", arrays={**arrays, q: np.ones_like(arrays[q])})
    refused(r"is bool \[64, 32\], expected bool \[64, 64\]", arrays={**arrays, q: arrays[q][:, :32]})
    refused("is float32", arrays={**arrays, q: arrays[q].astype(np.float32)})


def test_pass_is_stateless_and_the_twin_transform_never_mutates_its_input():
    twin = canonicalize(tiny_vit())
    state = copy.deepcopy(twin.state_dict())
    attributes = set(vars(twin))
    # permutation and fine-tuning both change weights: the planner does both on its own copy
    plan = plan_sparsity(twin, permute=True, finetune_epochs=1, data="synthetic")
    masks = {k: v.copy() for k, v in plan.masks.items()}
    sparse_pass = SparsityPass(plan)
    assert vars(sparse_pass) == {"plan": plan}  # constructed with its plan, nothing else
    first, second = initializers(run_pass(twin, plan)), initializers(run_pass(twin, plan))
    assert all(np.array_equal(first[k], second[k]) for k in first)  # the same plan rewrites the same way again
    assert vars(sparse_pass) == {"plan": plan}
    assert all(np.array_equal(plan.masks[k], masks[k]) for k in masks)
    sparse = sparse_pass.apply_to_twin(twin)
    again = sparse_pass.apply_to_twin(twin)
    assert sparse is not twin and set(vars(twin)) == attributes
    for name, value in twin.state_dict().items():
        assert torch.equal(value, state[name]), name  # neither the planner nor the twin transform touched it
    assert all(torch.equal(a, b) for a, b in zip(sparse.state_dict().values(), again.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(sparse.state_dict().values(), twin.state_dict().values()))


def test_a_plan_for_another_structure_is_refused():
    plan = plan_sparsity(canonicalize(tiny_vit()))
    with pytest.raises(VitrtError, match="unknown layer 'blocks.1.attn.q'"):
        SparsityPass(plan).apply_to_twin(canonicalize(tiny_vit(depth=1)))
    wider = canonicalize(tiny_vit(mlp_ratio=2.0))
    with pytest.raises(VitrtError, match=r"'blocks.0.mlp.fc1' weight is \[128, 64\], the plan was made for \[256, 64\]"):
        SparsityPass(plan).apply_to_twin(wider)
    with pytest.raises(VitrtError, match="'blocks.0.mlp.fc1.weight' is not the .* weight the plan was made for"):
        run_pass(wider, plan)


def test_pass_sets_the_tensorrt_flag_and_reports_sparse_tactics(tmp_path):
    plan = plan_sparsity(canonicalize(tiny_vit()))
    section = plan.report()
    assert report.finish(plan, section, Finished(tmp_path, {}, None)) == {}  # no TensorRT build: nothing to add
    assert "tensorrt" not in section
    # the inspector JSON TensorRT writes with DETAILED verbosity (one layer fused from two MatMuls); sparse weights
    # are read from HasSparseWeights, never from the tactic name (the dense layer's tactic name says "sparse")
    inspector = {"Layers": [{"Name": "blocks.0.mlp.fc1 + blocks.0.mlp.act.div", "HasSparseWeights": 1,
                             "TacticName": "sm80_xmma_gemm_f16f16_f16f32_tn"},
                            {"Name": "blocks.0.attn.q", "HasSparseWeights": 0, "TacticName": "sparse_lookalike_tn"},
                            {"Name": "blocks.0.attn.qk_sparse_probe", "HasSparseWeights": 1},  # not attn.q's name
                            {"Name": "{ForeignNode[blocks.0.attn.qk...blocks.0.attn.av]}", "TacticName": "0x0"}]}
    files = report.finish(plan, section, Finished(tmp_path, {"engine_inspector": inspector}, None))
    files["sparse_tactics.json"](tmp_path / "sparse_tactics.json")
    tensorrt = section["tensorrt"]
    assert tensorrt["eligible_with_sparse_tactic"] == ["blocks.0.mlp.fc1"]
    assert json.loads((tmp_path / "sparse_tactics.json").read_text()) == tensorrt


def test_sparse_finetuning_on_digits_keeps_zeros_exactly_and_records_feature_losses(tmp_path):
    result = compile_tiny(tmp_path, sparse_finetune_epochs=1, sparse_data="digits")
    section = result.manifest["sparsity"]
    finetune = section["finetune"]
    assert len(finetune["per_feature_losses"]) == 2 + 2  # patch embedding, 2 blocks, final projection
    assert abs(sum(finetune["feature_weights"]) - 1.0) < 1e-6
    assert finetune["history"][0]["total"] > 0
    on_disk = json.loads((result.out / "sparse_feature_losses.json").read_text())
    assert on_disk["per_feature_losses"] == finetune["per_feature_losses"]
    assert on_disk["feature_names"] == ["patch_embed", "blocks.0", "blocks.1", "final_projection"]
    # the masks are the one-shot magnitude masks, fixed through fine-tuning; the kept weights did train
    plan, one_shot = result.plans["sparsity"], plan_sparsity(canonicalize(tiny_vit()))
    assert all(np.array_equal(plan.masks[k], one_shot.masks[k]) for k in one_shot.masks)
    weights = initializers(onnx.load(result.onnx_path))
    one_shot_weights = initializers(run_pass(canonicalize(tiny_vit()), one_shot))
    for d in plan.eligible:
        w, mask = weights[d.initializer], onnx_mask(d, plan.masks[d.name])
        assert sparse24.is_2to4(w, 0) and not w[~mask].any() and not np.signbit(w[~mask]).any(), d.name
        assert (w[mask] != 0).sum() >= mask.sum() - 8, d.name  # kept weights stay (almost surely) non-zero
        assert not np.array_equal(w, one_shot_weights[d.initializer]), d.name
        assert np.array_equal(result.twin.get_submodule(d.name).weight.detach().numpy().T, w)
    assert result.manifest["verify"]["max_abs_err"] <= FP32_TOLERANCE


def _snapshot(model: torch.nn.Module):
    """What a compile could change on the caller's model: weights, module classes, attributes, grad flags."""
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    modules = {name: (type(m), {key: (type(value), repr(value)) for key, value in vars(m).items()
                                if key not in ("_parameters", "_buffers", "_modules")})
               for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    return state, modules, grads


@pytest.mark.parametrize("kind", ["twin", "timm"])
def test_compile_never_modifies_the_callers_model(tmp_path, kind):
    """Defect 2: compiling a CanonicalViT used to zero its weights, attach ``sparsity_masks`` and swap its blocks
    for merging blocks (the driver ran the stages on the caller's twin itself)."""
    model = (canonicalize(tiny_vit()) if kind == "twin" else tiny_vit()).train()  # eval() would flip its flags
    state, modules, grads = _snapshot(model)
    result = compile_tiny(tmp_path, model=model, tome="4", sparse_finetune_epochs=1, sparse_data="synthetic")
    assert result.manifest["token_merge"] and result.manifest["sparsity"]["finetune"]  # every stage did run
    assert result.twin is not model
    after_state, after_modules, after_grads = _snapshot(model)
    assert after_state.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(after_state[name], value), name
    assert after_modules == modules  # same module tree, classes and attributes (incl. training)
    assert after_grads == grads


def test_cli_errors_are_one_line(tmp_path, capsys):
    from vitrt.cli import main

    cases = [(["--sparsity", "2:4", "--sparse-exclude", "blocks.99.*"], "--sparse-exclude pattern 'blocks.99.*' matches no layer"),
             (["--permute"], "--permute needs --sparsity 2:4"),
             (["--sparsity", "2:4", "--sparse-finetune-epochs", "2"], "needs data: pass --sparse-data")]
    for extra, text in cases:
        code = main(["compile", "deit_tiny_patch16_224", "-o", str(tmp_path / "x"), "--img-size", "32", "--quiet", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and text in err and "\n" not in err, err
        assert not (tmp_path / "x").exists()
