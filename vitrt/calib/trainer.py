"""The one training loop: AdamW, linear warm-up then cosine decay, an optional 2:4 mask hook, progress.

Every fine-tuning step in vitrt runs through :func:`train` — the digits reference, NViT's pruned-model
fine-tuning, GPUSQ-ViT's sparse fine-tuning and QAT, DC-ViT's few-shot recovery — each with its own
:class:`~vitrt.calib.losses.Objective` and :class:`TrainConfig`.

Per step: forward and loss, backward, gradients of pruned weights zeroed (so optimiser moments stay zero),
optional gradient clipping, AdamW step, schedule step, masks re-applied (weight decay and Adam's update must
not revive pruned weights; ``masked_fill`` leaves +0, never −0). One ``torch.Generator`` seeded with
``config.seed`` draws both the shuffling and the augmentation, in that order, so a run is reproducible.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import torch

from vitrt.calib.digits import augment


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    batch_size: int = 32
    weight_decay: float = 0.05
    warmup_epochs: int = 0
    grad_clip: float | None = None
    augment: bool = False  # random shifts of up to 3 pixels (the digits recipe)
    seed: int = 0


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # per epoch: mean of every loss part and of the total
    per_feature: list[float] | None = None  # last epoch's mean per-feature MSE (with a FeatureMimic term)
    seconds: float = 0.0


def cosine_schedule(total_steps: int, warmup_steps: int = 0):
    """lr factor per step: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))
    return factor


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """weight ← 0 where the mask is False, for every masked module (by canonical name)."""
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        weight.masked_fill_(~mask.to(weight.device, torch.bool), 0.0)


def mask_gradients(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        if weight.grad is not None:
            weight.grad.masked_fill_(~mask.to(weight.grad.device, torch.bool), 0.0)


def train(model: torch.nn.Module, data, objective, config: TrainConfig, *, params=None,
          masks: Mapping[str, torch.Tensor] | None = None, progress=None, desc: str = "training") -> TrainResult:
    """Train ``model`` in place on ``data`` (a :class:`~vitrt.calib.data.Dataset`) with ``objective``.

    ``params``: the tensors to optimise (default: every parameter that requires grad). ``masks``: canonical
    layer name -> bool tensor shaped like its weight; masked weights stay exactly zero.
    """
    masks = dict(masks or {})
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(config.seed)
    result, start = TrainResult(), time.perf_counter()
    apply_masks(model, masks)
    bar = progress.bar(config.epochs, desc) if progress is not None else None
    for _ in range(config.epochs):
        model.train()
        sums: dict[str, float] = {}
        per_feature, batches = None, 0
        for images, labels in data.batches(config.batch_size, shuffle=True, generator=generator):
            if config.augment:
                images = augment(images, generator)
            loss, parts = objective(model, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mask_gradients(model, masks)
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            schedule.step()
            apply_masks(model, masks)
            if "per_feature" in parts:
                feature = parts.pop("per_feature")
                per_feature = feature if per_feature is None else per_feature + feature
            for key, value in [("total", float(loss.detach())), *parts.items()]:
                sums[key] = sums.get(key, 0.0) + value
            batches += 1
        result.history.append({key: round(value / max(batches, 1), 6) for key, value in sums.items()})
        if per_feature is not None:
            result.per_feature = [float(v) for v in per_feature / batches]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{result.history[-1]['total']:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    result.seconds = round(time.perf_counter() - start, 2)
    return result
