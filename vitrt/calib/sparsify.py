"""The data-driven side of 2:4 sparsity on the torch twin: permutation, masks, sparse fine-tuning.

:func:`prepare_sparsity` brings the twin to its sparse state in place (permuted, masked, fine-tuned), so the
stages after it (quantization / QAT) start from the sparse model, and attaches the masks to it as plain
data: ``twin.sparsity_masks = {canonical layer name: bool tensor shaped like the module's weight}``. QAT
keeps them fixed with :func:`apply_masks` (after every step) and :func:`mask_gradients`; weights stay 2:4
behind a DequantizeLinear as long as zero stays zero under quantization (symmetric, zero point 0). It
returns a :class:`~vitrt.passes.sparsity.SparsityResult` — the per-layer decisions, the masks, the final twin
state and its ONNX initializer values — which the graph pass carries into the (earlier lowered) graph.
Contract with earlier stages: the twin handed in must already have its final structure (a stage that
changes dims transforms the twin in its stage function), because masks are shaped by it.

Sparse fine-tuning (GPUSQ-ViT Algorithm 1, lines 2-17): the dense twin is the teacher, the masked copy the
student; all student weights train with ``α·CE + β·KL_t + γ·Σ_j MSE(F_j)`` (``vitrt.calib.distill``) and the
masks are re-applied after every step, so pruned weights stay exactly zero. The per-feature losses of the
last epoch are returned: the quantization stage turns them into its W_j (``feature_weight_factors``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..compiler.errors import VitrtError
from ..kernels import sparse24
from . import permute as perm_search


def module_weight(twin, name: str) -> torch.Tensor:
    try:
        return twin.get_submodule(name).weight
    except AttributeError:
        raise VitrtError(f"unknown layer '{name}': the twin has no module of that name (canonical names look like "
                         "blocks.0.mlp.fc2)") from None


def twin_mask(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """2:4 magnitude mask of a twin weight: Linear [N, K] along K (axis 1), Conv [M, C, R, S] along C (axis 1)."""
    return torch.from_numpy(sparse24.mask_2to4(weight.detach().cpu().numpy(), axis=1))


@torch.no_grad()
def apply_masks(twin, masks: dict) -> None:
    """weight ← weight ⊙ mask for every masked layer (in place); unknown names are refused."""
    for name, mask in masks.items():
        weight = module_weight(twin, name)
        if tuple(mask.shape) != tuple(weight.shape):
            raise VitrtError(f"mask for '{name}' has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
        weight.masked_fill_(~mask.to(weight.device, torch.bool), 0.0)  # +0 (a product would leave -0)


def mask_gradients(twin, masks: dict) -> None:
    """grad ← grad ⊙ mask, so optimiser moments of pruned weights stay zero as well."""
    for name, mask in masks.items():
        weight = module_weight(twin, name)
        if weight.grad is not None:
            weight.grad.masked_fill_(~mask.to(weight.grad.device, torch.bool), 0.0)


# --- permutation ----------------------------------------------------------------------------------------
@torch.no_grad()
def permute_twin(twin, progress=None) -> dict:
    """Permute MLP hidden channels (fc1 out ↔ fc2 in) and V dims within heads (v out ↔ proj in) of ``twin`` in
    place, each chosen by :func:`vitrt.calib.permute.search_permutation` on the consumer's weight. The function
    is unchanged (up to float reassociation). Returns per consumer layer the retained 2:4 magnitude
    without / with the permutation."""
    retained = {}
    jobs = []
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


# --- sparse fine-tuning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneRecipe:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.05
    seed: int = 0


def sparse_finetune(student, teacher, masks: dict, data, recipe: FinetuneRecipe = FinetuneRecipe(),
                    augment_images: bool = True, progress=None) -> dict:
    """Train ``student`` (masked, in place) towards ``teacher`` with the GPUSQ-ViT pruning loss, masks fixed.

    ``data`` is an ImageSet (labels optional: without them the teacher's argmax is the hard label).
    Returns {"epochs", "seconds", "history": [per-epoch mean loss parts], "per_feature_losses": [K + 2] of
    the last epoch, "feature_weights": W_j = L_j / Σ L_j}.
    """
    from .digits import augment
    from .distill import DistillWeights, distillation_loss, feature_weight_factors, per_feature_mse

    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    teacher = teacher.eval()  # only run under no_grad; its parameters are left as they are
    student.train()
    apply_masks(student, masks)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(data) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    weights = DistillWeights()
    history, start = [], time.perf_counter()
    bar = progress.bar(recipe.epochs, "sparse fine-tuning") if progress else None
    feature_sum = None
    for epoch in range(recipe.epochs):
        parts_sum, batches = {"total": 0.0, "hard": 0.0, "soft": 0.0, "feature": 0.0}, 0
        feature_sum = None
        for images, labels in data.batches(recipe.batch_size, shuffle=True, generator=generator):
            if augment_images:
                images = augment(images, generator)
            with torch.no_grad():
                t_logits, t_feats = teacher.forward_with_features(images)
            s_logits, s_feats = student.forward_with_features(images)
            loss, parts = distillation_loss(s_logits, t_logits, labels, s_feats, t_feats, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mask_gradients(student, masks)
            optimizer.step()
            schedule.step()
            apply_masks(student, masks)  # weight decay and Adam's update must not revive pruned weights
            per_feature = per_feature_mse(t_feats, [f.detach() for f in s_feats])
            feature_sum = per_feature if feature_sum is None else feature_sum + per_feature
            parts_sum["total"] += float(loss)
            for key in ("hard", "soft", "feature"):
                parts_sum[key] += parts[key]
            batches += 1
        history.append({key: round(value / max(batches, 1), 6) for key, value in parts_sum.items()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['total']:.3f}")
    if bar is not None:
        bar.close()
    student.eval()
    per_feature = (feature_sum / max(batches, 1)) if feature_sum is not None else torch.zeros(0)
    return {"epochs": recipe.epochs, "seconds": round(time.perf_counter() - start, 2), "history": history,
            "per_feature_losses": [float(v) for v in per_feature],
            "feature_weights": [float(v) for v in feature_weight_factors(per_feature)] if len(per_feature) else [],
            "feature_names": ["patch_embed"] + [f"blocks.{i}" for i in range(len(student.blocks))] + ["final_projection"],
            "recipe": {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
                       "weight_decay": recipe.weight_decay, "seed": recipe.seed,
                       "alpha": weights.alpha, "beta": weights.beta, "gamma": weights.gamma,
                       "temperature": weights.temperature}}


# --- the stage ------------------------------------------------------------------------------------------
def parameter_initializers(twin) -> dict[str, np.ndarray]:
    """ONNX initializer values of every twin parameter (names and layouts exactly as the lowering emits)."""
    from onnx import numpy_helper

    from ..compiler.lower import lower

    model = lower(twin, batch=1)
    return {init.name: numpy_helper.to_array(init).copy() for init in model.graph.initializer
            if init.name.endswith((".weight", ".bias"))}


def prepare_sparsity(twin, *, pattern: str = "2:4", include: str | None = None, exclude: str | None = None,
                     min_weights: int | None = None, permute: bool = False, finetune_epochs: int = 0,
                     data=None, export: bool = False, seed: int = 0, progress=None, in_place: bool = True):
    """Decide, permute, mask and (optionally) fine-tune ``twin`` (in place unless ``in_place=False``, then a
    copy); returns a SparsityResult. ``twin.sparsity_masks`` holds the masks afterwards."""
    from vitrt.passes.sparsity import DEFAULT_MIN_WEIGHTS, PATTERNS, SparsityResult, canonical_layers, decide_layers

    if pattern not in PATTERNS:
        raise VitrtError(f"unsupported sparsity pattern '{pattern}': expected one of {', '.join(PATTERNS)}")
    if finetune_epochs > 0 and data is None:
        raise VitrtError("sparse fine-tuning needs data: pass --sparse-data digits|synthetic|PATH")
    # The dense teacher for fine-tuning is a frozen copy; the twin itself becomes the sparse student.
    teacher = copy.deepcopy(twin).eval() if finetune_epochs > 0 else None
    student = twin.eval() if in_place else copy.deepcopy(twin).eval()
    decisions = decide_layers(canonical_layers(student), include, exclude,
                              DEFAULT_MIN_WEIGHTS if min_weights is None else min_weights)
    eligible = [d for d in decisions if d.eligible]
    retained = {d.name: {"without_permutation": round(sparse24.retained_magnitude(
        module_weight(student, d.name).detach().numpy(), twin_mask(module_weight(student, d.name), d.kind).numpy()), 6)}
        for d in eligible}
    permutation = None
    if permute:
        found = permute_twin(student, progress)
        for name, figures in found.items():
            if name in retained:
                retained[name]["with_permutation"] = figures["with_permutation"]
        # fc1 / v are permuted along their output features: their own retained magnitude is unchanged
        kept = [r for r in retained.values() if "with_permutation" in r]
        permutation = {"layers": sorted(found), "mean_retained_without": _mean(kept, "without_permutation"),
                       "mean_retained_with": _mean(kept, "with_permutation")}
    masks = {d.name: twin_mask(module_weight(student, d.name), d.kind) for d in eligible}
    apply_masks(student, masks)
    student.sparsity_masks = masks
    finetune = None
    if finetune_epochs > 0:
        finetune = sparse_finetune(student, teacher, masks, data, FinetuneRecipe(epochs=finetune_epochs, seed=seed),
                                   augment_images=data.labels is not None, progress=progress)
    return SparsityResult(pattern=pattern, decisions=tuple(decisions), masks=masks,
                          state={k: v.detach().clone() for k, v in student.state_dict().items()},
                          initializers=parameter_initializers(student), retained=retained,
                          permutation=permutation, finetune=finetune, export=export)


def _mean(rows: list[dict], key: str) -> float | None:
    return round(sum(r[key] for r in rows) / len(rows), 6) if rows else None
