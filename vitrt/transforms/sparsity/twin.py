"""The 2:4 twin transform: a copy of the twin with the plan's weights (permuted / fine-tuned) and its masks."""

from __future__ import annotations

import copy

import torch

from vitrt.calib.trainer import apply_masks
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.weights import load_parameter_state
from vitrt.transforms.sparsity.plan import SparsityPlan, torch_masks


def layer_weight(twin, name: str) -> torch.Tensor:
    """The weight of the twin's layer ``name`` (canonical name, e.g. blocks.0.mlp.fc2); VitrtError if absent."""
    try:
        return twin.get_submodule(name).weight
    except AttributeError:
        raise VitrtError(f"unknown layer '{name}': the twin has no module of that name (canonical names look like "
                         "blocks.0.mlp.fc2)") from None


def check_plan_fits(twin, plan: SparsityPlan) -> None:
    """Refuse a plan made for another structure: every masked layer must exist, shaped like its mask."""
    for d in plan.eligible:
        shape = tuple(layer_weight(twin, d.name).shape)
        if shape != d.twin_shape:
            raise VitrtError(f"sparsity: the twin's '{d.name}' weight is {list(shape)}, the plan was made for "
                             f"{list(d.twin_shape)} (plan it again on this model)")


def apply_plan(twin, plan: SparsityPlan):
    """A new twin: ``twin``'s weights (or the plan's), pruned weights set to +0. ``twin`` is unchanged."""
    check_plan_fits(twin, plan)
    sparse = copy.deepcopy(twin).eval()
    if plan.weights:
        load_parameter_state(sparse, plan.weights)
    apply_masks(sparse, torch_masks(plan.masks))
    return sparse
