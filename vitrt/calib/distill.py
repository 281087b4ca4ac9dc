"""Distillation losses shared by fine-tuning stages (GPUSQ-ViT Algorithm 1; NViT's full-model distillation).

    L = α · L_hard + β · L_soft + γ · L_feature
    L_hard    cross entropy with the labels, or with the teacher's argmax when the data has none
    L_soft    KL(teacher ‖ student) of the logits at temperature t (scaled by t², as usual)
    L_feature Σ_j W_j · MSE(F_j^teacher, F_j^student) over the critical features: patch embedding (j = 0),
              each block's output (j = 1..K, one block per stage, θ_i = 1) and the final projection's
              input (j = K + 1); W_j = 1 unless given

``feature_weight_factors`` turns the per-feature losses measured at the end of one stage (2:4 pruning) into
the W_j of the next (QAT): W_j = L_j / Σ L_j (Algorithm 1, line 22).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DistillWeights:
    alpha: float = 1.0  # hard label
    beta: float = 10.0  # soft logits
    gamma: float = 5.0  # features
    temperature: float = 4.0


def per_feature_mse(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """MSE of each critical feature pair, as a vector [K + 2]."""
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} features, student {len(student)}")
    return torch.stack([F.mse_loss(s, t.detach()) for t, s in zip(teacher, student)])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      student_features: list[torch.Tensor] | None = None,
                      teacher_features: list[torch.Tensor] | None = None,
                      weights: DistillWeights = DistillWeights(),
                      feature_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GPUSQ-ViT loss; returns (total, {'hard', 'soft', 'feature'} parts as floats)."""
    teacher_logits = teacher_logits.detach()
    targets = labels if labels is not None else teacher_logits.argmax(dim=1)
    hard = F.cross_entropy(student_logits, targets)
    t = weights.temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t
    total = weights.alpha * hard + weights.beta * soft
    feature = torch.zeros(())
    if student_features is not None and teacher_features is not None and weights.gamma:
        losses = per_feature_mse(teacher_features, student_features)
        w = feature_weights if feature_weights is not None else torch.ones_like(losses)
        feature = (w * losses).sum()
        total = total + weights.gamma * feature
    return total, {"hard": float(hard), "soft": float(soft), "feature": float(feature)}


def feature_weight_factors(per_feature_losses: torch.Tensor) -> torch.Tensor:
    """W_j = L_j / Σ_j L_j from the per-feature losses a previous stage ended with (uniform if all are 0)."""
    total = per_feature_losses.sum()
    if total <= 0:
        return torch.full_like(per_feature_losses, 1.0 / len(per_feature_losses))
    return per_feature_losses / total
