"""Tests added by a mutation audit of vitrt.compiler.models, vitrt.compiler.spec and vitrt.compiler.weights: each
pins a behaviour that a one-line mutation could change without the existing tests noticing. Tiny models: seconds
each."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from conftest import tiny_vit
from vitrt.compiler.errors import CheckpointError, SpecError, UnsupportedModelError
from vitrt.compiler.models import canonicalize, check_supported, checkpoint_classes, load_state, read_checkpoint, \
    spec_of_timm
from vitrt.compiler.spec import SPEC_METADATA_KEY, BlockSpec, ViTSpec
from vitrt.compiler.weights import load_parameter_state, parameter_state, state_initializers, write_initializers


@pytest.fixture(scope="module")
def spec():
    return spec_of_timm(tiny_vit(depth=2))  # emb 64, 2 heads of 32, mlp 256, 17 tokens


def _block(**changes):
    return BlockSpec(**{**dict(heads=2, qk=32, v=32, mlp=256, tokens=17, scale=32 ** -0.5), **changes})


# --- spec: BlockSpec / ViTSpec validation -------------------------------------------------------------------------
def test_a_block_with_attention_and_mlp_removed_is_valid(spec):
    """heads=0 (DC-ViT removes attention) with qk=v=0, and mlp=0, are valid dimensions."""
    removed = spec.with_blocks([_block(heads=0, qk=0, v=0, mlp=0), spec.blocks[1]])
    assert removed.validate() is removed


@pytest.mark.parametrize("changes, message", [
    (dict(heads=True), "heads must be a non-negative int, got True"),
    (dict(qk=0), "needs qk > 0 and v > 0"),
    (dict(v=0), "needs qk > 0 and v > 0"),
    (dict(tokens_out=18), r"tokens_out must be in 1\.\.17, got 18"),
    (dict(tokens_out=0), r"tokens_out must be in 1\.\.17, got 0"),
    (dict(scale=True), "scale must be a positive number, got True"),  # fixed after the audit: a bool passed
    (dict(scale=float("inf")), "scale must be a positive number, got inf"),  # and so did inf
])
def test_a_bad_block_is_refused_with_its_reason(spec, changes, message):
    with pytest.raises(SpecError, match=message):
        spec.with_blocks([_block(**changes), spec.blocks[1]]).validate()


def test_a_block_with_no_tokens_is_refused_by_the_block_itself():
    with pytest.raises(SpecError, match="block 3: tokens must be positive, got 0"):
        _block(tokens=0).validate(3)


def test_a_block_may_keep_all_its_tokens_and_the_next_block_reads_what_it_keeps(spec):
    assert spec.with_blocks([_block(tokens_out=17), spec.blocks[1]]).validate()
    merged = spec.with_blocks([_block(tokens_out=9), _block(tokens=9)]).validate()
    assert [b.out_tokens for b in merged.blocks] == [9, 9]


def test_a_block_must_keep_the_prefix_tokens_and_one_patch(spec):
    assert spec.with_blocks([_block(tokens_out=2), _block(tokens=2)]).validate()
    with pytest.raises(SpecError, match="keeps 1 tokens, fewer than the prefix tokens \\+ 1"):
        spec.with_blocks([_block(tokens_out=1), _block(tokens=1)]).validate()


@pytest.mark.parametrize("changes, message", [
    (dict(emb=0), "emb must be a positive int, got 0"),
    (dict(patch=0), "patch must be a positive int, got 0"),
    (dict(blocks=()), "needs at least one block"),
    (dict(prefix_tokens=1, distilled=True), "prefix_tokens is 1, expected class token \\+ distillation token"),
    (dict(norm_eps=0.0), "norm_eps must be a positive number, got 0.0"),  # fixed after the audit: never checked
    (dict(norm_eps=float("nan")), "norm_eps must be a positive number, got nan"),
])
def test_a_bad_spec_is_refused_with_its_reason(spec, changes, message):
    with pytest.raises(SpecError, match=message):
        spec.replace(**changes).validate()


def test_linear_dims_of_a_merging_block_with_other_qk_and_v(spec):
    """Attention runs on the tokens entering the block, the MLP on those left after the merge; proj's K is heads·v."""
    s = spec.with_blocks([_block(qk=16, v=24, tokens_out=9), _block(tokens=9)]).validate()
    assert s.linear_dims("blocks.0.attn.q") == (17, 64, 32)
    assert s.linear_dims("blocks.0.attn.v") == (17, 64, 48)
    assert s.linear_dims("blocks.0.attn.proj") == (17, 48, 64)
    assert s.linear_dims("blocks.0.mlp.fc1") == (9, 64, 256)
    assert s.linear_dims("blocks.0.mlp.fc2") == (9, 256, 64)


def test_linear_dims_refuses_a_block_past_the_last(spec):
    with pytest.raises(SpecError, match="'blocks.2.attn.q' is not a linear layer"):
        spec.linear_dims("blocks.2.attn.q")


