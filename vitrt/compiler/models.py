"""Front end: load a timm ViT (by name, checkpoint or module) and canonicalise it into the torch twin.

Supported: timm ``VisionTransformer`` (and ``VisionTransformerDistilled``) with a class token, optional
distillation token, learned absolute position embedding, token pooling, LayerNorm + GELU, and optional
LayerScale (folded into ``proj`` / ``fc2``). Anything else is refused with one line that says which
feature is unsupported, before any work is done.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from vitrt.compiler.errors import CheckpointError, UnsupportedModelError, VitrtError
from vitrt.compiler.known_models import (SUPPORTED_EXAMPLES, SUPPORTED_FAMILIES, check_img_size, check_model_name,
                                         known_spec, patch_size)
from vitrt.compiler.spec import BlockSpec, ViTSpec
from vitrt.compiler.twin import CanonicalViT



HUB_HOST = "huggingface.co"  # where timm downloads pretrained weights from
MAX_KEYS_NAMED = 3  # how many mismatched checkpoint keys an error names
RANDOM_WEIGHTS_SEED = 0  # timm's initialisation of a model without weights (load_timm_model)


def load_timm_model(name: str, *, pretrained: bool = False, checkpoint: str | Path | None = None,
                    img_size: int | None = None, num_classes: int | None = None, state: dict | None = None,
                    progress=None) -> nn.Module:
    """Create a timm model by name, refusing unknown names and unsupported families up front.

    ``checkpoint`` is a state dict (or a dict holding one under ``state_dict`` / ``model``) read with
    ``torch.load(weights_only=True)`` — or pass ``state``, already read by :func:`read_checkpoint`; a checkpoint
    whose classifier has another number of classes than the model's default (a fine-tuned model) sets
    ``num_classes`` (announced through ``progress``). ``pretrained`` needs a reachable model hub (checked in
    seconds, not after minutes of retries). Random weights (neither) are timm's initialisation seeded with
    :data:`RANDOM_WEIGHTS_SEED`: every run makes the same model, so two compiles of one name can be compared, and
    a plan or scale table made from one fits the other. The caller's random state is left as it was.
    """
    check_model_name(name)
    import timm

    if state is None and checkpoint is not None:
        state = read_checkpoint(checkpoint)
    if state is not None and num_classes is None:
        num_classes = checkpoint_classes(state, name, progress)
    if pretrained:
        check_hub_reachable()
    kwargs = {k: v for k, v in (("img_size", img_size), ("num_classes", num_classes)) if v is not None}
    try:
        with torch.random.fork_rng(devices=[]):  # the CPU generator initialises the model; CUDA's is not touched
            torch.default_generator.manual_seed(RANDOM_WEIGHTS_SEED)
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        what = "download pretrained weights for" if pretrained else "create"
        raise VitrtError(f"could not {what} '{name}': {_first_line(exc)}") from None
    if state is not None:
        load_state(model, fit_pos_embed(model, state, progress), checkpoint, name)
    return model.eval()


def fit_pos_embed(model: nn.Module, state: dict, progress=None) -> dict:
    """``state`` with its position embedding resampled to ``model``'s patch grid where only the grid differs (a
    checkpoint trained at 224 compiled with another --img-size), as timm does for pretrained weights; ``state``
    itself is left as it was. Anything else that differs is left for :func:`load_state` to refuse."""
    theirs, ours = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if theirs is None or ours is None or theirs.shape == ours.shape or theirs.dim() != 3 \
            or theirs.shape[-1] != ours.shape[-1]:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    old = math.isqrt(theirs.shape[1] - prefix)
    if old * old != theirs.shape[1] - prefix:
        return state  # not a square grid: load_state names the mismatch
    grid = list(model.patch_embed.grid_size)
    if progress is not None:
        progress.log(f"the checkpoint's position embedding is for a {old}x{old} patch grid: resampled (bicubic, as "
                     f"timm does) to the model's {grid[0]}x{grid[1]}")
    resampled = resample_abs_pos_embed(theirs, new_size=grid, old_size=[old, old], num_prefix_tokens=prefix)
    return {**state, "pos_embed": resampled}


def model_spec(name: str, *, img_size: int | None = None, num_classes: int | None = None) -> ViTSpec:
    """The ViTSpec of a timm model name without creating its weights: from the table of known models, else
    from timm on the meta device.

    Refuses an image size that is not a multiple of the model's patch size (timm would silently floor it).
    """
    patch = patch_size(name)
    if patch is None:
        check_model_name(name)
        import timm

        kwargs = {k: v for k, v in (("img_size", img_size), ("num_classes", num_classes)) if v is not None}
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
        patch = model.patch_embed.patch_size[0]
    check_img_size(name, img_size, patch)
    return known_spec(name, img_size, num_classes) or spec_of_timm(model)


def check_hub_reachable(timeout: float = 3.0) -> None:
    """Refuse ``--pretrained`` in one line when the model hub cannot be reached (offline machines)."""
    import socket

    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
    except OSError as exc:
        raise VitrtError(f"--pretrained needs the model hub ({HUB_HOST}), which cannot be reached from here "
                         f"({exc.__class__.__name__}); pass --checkpoint PATH with the weights instead") from None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read with ``weights_only=True`` (pickled code is never run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / pickled-object files
        import zipfile

        # A torch checkpoint is a zip file; weights_only refuses one that pickles anything but tensors.
        if zipfile.is_zipfile(path) or "Unsupported global" in str(exc):
            reason = ("it holds Python objects besides tensors, and vitrt never unpickles code; save the weights "
                      "alone: torch.save(model.state_dict(), PATH)")
        else:
            reason = f"it is not a torch checkpoint or it is damaged ({exc.__class__.__name__})"
        raise CheckpointError(f"cannot read checkpoint '{path}': {reason}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint '{path}' does not hold a state dict of tensors; save one with "
                              "torch.save(model.state_dict(), PATH)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def checkpoint_classes(state: dict, name: str, progress=None) -> int | None:
    """The checkpoint's number of classes when its classifier differs from the model's default, else None."""
    import timm

    head = state.get("head.weight")
    if head is None or head.dim() != 2:
        return None
    default = timm.models.get_pretrained_cfg_value(name, "num_classes") or 1000
    if head.shape[0] == default:
        return None
    if progress is not None:
        progress.log(f"the checkpoint's classifier has {head.shape[0]} classes: building {name} with "
                     f"num_classes={head.shape[0]} (default {default})")
    return int(head.shape[0])


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the state dict in ``path`` into ``model`` (``torch.load(weights_only=True)``; one-line errors)."""
    load_state(model, read_checkpoint(path), path, type(model).__name__)


