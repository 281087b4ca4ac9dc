"""The low-rank planner: truncated SVD of every selected linear layer of the twin, a rank per layer, optional
fine-tuning of the factored twin from the dense teacher — all on the twin (never modified).

Ranks. For W [N, K] (torch layout) with singular values s₁ ≥ s₂ ≥ …, the energy kept at rank r is
Σ_{i≤r} s_i² / Σ s_i². ``--lowrank E``: the smallest r keeping at least E, rounded *up* to a multiple of
``--lowrank-align`` (8 or 16: GEMM tiles, TensorRT's alignment). ``--lowrank-budget F``: one threshold E for every
layer, the largest (bisection on E) whose factored layers hold at most F of the selected layers' dense parameters.
A layer is factored only when its rank is below min(K, N) and r·(K + N) < K·N (else it would cost more than it
saves and stays dense, with the reason recorded).

Factors: W ≈ (U_r √S_r)(√S_r V_rᵀ), computed in float64 — the first MatMul multiplies by √S_r V_rᵀ (``u``), the
second by U_r √S_r (``weight``): balanced, so both factors have the same range (better for fine-tuning).
"""

from __future__ import annotations

import fnmatch

import numpy as np

from vitrt.compiler.errors import OptionError
from vitrt.compiler.spec import BLOCK_LINEAR_NAMES
from vitrt.transforms.base import PlanContext
from vitrt.transforms.lowrank.config import LowRankConfig
from vitrt.transforms.lowrank.plan import LayerRank, LowRankPlan
from vitrt.transforms.lowrank.twin import factor_state, factor_twin

BISECTION_STEPS = 30


