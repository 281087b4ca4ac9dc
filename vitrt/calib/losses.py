"""Training objectives as composable terms (GPUSQ-ViT Algorithm 1; NViT's full-model distillation; plain CE).

    L = Σ_terms weight · term
    HardLabel     cross entropy with the labels, or with the teacher's argmax when the data has none
    SoftLogits    KL(teacher ‖ student) of the logits at temperature t (scaled by t², as usual)
    FeatureMimic  Σ_j W_j · MSE(F_j^teacher, F_j^student) over the critical features: patch embedding (j = 0),
                  each block's output (j = 1..K) and the final projection's input (j = K + 1); W_j = 1 unless given

GPUSQ-ViT's pruning loss is ``HardLabel(1) + SoftLogits(10, t=4) + FeatureMimic(5)``; NViT's fine-tuning
``HardLabel(1) + SoftLogits(α, t=2)``; the digits reference is trained with ``HardLabel(label_smoothing=0.1)``.
:func:`feature_weight_factors` turns the per-feature losses one stage ended with (2:4 fine-tuning) into the
W_j of the next (QAT): W_j = L_j / Σ L_j (Algorithm 1, line 22).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class HardLabel:
    weight: float = 1.0
    label_smoothing: float = 0.0
    name = "hard"


@dataclass(frozen=True)
class SoftLogits:
    weight: float = 1.0
    temperature: float = 4.0
    name = "soft"


@dataclass(frozen=True)
class FeatureMimic:
    weight: float = 1.0
    feature_weights: tuple[float, ...] | None = None  # W_j; None = 1 for every feature
    name = "feature"


def per_feature_mse(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """MSE of each critical feature pair, as a vector [K + 2]."""
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} features, student {len(student)}")
    return torch.stack([F.mse_loss(s, t.detach()) for t, s in zip(teacher, student)])


def feature_weight_factors(per_feature_losses: torch.Tensor) -> torch.Tensor:
    """W_j = L_j / Σ_j L_j from the per-feature losses a previous stage ended with (uniform if all are 0)."""
    total = per_feature_losses.sum()
    if total <= 0:
        return torch.full_like(per_feature_losses, 1.0 / len(per_feature_losses))
    return per_feature_losses / total


class Objective:
    """A sum of terms, evaluated on a student (and a frozen teacher where a term needs one).

    Calling it returns ``(loss, parts)``: ``parts`` has each term's unweighted value as a float and, with a
    FeatureMimic term, ``per_feature`` (the detached per-feature MSE vector).
    """

    def __init__(self, *terms, teacher: torch.nn.Module | None = None):
        self.terms = terms
        self.features = any(isinstance(t, FeatureMimic) for t in terms)
        needs_teacher = self.features or any(isinstance(t, SoftLogits) for t in terms)
        if needs_teacher and teacher is None:
            raise ValueError("soft-logit and feature terms need a teacher")
        self.teacher = teacher.eval() if teacher is not None else None

    def __call__(self, student: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None):
        t_logits = t_feats = s_feats = None
        if self.teacher is not None:
            with torch.no_grad():
                if self.features:
                    t_logits, t_feats = self.teacher.forward_with_features(images)
                else:
                    t_logits = self.teacher(images)
        if self.features:
            s_logits, s_feats = student.forward_with_features(images)
        else:
            s_logits = student(images)
        total = torch.zeros(())
        parts: dict = {}
        for term in self.terms:
            if isinstance(term, HardLabel):
                if labels is None and t_logits is None:
                    raise ValueError("a hard-label loss on unlabelled data needs a teacher for its argmax")
                targets = labels if labels is not None else t_logits.argmax(dim=1)
                value = F.cross_entropy(s_logits, targets, label_smoothing=term.label_smoothing)
            elif isinstance(term, SoftLogits):
                t = term.temperature
                value = F.kl_div(F.log_softmax(s_logits / t, dim=1), F.log_softmax(t_logits.detach() / t, dim=1),
                                 reduction="batchmean", log_target=True) * t * t
            else:
                losses = per_feature_mse(t_feats, s_feats)
                w = torch.ones_like(losses) if term.feature_weights is None else \
                    torch.as_tensor(term.feature_weights, dtype=losses.dtype, device=losses.device)
                value = (w * losses).sum()
                parts["per_feature"] = losses.detach()
            total = total + term.weight * value
            parts[term.name] = float(value.detach())
        return total, parts
