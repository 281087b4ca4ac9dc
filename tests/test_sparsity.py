"""The 2:4 sparsity pass: structure, 2:4 along TensorRT's axis (Polygraphy agrees), ONNX vs twin, eligibility,
include / exclude, permutation exactness and gain, export, fine-tuning with fixed masks, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import max_abs, tiny_vit
from vitrt.compiler.errors import VitrtError
from vitrt.kernels import sparse24
from vitrt.transforms.sparsity.graph_pass import DEFAULT_MIN_WEIGHTS, decide_layers, prune_axis


def polygraphy_sparse_tensors(model: onnx.ModelProto) -> tuple[set[str], dict[str, int]]:
    """Polygraphy's own checker (``polygraphy inspect sparsity``): tensors it finds 2:4, and the axis it checks."""
    from polygraphy.tools.sparse import SparsityPruner

    pruner = SparsityPruner(model)
    pruner.check()
    return set(pruner.sparse_tensors), {info.name: info.axis for info in pruner.prune_infos.values()}


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def compile_tiny(tmp_path, name="out", model=None, **options):
    import vitrt

    options.setdefault("quiet", True)
    return vitrt.compile(model or tiny_vit(), tmp_path / name, verify=True, sparsity="2:4", **options)


def test_pass_prunes_every_eligible_weight_along_k_and_polygraphy_agrees(tmp_path):
    import vitrt

    dense = vitrt.compile(tiny_vit(), tmp_path / "dense", quiet=True)
    result = compile_tiny(tmp_path)
    model = onnx.load(result.onnx_path)
    onnx.checker.check_model(model)
    # structure: same ops, same node count, only weight values changed
    assert result.manifest["passes"][0]["name"] == "sparsity_2to4"
    assert result.manifest["passes"][0]["stats"]["op_delta"] == {}
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in onnx.load(dense.onnx_path).graph.node]
    report = result.manifest["sparsity"]
    eligible = {layer["name"] + ".weight" for layer in report["layers"] if layer["eligible"]}
    assert len(eligible) == 12  # 2 blocks x 6 projections; patch_embed (C = 3) and head (640 weights) skipped
    weights = initializers(model)
    for name in eligible:
        assert sparse24.is_2to4(weights[name], 0), name
        assert not sparse24.is_2to4(weights[name], 1), name  # ... and not by accident along N
    found, axes = polygraphy_sparse_tensors(model)
    assert found == eligible
    assert all(axes[name] == 0 for name in eligible)  # Polygraphy checks MatMul B along axis 0 too
    # the dense compile is not 2:4 for Polygraphy (the check can fail)
    assert polygraphy_sparse_tensors(onnx.load(dense.onnx_path))[0] == set()
    # ONNX vs the twin with the same masks
    assert result.manifest["verify"]["reference"] == "torch twin"
    assert result.manifest["verify"]["max_abs_err"] <= 1e-4
    assert result.manifest["passes"][0]["stats"]["verify_max_abs_err"] <= 1e-4
    # the twin carries the masks as plain data for QAT: {canonical name: bool tensor like the weight}
    masks = result.twin.sparsity_masks
    assert set(masks) == {name[: -len(".weight")] for name in eligible}
    for layer in report["layers"]:
        if layer["eligible"]:
            module = result.twin.get_submodule(layer["name"])
            assert np.array_equal(module.weight.detach().numpy().T, weights[layer["name"] + ".weight"])
            mask = masks[layer["name"]]
            assert mask.dtype == torch.bool and mask.shape == module.weight.shape
            assert not module.weight[~mask].any() and int(mask.sum()) == mask.numel() // 2


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


def test_patch_embedding_conv_is_pruned_along_input_channels(tmp_path):
    result = compile_tiny(tmp_path, model=tiny_vit(in_chans=4), sparse_include="patch_embed")
    weights = initializers(onnx.load(result.onnx_path))
    conv = weights["patch_embed.weight"]  # [64, 4, 8, 8]
    assert sparse24.is_2to4(conv, 1) and (conv != 0).sum() == conv.size // 2
    found, axes = polygraphy_sparse_tensors(onnx.load(result.onnx_path))
    assert found == {"patch_embed.weight"} and axes["patch_embed.weight"] == 1
    assert result.manifest["verify"]["max_abs_err"] <= 1e-4


