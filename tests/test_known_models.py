"""vitrt.compiler.known_models against timm: every row of the table is the architecture timm builds (so the table the
option checks read without importing timm cannot drift), and the digits reference's spellings. Models are built on
the meta device: no weights, well under a second each."""

from __future__ import annotations

import pytest
import timm
import torch

from vitrt.compiler.known_models import KNOWN_MODELS, check_model, is_digits_model, known_spec, model_identity
from vitrt.compiler.models import spec_of_timm


@pytest.mark.parametrize("name", sorted(KNOWN_MODELS))
def test_every_row_of_the_known_models_table_is_the_model_timm_builds(name):
    """The table is what the CLI checks options against without importing timm: it must be what timm builds, at
    the default and at a changed image size and class count."""
    for kwargs in ({}, {"img_size": 64, "num_classes": 10}):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
        assert known_spec(name, kwargs.get("img_size"), kwargs.get("num_classes")) == spec_of_timm(model)


def test_every_digits_spelling_names_the_digits_reference_and_only_strings_do():
    for spelling in ("digits", "digits-reference", "digits_reference"):
        assert is_digits_model(spelling) and model_identity(spelling) == "digits"
        check_model(spelling)
    assert not is_digits_model(["digits"]) and not is_digits_model(None)
    assert model_identity("digits_vit") is None and model_identity("vit_tiny_patch16_224") == "vit_tiny_patch16_224"
