"""The architecture of the supported timm models, as data: what a model-dependent option check needs, without
importing torch or timm (the CLI refuses a wrong schedule in well under a second).

tests/test_known_models.py compares every row with the model timm builds, so the table cannot drift; a model
that is not listed is inspected through timm on the meta device instead (slower, same answer).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError, UnsupportedModelError
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
        either = f"{lower} or {upper}" if lower else f"{upper}"  # no 0-pixel image
        raise OptionError(f"--img-size {img_size} is not a multiple of {name}'s patch size {patch}: use {either}")


SUPPORTED_EXAMPLES = (
    "vit_tiny_patch16_224, vit_small_patch16_224, vit_base_patch16_224, deit_tiny_patch16_224, "
    "deit_small_patch16_224, deit_base_patch16_224, deit_*_distilled_patch16_224"
)
SUPPORTED_FAMILIES = "timm VisionTransformer models with a class token (vit_*, deit_*)"
SUPPORTED_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


DIGITS_MODEL = "digits"  # the shipped digits reference ViT (vitrt.calib.reference), as manifests name it
DIGITS_SPELLINGS = frozenset({DIGITS_MODEL, "digits-reference", "digits_reference"})  # every command takes each


def is_digits_model(name) -> bool:
    """Whether ``name`` names the shipped digits reference (any of its spellings)."""
    return isinstance(name, str) and name in DIGITS_SPELLINGS


def check_model_name(name: str) -> None:
    """Refuse names timm does not know and families vitrt does not lower, in one line. Fast for the listed
    models; for the others timm's registry is read from a cache (:func:`timm_modules`)."""
    if name in KNOWN_MODELS:
        return
    module = timm_modules().get(name.split(".", 1)[0])  # "vit_base_patch16_224.augreg_in21k": a pretrained tag
    if module is None:
        raise UnsupportedModelError(f"unknown model '{name}': not a timm model name; supported: {SUPPORTED_FAMILIES}, "
                                    f"e.g. {SUPPORTED_EXAMPLES}")
    if module not in SUPPORTED_MODULES:
        raise UnsupportedModelError(f"unsupported architecture '{name}' (timm family '{module.rsplit('.', 1)[-1]}'): "
                                    f"vitrt supports {SUPPORTED_FAMILIES}, e.g. {SUPPORTED_EXAMPLES}")


def check_model(name: str) -> None:
    """:func:`check_model_name` for a name a command takes: the shipped digits reference (any spelling) or timm's."""
    if not is_digits_model(name):
        check_model_name(name)


def model_identity(name: str) -> str | None:
    """The model a name stands for — the digits reference (any spelling) or a timm model name — or None for a label
    (``name=`` of a Python object, "digits_vit"), which says nothing about the weights."""
    try:
        check_model(name)
    except UnsupportedModelError:
        return None
    return DIGITS_MODEL if is_digits_model(name) else name


# timm registers a model by decorating its entrypoint function; reading that from the sources finds every name
# without importing timm (and torch), which takes seconds. tests/test_first_hour.py checks the scan against
# timm.list_models() for the installed timm.
REGISTERED = re.compile(r"^@register_model(?:\(\))?\s*\n(?:@.*\n)*def\s+(\w+)\s*\(", re.M)


def timm_modules() -> dict[str, str]:
    """Every model name timm registers -> the module that defines it.

    Read from the installed timm's sources (``@register_model`` entrypoints; about 0.1 s) rather than by importing
    timm and torch (seconds, more than a one-line error may take), and kept in
    ``$XDG_CACHE_HOME/vitrt/timm-<version>-models.json`` (``~/.cache`` by default), keyed by the installed timm's
    version, read without importing it; rewritten atomically, an unwritable cache directory only costs the scan."""
    from importlib.metadata import version
    from importlib.util import find_spec

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitrt" / \
        f"timm-{version('timm')}-models.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    root = Path(find_spec("timm").origin).parent / "models"
    modules = {}
    for path in sorted(root.rglob("*.py")):
        module = "timm.models." + ".".join(path.relative_to(root).with_suffix("").parts)
        modules.update((name, module) for name in REGISTERED.findall(path.read_text(encoding="utf-8")))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(modules, f)
        os.replace(tmp, cache)
    except OSError:
        pass
    return modules
