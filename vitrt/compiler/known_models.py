"""The architecture of the supported timm models, as data: what a model-dependent option check needs, without
importing torch or timm (the CLI refuses a wrong schedule in well under a second).

tests/test_known_models.py compares every row with the model timm builds, so the table cannot drift; a model
that is not listed is inspected through timm on the meta device instead (slower, same answer).
"""

from __future__ import annotations

from dataclasses import dataclass

from vitrt.compiler.errors import OptionError
from vitrt.compiler.spec import BlockSpec, ViTSpec


@dataclass(frozen=True)
class ModelConfig:
    emb: int
    depth: int
    heads: int
    head_dim: int
    mlp: int
    patch: int
    img: int
    distilled: bool = False
    in_chans: int = 3
    num_classes: int = 1000
    norm_eps: float = 1e-6


KNOWN_MODELS = {
    "vit_tiny_patch16_224": ModelConfig(192, 12, 3, 64, 768, 16, 224, distilled=False),
    "vit_small_patch16_224": ModelConfig(384, 12, 6, 64, 1536, 16, 224, distilled=False),
    "vit_base_patch16_224": ModelConfig(768, 12, 12, 64, 3072, 16, 224, distilled=False),
    "deit_tiny_patch16_224": ModelConfig(192, 12, 3, 64, 768, 16, 224, distilled=False),
    "deit_small_patch16_224": ModelConfig(384, 12, 6, 64, 1536, 16, 224, distilled=False),
    "deit_base_patch16_224": ModelConfig(768, 12, 12, 64, 3072, 16, 224, distilled=False),
    "deit_tiny_distilled_patch16_224": ModelConfig(192, 12, 3, 64, 768, 16, 224, distilled=True),
    "deit_small_distilled_patch16_224": ModelConfig(384, 12, 6, 64, 1536, 16, 224, distilled=True),
    "deit_base_distilled_patch16_224": ModelConfig(768, 12, 12, 64, 3072, 16, 224, distilled=True),
}


def known_spec(name: str, img_size: int | None = None, num_classes: int | None = None) -> ViTSpec | None:
    """The ViTSpec timm would build for ``name`` (None for a model this table does not list). The image size
    must be a multiple of the patch size (callers check that first)."""
    cfg = KNOWN_MODELS.get(name)
    if cfg is None:
        return None
    img = img_size or cfg.img
    prefix = 1 + int(cfg.distilled)
    tokens = prefix + (img // cfg.patch) ** 2
    block = BlockSpec(heads=cfg.heads, qk=cfg.head_dim, v=cfg.head_dim, mlp=cfg.mlp, tokens=tokens,
                      scale=cfg.head_dim ** -0.5)
    return ViTSpec(emb=cfg.emb, patch=cfg.patch, img=img, in_chans=cfg.in_chans, prefix_tokens=prefix,
                   num_classes=num_classes or cfg.num_classes, blocks=(block,) * cfg.depth, distilled=cfg.distilled,
                   norm_eps=cfg.norm_eps).validate()


def patch_size(name: str) -> int | None:
    cfg = KNOWN_MODELS.get(name)
    return cfg.patch if cfg else None


def check_img_size(name: str, img_size: int | None, patch: int) -> None:
    """Refuse an image size that is not a multiple of the patch size (timm would silently floor it)."""
    if img_size is not None and img_size % patch:
        lower, upper = (img_size // patch) * patch, (img_size // patch + 1) * patch
        raise OptionError(f"--img-size {img_size} is not a multiple of {name}'s patch size {patch}: use "
                          f"{lower or upper} or {upper}")