def test_permutation_is_exact_before_masking():
    from vitrt.transforms.sparsity.planner import permute_twin
    from vitrt.compiler.models import canonicalize

    twin = canonicalize(tiny_vit(depth=2, embed_dim=64, num_heads=4))
    permuted = canonicalize(tiny_vit(depth=2, embed_dim=64, num_heads=4))
    retained = permute_twin(permuted)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_abs(permuted(images), twin(images)) <= 1e-4
    assert sorted(retained) == ["blocks.0.attn.proj", "blocks.0.mlp.fc2", "blocks.1.attn.proj", "blocks.1.mlp.fc2"]
    for figures in retained.values():
        assert figures["with_permutation"] >= figures["without_permutation"]
    # V dims moved only within their head: each head's block of proj columns is a permutation of itself
    v_dim = 16
    for block_twin, block_perm in zip(twin.blocks, permuted.blocks):
        before, after = block_twin.attn.proj.weight.detach(), block_perm.attn.proj.weight.detach()
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
    report = result.manifest["sparsity"]
    assert report["permutation"]["mean_retained_with"] > report["permutation"]["mean_retained_without"]
    fc2 = next(layer for layer in report["layers"] if layer["name"] == "blocks.0.mlp.fc2")
    assert fc2["retained_magnitude"]["with_permutation"] > fc2["retained_magnitude"]["without_permutation"]
    assert result.manifest["verify"]["max_abs_err"] <= 1e-4
    assert polygraphy_sparse_tensors(onnx.load(result.onnx_path))[0] == {
        layer["name"] + ".weight" for layer in report["layers"] if layer["eligible"]}


def test_storage_accounting_and_export(tmp_path):
    result = compile_tiny(tmp_path, export_sparse=True)
    storage = result.manifest["sparsity"]["storage"]
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


def test_pass_sets_the_tensorrt_flag_and_reports_sparse_tactics(tmp_path):
    from vitrt.transforms.sparsity.planner import prepare_sparsity
    from vitrt.compiler.config import CompileConfig
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.lower import lower
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.pass_manager import PassContext
    from vitrt.transforms.sparsity.graph_pass import SparsityPass

    twin = canonicalize(tiny_vit())
    ctx = PassContext(twin=twin, options=CompileConfig(backend="trt", sparsity="2:4"))
    SparsityPass(prepare_sparsity(twin)).run(GraphView.from_onnx(lower(twin)), ctx)
    assert ctx.build == {"sparse_weights": True}
    # the inspector JSON TensorRT writes with DETAILED verbosity (one layer fused from two MatMuls)
    inspector = {"Layers": [{"Name": "blocks.0.mlp.fc1 + blocks.0.mlp.act.div", "TacticName": "sm80_xmma_gemm_f16f16_f16f32_sparse_tn"},
                            {"Name": "blocks.0.attn.q", "TacticName": "sm80_xmma_gemm_f16f16_f16f32_tn"}]}
    (tmp_path / "engine_inspector.json").write_text(json.dumps(inspector))
    ctx.files["sparse_tactics.json"](tmp_path / "sparse_tactics.json")
    report = ctx.manifest["sparsity"]["tensorrt"]
    assert report["eligible_with_sparse_tactic"] == ["blocks.0.mlp.fc1"]
    assert json.loads((tmp_path / "sparse_tactics.json").read_text()) == report


def test_sparse_finetuning_keeps_masks_fixed_and_records_feature_losses(tmp_path):
    result = compile_tiny(tmp_path, sparse_finetune_epochs=1, sparse_data="synthetic")
    report = result.manifest["sparsity"]
    finetune = report["finetune"]
    assert len(finetune["per_feature_losses"]) == 2 + 2  # patch embedding, 2 blocks, final projection
    assert abs(sum(finetune["feature_weights"]) - 1.0) < 1e-6
    assert finetune["history"][0]["total"] > 0
    on_disk = json.loads((result.out / "sparse_feature_losses.json").read_text())
    assert on_disk["per_feature_losses"] == finetune["per_feature_losses"]
    assert on_disk["feature_names"] == ["patch_embed", "blocks.0", "blocks.1", "final_projection"]
    weights = initializers(onnx.load(result.onnx_path))
    for layer in report["layers"]:
        if layer["eligible"]:
            w = weights[layer["name"] + ".weight"]
            assert sparse24.is_2to4(w, 0) and (w != 0).sum() >= w.size // 2 - 8
    assert result.manifest["verify"]["max_abs_err"] <= 1e-4


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


def test_unknown_layer_name_is_refused():
    from vitrt.transforms.sparsity.planner import apply_masks
    from vitrt.compiler.models import canonicalize

    twin = canonicalize(tiny_vit())
    with pytest.raises(VitrtError, match="unknown layer 'blocks.7.mlp.fc2'"):
        apply_masks(twin, {"blocks.7.mlp.fc2": torch.ones(64, 256, dtype=torch.bool)})
