"""The 2:4 planner on the torch twin: decide the layers, optionally permute channels, compute the magnitude
masks and optionally fine-tune with the masks fixed — on a copy; the twin handed in is never modified.

Sparse fine-tuning (GPUSQ-ViT Algorithm 1, lines 2-17) runs on the shared trainer: the twin the stage meets
is the teacher, the masked copy the student; all student weights train with ``α·CE + β·KL_t + γ·Σ_j MSE(F_j)``
(α = 1, β = 10, γ = 5, t = 4) and the trainer's mask hook keeps pruned weights exactly zero. The per-feature
losses of the last epoch are kept in the plan: the quantization stage turns them into its W_j.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from vitrt.calib.losses import FeatureMimic, HardLabel, Objective, SoftLogits, feature_weight_factors
from vitrt.calib.trainer import TrainConfig, train
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.weights import parameter_state
from vitrt.kernels import sparse24
from vitrt.transforms.base import PlanContext
from vitrt.transforms.sparsity import permutation as perm_search
from vitrt.transforms.sparsity.config import PATTERNS, SparsityConfig
from vitrt.transforms.sparsity.plan import SparsityPlan, canonical_layers, decide_layers, torch_masks
from vitrt.transforms.sparsity.twin import layer_weight

# GPUSQ-ViT's pruning-stage loss and the fine-tuning recipe.
SPARSE_LOSS = (HardLabel(1.0), SoftLogits(10.0, temperature=4.0), FeatureMimic(5.0))
SPARSE_FINETUNE = TrainConfig(epochs=5, lr=1e-4, batch_size=32, weight_decay=0.05)


def twin_mask(weight: torch.Tensor) -> np.ndarray:
    """2:4 magnitude mask of a twin weight: Linear [N, K] along K (axis 1), Conv [M, C, R, S] along C (axis 1)."""
    return sparse24.mask_2to4(weight.detach().cpu().numpy(), axis=1)


@torch.no_grad()
def permute_twin(twin, progress=None) -> dict:
    """Permute MLP hidden channels (fc1 out ↔ fc2 in) and V dims within heads (v out ↔ proj in) of ``twin`` in
    place, each chosen by :func:`~vitrt.transforms.sparsity.permutation.search_permutation` on the consumer's
    weight. The function is unchanged (up to float reassociation). Returns per consumer layer the retained 2:4
    magnitude without / with the permutation."""
    retained, jobs = {}, []
    for index, block in enumerate(twin.blocks):
        if block.mlp is not None and block.mlp.fc2.weight.shape[1] % 4 == 0:
            jobs.append((f"blocks.{index}.mlp.fc2", block.mlp.fc1, block.mlp.fc2, None))
        if block.attn is not None and block.attn.proj.weight.shape[1] % 4 == 0:
            labels = perm_search.head_blocks(block.attn.heads, block.attn.v_dim)
            jobs.append((f"blocks.{index}.attn.proj", block.attn.v, block.attn.proj, labels))
    bar = progress.bar(len(jobs), "searching channel permutations") if progress else None
    for name, producer, consumer, labels in jobs:
        a = consumer.weight.detach().cpu().numpy().copy()  # the tensor is permuted in place below
        order = perm_search.search_permutation(a, labels)
        index = torch.from_numpy(order)
        producer.weight.copy_(producer.weight[index])
        producer.bias.copy_(producer.bias[index])
        consumer.weight.copy_(consumer.weight[:, index])
        retained[name] = {"without_permutation": round(perm_search.retained_fraction(a), 6),
                          "with_permutation": round(perm_search.retained_fraction(a[:, order]), 6)}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return retained


def sparse_finetune(student, teacher, masks: dict, data, config: TrainConfig, progress=None) -> dict:
    """Train ``student`` (masked, in place) towards ``teacher`` with GPUSQ-ViT's pruning loss, masks fixed."""
    result = train(student, data, Objective(*SPARSE_LOSS, teacher=teacher), config, masks=masks, progress=progress,
                   desc="sparse fine-tuning")
    per_feature = torch.tensor(result.per_feature or [])
    hard, soft, feature = SPARSE_LOSS
    return {"epochs": config.epochs, "seconds": result.seconds, "history": result.history,
            "per_feature_losses": [float(v) for v in per_feature],
            "feature_weights": [float(v) for v in feature_weight_factors(per_feature)] if len(per_feature) else [],
            "feature_names": ["patch_embed"] + [f"blocks.{i}" for i in range(len(student.blocks))] + ["final_projection"],
            "recipe": {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                       "weight_decay": config.weight_decay, "seed": config.seed, "alpha": hard.weight,
                       "beta": soft.weight, "gamma": feature.weight, "temperature": soft.temperature}}


def _mean(rows: list[dict], key: str) -> float | None:
    return round(sum(r[key] for r in rows) / len(rows), 6) if rows else None


def plan(twin, ctx: PlanContext, options: SparsityConfig) -> SparsityPlan:
    """Decide, permute, mask and (optionally) fine-tune a copy of ``twin``; the plan carries the result."""
    if options.pattern not in PATTERNS:
        raise VitrtError(f"unsupported sparsity pattern '{options.pattern}': expected one of {', '.join(PATTERNS)}")
    progress = ctx.progress
    student = copy.deepcopy(twin).eval()
    decisions = decide_layers(canonical_layers(student), options.include, options.exclude, options.min_weights)
    eligible = [d for d in decisions if d.eligible]
    retained = {}
    for d in eligible:
        weight = layer_weight(student, d.name)
        retained[d.name] = {"without_permutation": round(sparse24.retained_magnitude(
            weight.detach().cpu().numpy(), twin_mask(weight)), 6)}
    permutation = None
    if options.permute:
        found = permute_twin(student, progress)
        for name, figures in found.items():
            if name in retained:
                retained[name]["with_permutation"] = figures["with_permutation"]
        # fc1 / v are permuted along their output features: their own retained magnitude is unchanged
        kept = [r for r in retained.values() if "with_permutation" in r]
        permutation = {"layers": sorted(found), "mean_retained_without": _mean(kept, "without_permutation"),
                       "mean_retained_with": _mean(kept, "with_permutation")}
    masks = {d.name: twin_mask(layer_weight(student, d.name)) for d in eligible}
    finetune = None
    if options.finetune_epochs > 0:
        data = ctx.data(options.data)
        config = TrainConfig(**{**vars(SPARSE_FINETUNE), "epochs": options.finetune_epochs, "seed": ctx.seed,
                                "augment": data.labelled})
        with progress.step(f"sparse fine-tuning for {options.finetune_epochs} epoch(s)"):
            finetune = sparse_finetune(student, twin, torch_masks(masks), data, config, progress)
    changed = options.permute or options.finetune_epochs > 0
    return SparsityPlan(pattern=options.pattern, decisions=tuple(decisions), masks=masks,
                        weights=parameter_state(student) if changed else None, retained=retained,
                        permutation=permutation, finetune=finetune, export=options.export)