def test_json_roundtrip_keeps_merges_norm_eps_and_channels(spec):
    s = spec.with_blocks([_block(tokens_out=9), _block(tokens=9)]).replace(norm_eps=1e-5, in_chans=1).validate()
    data = json.loads(s.to_json())
    assert data["blocks"][0]["tokens_out"] == 9 and "tokens_out" not in data["blocks"][1]
    assert ViTSpec.from_json(s.to_json()) == s


def test_a_spec_without_in_chans_reads_as_three_channels(spec):
    data = spec.replace(in_chans=1).to_dict()
    del data["in_chans"]
    assert ViTSpec.from_dict(data).in_chans == 3


def test_attach_keeps_the_models_other_metadata(spec):
    model = onnx.ModelProto()
    onnx.helper.set_model_props(model, {"author": "me"})
    spec.attach(model)
    assert {p.key: p.value for p in model.metadata_props}["author"] == "me"
    assert sorted(p.key for p in model.metadata_props) == ["author", SPEC_METADATA_KEY]


def test_from_onnx_reads_a_path_or_a_str(spec, tmp_path):
    model = onnx.ModelProto(ir_version=8)
    spec.attach(model)
    onnx.save(model, tmp_path / "m.onnx")
    assert ViTSpec.from_onnx(tmp_path / "m.onnx") == spec == ViTSpec.from_onnx(str(tmp_path / "m.onnx"))


# --- weights --------------------------------------------------------------------------------------------------------
def test_state_initializers_transpose_linear_weights_only():
    conv, linear, bias = torch.randn(64, 3, 8, 8), torch.randn(32, 64), torch.randn(32)
    values = state_initializers({"patch_embed.weight": conv, "blocks.0.attn.q.weight": linear,
                                 "blocks.0.attn.q.bias": bias, "pos_embed": torch.randn(1, 17, 64)})
    np.testing.assert_array_equal(values["patch_embed.weight"], conv.numpy())
    np.testing.assert_array_equal(values["blocks.0.attn.q.weight"], linear.numpy().T)
    np.testing.assert_array_equal(values["blocks.0.attn.q.bias"], bias.numpy())
    assert values["pos_embed.weight"].shape == (1, 17, 64)


def test_prefix_tokens_are_class_then_distillation_along_tokens():
    cls, dist = torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    tokens = state_initializers({"dist_token": dist, "cls_token": cls})["prefix_tokens.weight"]
    assert tokens.shape == (1, 2, 4)
    np.testing.assert_array_equal(tokens[0, 0], 0.0)
    np.testing.assert_array_equal(tokens[0, 1], 1.0)
    with pytest.raises(SpecError, match="must also hold the class token"):
        state_initializers({"dist_token": dist})


def _graph():
    return gs.Graph(inputs=[], outputs=[gs.Constant("w", np.zeros((2, 3), np.float32))])


def test_write_initializers_counts_and_refuses_wrong_names_and_shapes():
    graph = _graph()
    assert write_initializers(graph, {"w": np.ones((2, 3), np.float32)}) == 1
    np.testing.assert_array_equal(graph.outputs[0].values, 1.0)
    with pytest.raises(SpecError, match="has shape \\(2, 3\\) in the graph but \\(3, 2\\)"):
        write_initializers(graph, {"w": np.ones((3, 2), np.float32)})
    with pytest.raises(SpecError, match="the graph has no initializer 'x'"):
        write_initializers(graph, {"x": np.ones((2, 3), np.float32)})


def test_parameter_state_roundtrips_every_twin_parameter():
    source, target = canonicalize(tiny_vit(depth=1, distilled=True)), canonicalize(tiny_vit(depth=1, distilled=True))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    state = parameter_state(source)
    assert {"pos_embed", "cls_token", "dist_token"} <= set(state)
    load_parameter_state(target, state)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), target.parameters()))


def test_load_parameter_state_refuses_a_broadcastable_shape_and_unknown_names():
    twin = canonicalize(tiny_vit(depth=1))
    with pytest.raises(SpecError, match="parameter 'blocks.0.norm1.bias' has shape \\(64,\\), the state \\(1,\\)"):
        load_parameter_state(twin, {"blocks.0.norm1.bias": np.ones(1, np.float32)})
    with pytest.raises(SpecError, match="the twin has no parameter 'nope'"):
        load_parameter_state(twin, {"nope": np.ones(1, np.float32)})


