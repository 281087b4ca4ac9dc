"""The one training loop: AdamW, linear warm-up then cosine decay, an optional 2:4 mask hook, progress.

Every fine-tuning step in vitrt runs through :func:`train` — the digits reference, NViT's pruned-model
fine-tuning, GPUSQ-ViT's sparse fine-tuning and QAT, DC-ViT's few-shot recovery — each with its own
:class:`~vitrt.calib.losses.Objective` and :class:`TrainConfig`.

Per step: forward and loss, backward, gradients of pruned weights zeroed (so optimiser moments stay zero),
optional gradient clipping, AdamW step, schedule step, masks re-applied (weight decay and Adam's update must
not revive pruned weights; ``masked_fill`` leaves +0, never −0). One ``torch.Generator`` seeded with
``config.seed`` draws both the shuffling and the augmentation, in that order, so a run is reproducible.

Under ``torchrun`` (several processes, :mod:`vitrt.compiler.distributed`) the same call trains data-parallel:
the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL for CUDA tensors), a DistributedSampler
(seeded with ``config.seed``, reshuffled every epoch) gives each rank its share of the data, and each rank takes
``batch_size / world size`` images per step, so a step still sees ``batch_size`` images and the schedule is the
single-process one. Augmentation draws from a generator seeded ``config.seed + rank``. Every rank ends with the
same weights; the loss history is averaged over all ranks. A single process runs exactly the code path above.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import torch

from vitrt.calib.digits import augment
from vitrt.compiler.distributed import world


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
    device = next(model.parameters()).device
    parallel = DataParallel.start(model, data, config)
    if parallel is not None:
        generator = torch.Generator().manual_seed(config.seed + parallel.rank)
    result, start = TrainResult(), time.perf_counter()
    apply_masks(model, masks)
    bar = progress.bar(config.epochs, desc) if progress is not None else None
    for epoch in range(config.epochs):
        model.train()
        sums: dict[str, float] = {}
        per_feature, batches = None, 0
        epoch_batches = data.batches(config.batch_size, shuffle=True, generator=generator) if parallel is None \
            else parallel.batches(epoch)
        for images, labels in epoch_batches:
            if config.augment:
                images = augment(images, generator)
            if device.type != "cpu":  # a CUDA model (NCCL under torchrun): the batches follow it
                images, labels = images.to(device), labels.to(device) if labels is not None else None
            loss, parts = objective(model if parallel is None else parallel.student, images, labels)
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
        if parallel is not None:
            sums, per_feature, batches = parallel.reduce(sums, per_feature, batches)
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


class _Calls(torch.nn.Module):
    """Routes the objective's calls on the student (``student(x)``, ``student.forward_with_features(x)``) through
    DistributedDataParallel's forward, which its gradient synchronisation needs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, method: str, images: torch.Tensor):
        return self.model(images) if method == "forward" else getattr(self.model, method)(images)


class _Student:
    """What the objective sees under DDP: the student's calls, each through the DDP wrapper."""

    def __init__(self, ddp):
        self.ddp = ddp

    def __call__(self, images):
        return self.ddp("forward", images)

    def forward_with_features(self, images):
        return self.ddp("forward_with_features", images)


@dataclass
class DataParallel:
    """DDP + DistributedSampler for :func:`train` when this process is one rank of several."""

    rank: int
    size: int
    student: _Student
    data: object
    sampler: object
    batch_size: int

    @classmethod
    def start(cls, model: torch.nn.Module, data, config: TrainConfig) -> "DataParallel | None":
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        ranks = world()
        if ranks is None:
            return None
        rank, size = ranks
        if config.batch_size % size:
            from vitrt.compiler.errors import VitrtError

            raise VitrtError(f"batch size {config.batch_size} is not divisible by the {size} processes of this run")
        if not hasattr(data, "subset"):
            raise TypeError(f"{type(data).__name__} cannot be sharded: it has no subset(indices)")
        device = next(model.parameters()).device
        ddp = DistributedDataParallel(_Calls(model), device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
        sampler = DistributedSampler(range(len(data)), num_replicas=size, rank=rank, shuffle=True, seed=config.seed)
        return cls(rank, size, _Student(ddp), data, sampler, config.batch_size // size)

    def batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        return self.data.subset(list(self.sampler)).batches(self.batch_size, shuffle=False)

    def reduce(self, sums: dict[str, float], per_feature, batches: int):
        """Loss sums, per-feature sums and batch counts added over the ranks (every rank gets the totals)."""
        import torch.distributed as dist

        keys = sorted(sums)
        values = torch.tensor([sums[k] for k in keys] + [float(batches)], dtype=torch.float64)
        dist.all_reduce(values)
        if per_feature is not None:
            per_feature = per_feature.detach().to(torch.float64).clone()
            dist.all_reduce(per_feature)
            per_feature = per_feature.float()
        return {k: float(v) for k, v in zip(keys, values[:-1])}, per_feature, int(values[-1])
