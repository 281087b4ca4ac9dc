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