# --- models: checkpoints --------------------------------------------------------------------------------------------
def test_read_checkpoint_unwraps_a_model_key_and_a_ddp_prefix(tmp_path):
    state = {"module.head.weight": torch.ones(2, 2)}
    torch.save({"model": state, "epoch": torch.tensor(3)}, tmp_path / "ck.pt")
    assert list(read_checkpoint(tmp_path / "ck.pt")) == ["head.weight"]
    torch.save({"head.weight": torch.ones(2), "note": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        read_checkpoint(tmp_path / "bad.pt")


def test_checkpoint_classes_only_when_the_head_differs_from_the_default():
    assert checkpoint_classes({"head.weight": torch.zeros(1000, 4)}, "deit_tiny_patch16_224") is None
    assert checkpoint_classes({"head.weight": torch.zeros(10, 4)}, "deit_tiny_patch16_224") == 10


def test_a_fine_tuned_checkpoint_builds_its_number_of_classes():
    from vitrt.compiler.models import load_timm_model

    import timm

    state = timm.create_model("deit_tiny_patch16_224", img_size=32, num_classes=10).state_dict()
    model = load_timm_model("deit_tiny_patch16_224", img_size=32, state=state)
    assert model.num_classes == 10 and torch.equal(model.head.weight, state["head.weight"])


def test_a_mismatch_names_three_keys_then_counts_the_rest():
    model = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(2)])  # 4 keys
    with pytest.raises(CheckpointError, match=r"4 missing: 0.weight, 0.bias, 1.weight and 1 more$"):
        load_state(model, {}, "ck.pt", "m")
    with pytest.raises(CheckpointError, match=r"3 missing: 0.bias, 1.weight, 1.bias$"):
        load_state(model, {"0.weight": torch.zeros(1, 1)}, "ck.pt", "m")


# --- models: refusals -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(reg_tokens=4), "register tokens"),
    (dict(global_pool="avg", fc_norm=False), "global_pool='avg'"),
    (dict(no_embed_class=True), "position embedding without the class-token entry"),
    (dict(dynamic_img_size=True), "dynamic_img_size"),
    (dict(qk_norm=True), "q_norm"),
    (dict(act_layer=partial(torch.nn.GELU, approximate="tanh")), "activation GELU \\(only exact GELU\\)"),
])
def test_an_unsupported_variant_is_refused_naming_its_feature(kwargs, message):
    try:
        model = tiny_vit(depth=1, **kwargs)
    except Exception as exc:  # a combination this timm refuses itself
        pytest.skip(f"timm cannot build {kwargs}: {exc}")
    with pytest.raises(UnsupportedModelError, match=message):
        check_supported(model)


def test_a_model_without_a_class_token_is_refused():
    model = tiny_vit(depth=1)
    model.cls_token = None
    with pytest.raises(UnsupportedModelError, match="no class token"):
        check_supported(model)


def test_a_non_square_image_is_refused():
    with pytest.raises(UnsupportedModelError, match="non-square image or patch"):
        spec_of_timm(tiny_vit(depth=1, img_size=(32, 48)))


def test_mixed_dtypes_are_refused():
    model = tiny_vit(depth=1)
    model.head.half()
    with pytest.raises(UnsupportedModelError, match="torch.float16, torch.float32: pass it in float32"):
        check_supported(model)


# --- models: canonicalisation is exact ------------------------------------------------------------------------------
def _layer_scaled():
    model = tiny_vit(depth=1, init_values=0.1)
    with torch.no_grad():  # distinct gammas per channel and per branch (timm initialises both to init_values)
        model.blocks[0].ls1.gamma.copy_(torch.linspace(0.1, 2.0, 64))
        model.blocks[0].ls2.gamma.copy_(torch.linspace(-1.0, 0.5, 64))
    return model


@pytest.mark.parametrize("build", [
    lambda: tiny_vit(depth=1, norm_layer=partial(torch.nn.LayerNorm, eps=1e-2)),
    lambda: tiny_vit(depth=1, qkv_bias=False),
    lambda: tiny_vit(depth=1, proj_bias=False),
    lambda: tiny_vit(depth=1, distilled=True),
    _layer_scaled,
], ids=["norm-eps", "no-qkv-bias", "no-proj-bias", "distilled", "layer-scale"])
def test_the_twin_computes_what_timm_computes(build):
    model = build()
    with torch.no_grad():
        for p in model.parameters():  # timm zero-initialises biases and a distilled head: make them count
            p.add_(0.05 * torch.randn_like(p))
    twin = canonicalize(model)
    assert twin.spec.norm_eps == model.norm.eps
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(images), twin(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# Defects the audit found, fixed with these tests (each failed before its fix)

@pytest.mark.parametrize("norm", [partial(torch.nn.LayerNorm, bias=False),
                                  partial(torch.nn.LayerNorm, elementwise_affine=False)], ids=["no-bias", "no-affine"])
def test_a_layernorm_without_weight_or_bias_is_refused_in_one_line(norm):
    """The module docstring promises a one-line refusal naming the feature before any work; a LayerNorm without
    bias (or affine) passes check_supported and canonicalize then fails in load_state_dict with a RuntimeError."""
    model = tiny_vit(depth=1, norm_layer=norm)
    with pytest.raises(UnsupportedModelError, match="LayerNorm without"):
        check_supported(model)
    with pytest.raises(UnsupportedModelError, match="LayerNorm without"):
        canonicalize(model)
