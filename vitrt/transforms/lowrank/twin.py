"""The low-rank twin transform: a copy of the twin whose factored layers are :class:`LowRankLinear` modules.

``LowRankLinear`` computes ``(x · uᵀ) · weightᵀ + bias`` — the two MatMuls of the graph pass, in the same order —
with ``u`` [rank, K], ``weight`` [N, rank] and ``bias`` [N] as parameters (module path and ``weight`` / ``bias``
names unchanged, so the trainer, the token-merge twin and state loading see the layer where it always was).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitrt.compiler.weights import load_parameter_state
from vitrt.transforms.lowrank.plan import LowRankPlan


class LowRankLinear(nn.Module):
    def __init__(self, k: int, rank: int, n: int):
        super().__init__()
        self.in_features, self.rank, self.out_features = k, rank, n
        self.u = nn.Parameter(torch.zeros(rank, k))
        self.weight = nn.Parameter(torch.zeros(n, rank))
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.u), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


@torch.no_grad()
def factor_twin(twin, plan: LowRankPlan):
    """A new twin with the plan's (fine-tuned) weights and its factored layers; ``twin`` is unchanged."""
    plan.check_matches(twin.spec)
    model = copy.deepcopy(twin).eval()
    if plan.weights:
        load_parameter_state(model, plan.weights)
    for layer in plan.factored():
        module = LowRankLinear(layer.k, layer.rank, layer.n)
        for attr in ("u", "weight", "bias"):
            getattr(module, attr).copy_(torch.from_numpy(np.asarray(plan.factors[f"{layer.name}.{attr}"])))
        _set_module(model, layer.name, module)
    model.spec = plan.apply_to_spec(twin.spec)
    return model


def factor_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The factors of every LowRankLinear in ``model`` (after fine-tuning), by parameter name."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LowRankLinear):
            for attr in ("u", "weight", "bias"):
                state[f"{name}.{attr}"] = getattr(module, attr).detach().float().cpu().numpy().copy()
    return state
