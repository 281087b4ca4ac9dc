"""The 2:4 twin transform: a copy of the twin with the plan's weights (permuted / fine-tuned) and its masks."""

from __future__ import annotations

import copy

import torch

from vitrt.calib.trainer import apply_masks
from vitrt.compiler.weights import load_parameter_state
from vitrt.transforms.sparsity.plan import SparsityPlan


def apply_plan(twin, plan: SparsityPlan):
    """A new twin: ``twin``'s weights (or the plan's), pruned weights set to +0. ``twin`` is unchanged."""
    sparse = copy.deepcopy(twin).eval()
    if plan.weights:
        load_parameter_state(sparse, plan.weights)
    apply_masks(sparse, {name: torch.from_numpy(mask) for name, mask in plan.masks.items()})
    return sparse