def candidate_layers(spec, patterns: str) -> list[str]:
    """The block linear layers (present under ``spec``) matching the comma-separated fnmatch ``patterns``."""
    present = [f"blocks.{i}.{local}" for i, b in enumerate(spec.blocks) for local in BLOCK_LINEAR_NAMES
               if (local.startswith("attn") and b.heads) or (local.startswith("mlp") and b.mlp)]
    chosen = []
    for pattern in [p.strip() for p in patterns.split(",") if p.strip()]:
        matched = [name for name in present if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise OptionError(f"--lowrank-layers pattern '{pattern}' matches no linear layer of the blocks "
                              "(names look like blocks.3.mlp.fc1)")
        chosen += [name for name in matched if name not in chosen]
    return [name for name in present if name in chosen]


def svd(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 SVD of a torch-layout weight [N, K]: (U [N, m], s [m], Vt [m, K])."""
    return np.linalg.svd(np.asarray(weight, dtype=np.float64), full_matrices=False)


def rank_for_energy(s: np.ndarray, energy: float, align: int) -> tuple[int, float]:
    """(smallest rank keeping ``energy`` of Σ s², rounded up to ``align``; the energy that rank keeps)."""
    power = np.cumsum(s ** 2)
    total = power[-1] if power[-1] > 0 else 1.0
    rank = int(np.searchsorted(power / total, energy - 1e-12) + 1)
    rank = min(-(-rank // align) * align, len(s))
    return rank, float(power[rank - 1] / total)


def choose(name: str, k: int, n: int, s: np.ndarray, energy: float, align: int) -> LayerRank:
    rank, kept = rank_for_energy(s, energy, align)
    if rank >= min(k, n):
        return LayerRank(name, k, n, 0, 1.0, f"rank {rank} for energy {energy:g} is full rank")
    if rank * (k + n) >= k * n:
        return LayerRank(name, k, n, 0, 1.0, f"rank {rank} for energy {energy:g} saves nothing "
                                             f"(break-even {k * n / (k + n):.1f})")
    return LayerRank(name, k, n, rank, kept)


def factors_for(weight: np.ndarray, bias: np.ndarray, rank: int, decomposition=None) -> dict[str, np.ndarray]:
    """The balanced rank-``rank`` factors of a torch-layout weight [N, K] (suffixes u / weight / bias)."""
    u, s, vt = decomposition if decomposition is not None else svd(weight)
    root = np.sqrt(s[:rank])
    return {"u": (root[:, None] * vt[:rank]).astype(np.float32), "weight": (u[:, :rank] * root).astype(np.float32),
            "bias": np.asarray(bias, dtype=np.float32).copy()}


def plan_with_ranks(twin, ranks: dict[str, int], align: int = 1, meta=None) -> LowRankPlan:
    """A plan factoring exactly ``ranks`` (layer -> rank) of ``twin`` — e.g. full rank, which must reproduce the
    dense layer (the verification of the factorisation itself)."""
    layers, factors = [], {}
    for name, rank in ranks.items():
        module = twin.get_submodule(name)
        weight = module.weight.detach().double().cpu().numpy()
        decomposition = svd(weight)
        s = decomposition[1]
        kept = float(np.sum(s[:rank] ** 2) / max(np.sum(s ** 2), 1e-300))
        layers.append(LayerRank(name, weight.shape[1], weight.shape[0], rank, kept))
        for suffix, value in factors_for(weight, module.bias.detach().cpu().numpy(), rank, decomposition).items():
            factors[f"{name}.{suffix}"] = value
    return LowRankPlan(tuple(layers), align, factors, None, dict(meta or {}))


def decide(twin, names: list[str], energy: float, align: int) -> tuple[list[LayerRank], dict]:
    decompositions = {name: svd(twin.get_submodule(name).weight.detach().cpu().numpy()) for name in names}
    layers = [choose(name, d[2].shape[1], d[0].shape[0], d[1], energy, align) for name, d in decompositions.items()]
    return layers, decompositions


def energy_for_budget(twin, names: list[str], budget: float, align: int) -> float:
    """The largest energy threshold whose factored layers hold at most ``budget`` of the dense parameters."""
    decompositions = {name: svd(twin.get_submodule(name).weight.detach().cpu().numpy()) for name in names}
    dense = sum(d[0].shape[0] * d[2].shape[1] for d in decompositions.values())

    def params(energy: float) -> int:
        return sum(choose(name, d[2].shape[1], d[0].shape[0], d[1], energy, align).params_after
                   for name, d in decompositions.items())

    lo, hi = 0.0, 1.0  # params(lo) is the least any threshold reaches
    if params(lo + 1e-9) > budget * dense:
        raise OptionError(f"--lowrank-budget {budget}: even rank {align} everywhere keeps "
                          f"{params(1e-9) / dense:.3f} of the parameters; raise the budget or lower --lowrank-align")
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(mid) <= budget * dense else (lo, mid)
    return lo


def finetune(student, ctx: PlanContext, options: LowRankConfig) -> dict:
    """The factored twin learns from the dense teacher (NViT's fine-tuning objective) on the shared trainer."""
    from vitrt.calib.losses import HardLabel, Objective, SoftLogits
    from vitrt.calib.trainer import TrainConfig, train

    objective = Objective(HardLabel(), SoftLogits(1.0, 2.0), teacher=ctx.teacher)
    config = TrainConfig(epochs=options.finetune_epochs, lr=5e-4, batch_size=32, weight_decay=0.05, augment=True,
                         seed=ctx.seed)
    data = ctx.data(options.data, limit=None if options.data != "synthetic" else 1024, labelled=True)  # HardLabel
    result = train(student, data, objective, config, progress=ctx.progress, desc="fine-tuning the factored twin")
    return {"epochs": options.finetune_epochs, "lr": config.lr, "data": options.data,
            "loss_per_epoch": [h["total"] for h in result.history], "seconds": result.seconds}


def plan(twin, ctx: PlanContext, options: LowRankConfig) -> LowRankPlan:
    """Ranks from ``options`` for ``twin`` (never modified), the factors, and optionally fine-tuned weights."""
    from vitrt.compiler.weights import parameter_state

    if options.plan is not None:
        found = LowRankPlan.load(options.plan)
        found.check_matches(twin.spec)
        return found.with_meta({"source": str(options.plan)})
    names = candidate_layers(twin.spec, options.layers)
    energy = options.energy
    rule = {"energy": energy}
    if energy is None:
        energy = energy_for_budget(twin, names, options.budget, options.align)
        rule = {"budget": options.budget, "energy": round(energy, 6)}
    layers, decompositions = decide(twin, names, energy, options.align)
    factors = {}
    for layer in layers:
        if layer.factored:
            module = twin.get_submodule(layer.name)
            for suffix, value in factors_for(module.weight.detach().cpu().numpy(), module.bias.detach().cpu().numpy(),
                                             layer.rank, decompositions[layer.name]).items():
                factors[f"{layer.name}.{suffix}"] = value
    found = LowRankPlan(tuple(layers), options.align, factors, None,
                        {"rule": rule, "layers_pattern": options.layers})
    if not options.finetune_epochs or not found.factored():
        return found
    student = factor_twin(twin, found)
    with ctx.progress.step(f"fine-tuning the factored twin for {options.finetune_epochs} epoch(s)"):
        record = finetune(student, ctx, options)
    return LowRankPlan(found.layers, found.align, factor_state(student), parameter_state(student),
                       {**found.meta, "finetune": record})
