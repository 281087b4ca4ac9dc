"""The distillation planner: train a copy of the twin the stage meets from the dense teacher on the shared trainer.

Loss (the empirical study's eq. 4 with λ = 1/2, τ = 2): ``CE(labels) + τ²·KL(teacher ‖ student)`` at temperature τ
(unlabelled data: the teacher's argmax serves as the label). Every parameter trains; token merging's selection is
recomputed in every forward pass, as the graph does it.
"""

from __future__ import annotations

import copy

from vitrt.calib.losses import HardLabel, Objective, SoftLogits
from vitrt.calib.trainer import TrainConfig, train
from vitrt.compiler.weights import parameter_state
from vitrt.transforms.base import PlanContext
from vitrt.transforms.distill.config import DistillConfig
from vitrt.transforms.distill.plan import DistillPlan

LOSS = (HardLabel(1.0), SoftLogits(1.0, temperature=2.0))
RECIPE = TrainConfig(epochs=0, lr=2e-4, batch_size=32, weight_decay=0.05, augment=True)
SYNTHETIC_IMAGES = 1024


def plan(twin, ctx: PlanContext, options: DistillConfig) -> DistillPlan:
    student = copy.deepcopy(twin).train().requires_grad_(True)
    data = ctx.data(options.data, limit=SYNTHETIC_IMAGES if options.data == "synthetic" else None,
                    labelled=True)  # eq. 4's CE reads the labels: an ImageFolder must have the model's classes
    config = TrainConfig(**{**vars(RECIPE), "epochs": options.epochs, "seed": ctx.seed, "augment": data.labelled})
    with ctx.progress.step(f"distilling the compressed twin for {options.epochs} epoch(s)"):
        result = train(student, data, Objective(*LOSS, teacher=ctx.teacher), config, progress=ctx.progress,
                       desc="distillation")
    record = {"epochs": options.epochs, "data": options.data, "lr": config.lr, "temperature": LOSS[1].temperature,
              "loss_per_epoch": [h["total"] for h in result.history], "seconds": result.seconds}
    return DistillPlan(parameter_state(student), record)
