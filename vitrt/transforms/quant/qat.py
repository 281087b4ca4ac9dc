"""GPUSQ-ViT's sparse-distillation-aware QAT (Algorithm 1, lines 18–35) on the shared trainer.

Loss: α·CE(labels, or the teacher's argmax without labels) + β·KL at temperature t + γ·Σ W_j·MSE of the critical
features (patch embedding, every block, final projection input); teacher = the float twin the stage meets (M_SF).
W_j = L_j / Σ L_j from the 2:4 stage's per-feature losses, uniform without. Trains the Linear / Conv weights and
biases (what the Q/DQ graph carries); amax stays fixed (modelopt keeps it as a calibrated buffer). The 2:4 masks
come from the sparsity plan and stay fixed through the trainer's mask hook.
"""

from __future__ import annotations

import torch
from torch import nn

from vitrt.calib.losses import FeatureMimic, HardLabel, Objective, SoftLogits, feature_weight_factors
from vitrt.calib.trainer import TrainConfig, train
from vitrt.compiler.errors import VitrtError

QAT_LOSS = (HardLabel(1.0), SoftLogits(10.0, temperature=4.0))
FEATURE_GAMMA = 5.0
QAT = TrainConfig(epochs=0, lr=5e-5, batch_size=64, weight_decay=0.0)


def feature_weights(n_features: int, prior_losses) -> tuple[torch.Tensor, str]:
    if prior_losses is None:
        return torch.full((n_features,), 1.0 / n_features), "uniform"
    w = feature_weight_factors(torch.as_tensor(prior_losses, dtype=torch.float32))
    if len(w) != n_features:
        raise VitrtError(f"prior per-feature losses have {len(w)} entries, the model has {n_features} features")
    return w, "2:4 stage"


def qat(student: nn.Module, teacher: nn.Module, data, *, epochs: int, seed: int = 0, masks=None,
        prior_feature_losses=None, progress=None) -> dict:
    """Train the fake-quant ``student`` in place; returns the QAT record for the manifest."""
    w, w_source = feature_weights(student.spec.depth + 2, prior_feature_losses)
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for m in student.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              for p in (m.weight, m.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    objective = Objective(*QAT_LOSS, FeatureMimic(FEATURE_GAMMA, tuple(float(v) for v in w)), teacher=teacher)
    config = TrainConfig(**{**vars(QAT), "epochs": epochs, "seed": seed})
    result = train(student, data, objective, config, params=params, masks=masks, progress=progress, desc="QAT")
    for p in student.parameters():
        p.requires_grad_(False)
    return {"epochs": epochs, "loss": [h["total"] for h in result.history], "feature_weights": w_source,
            "sparse_layers_kept": len(masks or {}), "lr": config.lr, "seconds": result.seconds}
