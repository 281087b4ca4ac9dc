import json

import onnx
import pytest

from vitrt.compiler.errors import SpecError
from vitrt.compiler.models import spec_of_timm
from vitrt.compiler.spec import SPEC_METADATA_KEY, BlockSpec, ViTSpec

from conftest import tiny_vit


def test_spec_of_timm_model():
    spec = spec_of_timm(tiny_vit(distilled=True))
    assert (spec.emb, spec.depth, spec.patch, spec.img, spec.prefix_tokens) == (64, 2, 8, 32, 2)
    assert spec.tokens == 18 and spec.distilled
    assert all(b == BlockSpec(heads=2, qk=32, v=32, mlp=256, tokens=18, scale=32 ** -0.5) for b in spec.blocks)


def test_json_roundtrip_and_onnx_metadata():
    spec = spec_of_timm(tiny_vit())
    assert ViTSpec.from_json(spec.to_json()) == spec
    model = onnx.ModelProto()
    spec.attach(model)
    spec.attach(model)  # attaching twice replaces, never duplicates
    assert [p.key for p in model.metadata_props] == [SPEC_METADATA_KEY]
    assert ViTSpec.from_onnx(model) == spec


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["blocks"][0].update(heads=-1), "heads must be a non-negative int"),
    (lambda d: d["blocks"][1].update(tokens=5), "tokens is 5 but the previous block emits 17"),
    (lambda d: d.update(img=30), "not a multiple of patch"),
    (lambda d: d["blocks"][0].pop("qk"), "missing or invalid field"),
    (lambda d: d.update(depth=7), "depth 7 but 2 blocks"),
    (lambda d: d["blocks"][0].update(scale=0), "scale must be a positive number"),
])
def test_malformed_spec_is_refused(mutate, message):
    data = spec_of_timm(tiny_vit()).to_dict()
    mutate(data)
    with pytest.raises(SpecError, match=message):
        ViTSpec.from_json(json.dumps(data))


def test_missing_metadata_is_a_clear_error():
    with pytest.raises(SpecError, match="carries no 'vitrt.spec' metadata"):
        ViTSpec.from_onnx(onnx.ModelProto())


def test_block_flops_follow_the_formula_where_qk_and_v_differ():
    """2 FLOPs per multiply-accumulate: Q, K, V projections h·(2·qk + v)·emb per token, QKᵀ and attention·V
    h·n²·(qk + v), the output projection h·v·emb per token; the MLP 2·2·emb·mlp on the tokens left after a merge."""
    from vitrt.compiler.cost import block_flops

    attention = BlockSpec(heads=2, qk=16, v=32, mlp=0, tokens=10, scale=0.25)
    assert block_flops(64, attention) == 2 * 10 * 64 * 2 * (2 * 16 + 32) + 2 * 2 * 10 * 10 * (16 + 32) \
        + 2 * 10 * 2 * 32 * 64
    merged = BlockSpec(heads=0, qk=0, v=0, mlp=128, tokens=17, tokens_out=9, scale=1.0)
    assert block_flops(64, merged) == 4 * 9 * 64 * 128


def test_parameters_and_head_flops_count_the_twin():
    """vit_params equals the twin's parameter count (q/k biases and the distilled head included); a distilled
    model's two heads both cost FLOPs."""
    from vitrt.compiler.cost import head_flops, vit_params
    from vitrt.compiler.models import canonicalize

    for distilled in (False, True):
        twin = canonicalize(tiny_vit(distilled=distilled))
        assert vit_params(twin.spec) == sum(p.numel() for p in twin.parameters())
        assert head_flops(twin.spec) == 2 * 64 * 10 * (2 if distilled else 1)


@pytest.mark.parametrize("name, img_size", [("vit_small_patch32_224", None), ("vit_tiny_patch16_384", 64),
                                            ("deit_tiny_patch16_224.fb_in1k", 32)])
def test_a_model_outside_the_table_has_its_spec_from_timm(name, img_size):
    """A name the table of known models does not list (another patch or size, a pretrained tag) is specified by
    timm on the meta device — weights are not needed for a spec — and equals the created model's spec."""
    import timm
    from vitrt.compiler.models import model_spec

    kwargs = {} if img_size is None else {"img_size": img_size}
    assert model_spec(name, img_size=img_size) == spec_of_timm(timm.create_model(name, **kwargs))


def test_a_model_outside_the_table_compiles_by_name(tmp_path):
    from vitrt.cli import main

    out = tmp_path / "s32"
    assert main(["compile", "vit_small_patch32_224", "--img-size", "64", "-o", str(out), "--verify", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec_before"]["patch"] == 32 and manifest["verify"]["ok"]


def test_an_image_size_below_the_patch_names_one_size():
    from vitrt.compiler.errors import OptionError
    from vitrt.compiler.known_models import check_img_size

    with pytest.raises(OptionError, match=r"patch size 16: use 16$"):
        check_img_size("deit_tiny_patch16_224", 15, 16)
    with pytest.raises(OptionError, match=r"use 32 or 48$"):
        check_img_size("deit_tiny_patch16_224", 40, 16)


def test_random_weights_are_the_same_model_every_run_and_leave_the_callers_rng():
    """Without --pretrained or --checkpoint the weights are timm's initialisation under a fixed seed: two compiles of
    one name are of one model (vitrt compare A B, a plan or scale table made from one applied to the other)."""
    import torch

    from vitrt.compiler.models import load_timm_model

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = load_timm_model("deit_tiny_patch16_224", img_size=32).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(456)  # another caller state: the same weights
    second = load_timm_model("deit_tiny_patch16_224", img_size=32).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