def load_state(model: nn.Module, state: dict, path, name: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch names the first missing, unexpected and misshaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape (checkpoint vs model)",
                                                                          shapes)):
        if keys:
            more = f" and {len(keys) - MAX_KEYS_NAMED} more" if len(keys) > MAX_KEYS_NAMED else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:MAX_KEYS_NAMED])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint '{path}' does not match {name}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def check_supported(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first feature vitrt cannot lower, or weights it cannot
    compile (another dtype than float32, or none: on the meta device)."""
    check_architecture(model)
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:  # the twin holds the weights in fp32; --precision chooses what the engine runs
        raise UnsupportedModelError(f"the model's parameters are {', '.join(sorted(map(str, dtypes)))}: pass it in "
                                    "float32 (model.float()); precision= chooses what the engine runs")
    if any(p.is_meta for p in model.parameters()):
        raise UnsupportedModelError("the model's parameters are on the meta device (no values): load its weights")


def check_architecture(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first feature of ``model``'s architecture vitrt cannot lower.
    The weights are not read: a model on the meta device (no values) passes, so its spec can be taken."""
    from timm.layers import Mlp, PatchEmbed
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"unsupported architecture {type(model).__name__}: vitrt supports "
                                    f"{SUPPORTED_FAMILIES}, e.g. {SUPPORTED_EXAMPLES}")
    problems = []
    if model.cls_token is None:
        problems.append("no class token")
    if getattr(model, "num_reg_tokens", 0):
        problems.append("register tokens")
    if model.global_pool != "token":
        problems.append(f"global_pool='{model.global_pool}' (only 'token')")
    if model.pos_embed is None or model.no_embed_class:
        problems.append("position embedding without the class-token entry")
    if model.dynamic_img_size:
        problems.append("dynamic_img_size")
    for name in ("norm_pre", "fc_norm"):
        if not isinstance(getattr(model, name), nn.Identity):
            problems.append(name)
    if getattr(model, "attn_pool", None) is not None:
        problems.append("attention pooling")
    if not isinstance(model.patch_embed, PatchEmbed) or not isinstance(model.patch_embed.norm, nn.Identity):
        problems.append("patch embedding other than a plain Conv")
    if not isinstance(model.norm, nn.LayerNorm):
        problems.append("final norm other than LayerNorm")
    if any(isinstance(m, nn.LayerNorm) and (m.weight is None or m.bias is None) for m in model.modules()):
        problems.append("LayerNorm without an affine weight and bias")  # the twin's LayerNorms hold both
    for name in ("head", "head_dist"):  # the canonical head is one Linear (head_dist: a distilled model's second)
        head = getattr(model, name, None)
        if head is not None and not isinstance(head, nn.Linear) and not (isinstance(head, nn.Identity)
                                                                          and model.num_classes == 0):
            problems.append(f"{name} is {type(head).__name__} (only nn.Linear)")
    hooked = [name or type(model).__name__ for name, m in model.named_modules()
              if m._forward_hooks or m._forward_pre_hooks]
    if hooked:  # lowering traces the architecture, not what a hook does to it: the engine would differ silently
        problems.append(f"forward hooks on {', '.join(hooked[:3])}{' …' if len(hooked) > 3 else ''} (remove them)")
    for i, block in enumerate(model.blocks):
        if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
            problems.append(f"block {i} is {type(block).__name__} (only timm's Block/Attention/Mlp)")
            break
        attn, mlp = block.attn, block.mlp
        extras = [n for n in ("q_norm", "k_norm", "norm") if not isinstance(getattr(attn, n), nn.Identity)]
        extras += ["mlp.norm"] if not isinstance(mlp.norm, nn.Identity) else []
        extras += ["attention gate"] if getattr(attn, "gate", None) is not None else []
        extras += [f"{n} is not LayerNorm" for n in ("norm1", "norm2") if not isinstance(getattr(block, n), nn.LayerNorm)]
        if not (isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"):
            extras.append(f"activation {type(mlp.act).__name__} (only exact GELU)")
        if extras:
            problems.append(f"block {i}: {', '.join(extras)}")
            break
    if problems:
        raise UnsupportedModelError(f"unsupported ViT variant {type(model).__name__}: {'; '.join(problems)}; "
                                    f"vitrt supports {SUPPORTED_FAMILIES}")
    image, patch = model.patch_embed.img_size, model.patch_embed.patch_size
    if any(i % p for i, p in zip(image, patch)):  # timm would drop the border pixels without a word
        raise UnsupportedModelError(f"image size {tuple(image)} is not a multiple of the patch size {tuple(patch)}")


def spec_of_timm(model: nn.Module) -> ViTSpec:
    """The ViTSpec of a supported timm ViT (before any compression); its weights are not read (a model on the meta
    device has a spec too)."""
    check_architecture(model)
    patch_embed = model.patch_embed
    grid = tuple(patch_embed.grid_size)
    patch = tuple(patch_embed.patch_size)
    if grid[0] != grid[1] or patch[0] != patch[1]:
        raise UnsupportedModelError(f"non-square image or patch ({patch_embed.img_size}, {patch}): vitrt lowers "
                                    "square inputs only")
    prefix = model.num_prefix_tokens
    tokens = prefix + grid[0] * grid[1]
    blocks = []
    for block in model.blocks:
        attn = block.attn
        blocks.append(BlockSpec(heads=attn.num_heads, qk=attn.head_dim, v=attn.head_dim,
                                mlp=block.mlp.fc1.out_features, tokens=tokens, scale=float(attn.scale)))
    return ViTSpec(emb=model.embed_dim, patch=patch[0], img=grid[0] * patch[0],
                   in_chans=patch_embed.proj.in_channels, prefix_tokens=prefix, num_classes=model.num_classes,
                   blocks=tuple(blocks), distilled=getattr(model, "dist_token", None) is not None,
                   norm_eps=float(model.norm.eps)).validate()


@torch.no_grad()
def canonicalize(model: nn.Module) -> CanonicalViT:
    """Build the torch twin of a supported timm ViT; its output equals the original's (fp32 rounding).

    The twin's ``q`` holds timm's query projection times the block's attention scale (see
    :class:`~vitrt.compiler.twin.CanonicalAttention`)."""
    check_supported(model)
    spec = spec_of_timm(model)
    twin = CanonicalViT(spec)
    twin.patch_embed.load_state_dict(model.patch_embed.proj.state_dict())
    twin.cls_token.copy_(model.cls_token)
    if twin.dist_token is not None:
        twin.dist_token.copy_(model.dist_token)
    twin.pos_embed.copy_(model.pos_embed)
    emb = spec.emb
    for src, dst in zip(model.blocks, twin.blocks):
        attn = src.attn
        weight = attn.qkv.weight
        bias = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * attn.attn_dim)
        # The attention scale goes into q (weight and bias): (s·Q)·Kᵀ == s·(Q·Kᵀ), and TensorRT fuses attention
        # only when Q or K is scaled before the first MatMul (its "Fused Attention" guide; Model Optimizer
        # scales Q for ViTs too). The spec keeps the value as a record.
        for j, (proj, factor) in enumerate(((dst.attn.q, float(attn.scale)), (dst.attn.k, 1.0), (dst.attn.v, 1.0))):
            proj.weight.copy_(weight[j * attn.attn_dim:(j + 1) * attn.attn_dim] * factor)
            proj.bias.copy_(bias[j * attn.attn_dim:(j + 1) * attn.attn_dim] * factor)
        _copy_linear(attn.proj, dst.attn.proj, _layer_scale(src.ls1, emb))
        _copy_linear(src.mlp.fc1, dst.mlp.fc1, None)
        _copy_linear(src.mlp.fc2, dst.mlp.fc2, _layer_scale(src.ls2, emb))
        dst.norm1.load_state_dict(src.norm1.state_dict())
        dst.norm2.load_state_dict(src.norm2.state_dict())
    twin.norm.load_state_dict(model.norm.state_dict())
    _copy_linear(model.head, twin.head, None)
    if twin.head_dist is not None:
        _copy_linear(model.head_dist, twin.head_dist, None)
    return twin.eval()


def _layer_scale(module: nn.Module, emb: int) -> torch.Tensor | None:
    if isinstance(module, nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if gamma is None or gamma.shape != (emb,):
        raise UnsupportedModelError(f"unsupported layer scale {type(module).__name__}")
    return gamma


def _copy_linear(src: nn.Module, dst: nn.Linear, out_scale: torch.Tensor | None) -> None:
    if isinstance(src, nn.Identity):
        raise UnsupportedModelError("a model without a classifier head (num_classes=0) cannot be compiled")
    weight = src.weight
    bias = src.bias if src.bias is not None else torch.zeros(weight.shape[0])
    if out_scale is not None:  # LayerScale: gamma * (W x + b) == (gamma W) x + gamma b
        weight, bias = weight * out_scale[:, None], bias * out_scale
    dst.weight.copy_(weight)
    dst.bias.copy_(bias)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
