"""Latency-aware global structural pruning (NViT eq. 7) as a pure search over kept indices.

Greedy loop (NViT sec. 3.2, appendix A.2, with the hardware rules as hard constraints):

    kept = everything;  scores = importance(kept)
    while latency(spec(kept)) > target · latency(dense):
        for every removable unit u  (EMB 16 channels; per block: 1 head, 8 QK dims, 8 V dims, 16 MLP channels)
            I_u   = Σ importance of the unit's lowest-scored kept indices  / Σ importance of everything kept
            ΔL_u  = (latency(spec(kept)) − latency(spec(kept \\ u))) / latency(dense)
            s_u   = I_u − η · ΔL_u                                                     (eq. 7, normalised)
        remove argmin s_u;  every 1/rounds of the way to the target, re-score importance with the removed
        groups' gates at 0

A unit's size is what takes the dim to the next lower aligned value (so an unaligned starting dim is fixed
by the first removal). Dims never go below the rules: QK and V per head multiples of 8 and >= 16, MLP and
EMB multiples of 16 (MLP may reach 0: MLP removed), heads >= 1 unless the last head goes (attention
removed). The latency model is any callable ``spec -> ms`` (a LatencyTable's ``model_ms``); the importance
is a callable ``kept -> {group: scores}``, so the search itself is deterministic plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.spec import BlockSpec, ViTSpec
from vitrt.transforms.prune.plan import CHANNEL_MULTIPLE, HEAD_DIM_MIN, HEAD_DIM_MULTIPLE, BlockPlan, PruningPlan

LatencyModel = Callable[[ViTSpec], float]
ImportanceFn = Callable[[dict], dict]  # kept indices per group key -> importance tensor per group key
KIND_ORDER = ("emb", "heads", "qk", "v", "mlp")  # deterministic tie-break


@dataclass(frozen=True)
class SearchConfig:
    target: float  # fraction of the dense model's predicted latency to reach, in (0, 1]
    eta: float = 0.05  # weight of the latency term (eq. 7) against importance, both normalised (digits sweep)
    rounds: int = 8  # importance is re-scored this many times on the way to the target
    max_steps: int = 100_000


@dataclass
class SearchResult:
    plan: PruningPlan
    dense_ms: float
    predicted_ms: float
    steps: int
    removed: dict  # units removed per kind


def _next_aligned(n: int, multiple: int) -> int:
    """The largest multiple of ``multiple`` strictly below ``n``."""
    return ((n - 1) // multiple) * multiple


def _key(block: int | None, kind: str) -> str:
    return "emb" if kind == "emb" else f"blocks.{block}.{kind}"


class _State:
    """Kept indices per group key, and the spec they imply."""

    def __init__(self, spec: ViTSpec):
        self.spec = spec
        self.kept = {"emb": list(range(spec.emb))}
        for i, b in enumerate(spec.blocks):
            for kind, size in (("heads", b.heads), ("qk", b.qk if b.heads else 0), ("v", b.v if b.heads else 0),
                               ("mlp", b.mlp)):
                self.kept[_key(i, kind)] = list(range(size))

    def block_spec(self, i: int, kept: dict) -> BlockSpec:
        b = self.spec.blocks[i]
        heads = len(kept[_key(i, "heads")])
        qk, v = (len(kept[_key(i, "qk")]), len(kept[_key(i, "v")])) if heads else (0, 0)
        return BlockSpec(heads=heads, qk=qk, v=v, mlp=len(kept[_key(i, "mlp")]), tokens=b.tokens, scale=b.scale,
                         tokens_out=b.tokens_out)

    def spec_of(self, kept: dict) -> ViTSpec:
        return self.spec.replace(emb=len(kept["emb"]),
                                 blocks=tuple(self.block_spec(i, kept) for i in range(self.spec.depth)))

    def unit_size(self, block: int | None, kind: str) -> int:
        """How many indices the next removal of this kind takes away (0 = not removable)."""
        n = len(self.kept[_key(block, kind)])
        if kind == "emb":
            return n - _next_aligned(n, CHANNEL_MULTIPLE) if _next_aligned(n, CHANNEL_MULTIPLE) >= CHANNEL_MULTIPLE else 0
        if kind == "heads":
            return 1 if n >= 1 else 0
        if kind in ("qk", "v"):
            if not self.kept[_key(block, "heads")]:
                return 0
            target = _next_aligned(n, HEAD_DIM_MULTIPLE)
            return n - target if target >= HEAD_DIM_MIN else 0
        return n - _next_aligned(n, CHANNEL_MULTIPLE) if n else 0  # mlp: may reach 0


def _lowest(indices: list[int], scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` kept indices with the lowest score (ties: lower index first), deterministic."""
    order = sorted(indices, key=lambda j: (float(scores[j]), j))
    return order[:count]


def search(spec: ViTSpec, importance: ImportanceFn, latency: LatencyModel, config: SearchConfig,
           progress=None, meta: dict | None = None) -> SearchResult:
    """Greedy latency-aware removal until ``latency(spec) <= target * latency(dense)``; returns the plan."""
    if not 0 < config.target <= 1:
        raise VitrtError(f"--prune {config.target} must be a latency fraction in (0, 1]")
    state = _State(spec)
    dense_ms = float(latency(spec))
    goal = config.target * dense_ms
    current_ms = dense_ms
    scores = importance(state.kept)
    aligned = _align(state, scores)
    current_ms = float(latency(state.spec_of(state.kept)))
    next_rescore = dense_ms - (dense_ms - goal) / max(config.rounds, 1)
    removed = {kind: 0 for kind in KIND_ORDER}
    removed["alignment"] = aligned
    steps = 0
    bar = progress.bar(100, "pruning search") if progress is not None else None
    while current_ms > goal:
        if steps >= config.max_steps:
            raise VitrtError(f"pruning search did not reach the target within {config.max_steps} removals")
        total = sum(float(scores[k][state.kept[k]].sum()) for k in state.kept if k in scores and state.kept[k]) or 1.0
        best = None
        for block in [None] + list(range(spec.depth)):
            for kind in (("emb",) if block is None else KIND_ORDER[1:]):
                size = state.unit_size(block, kind)
                if not size:
                    continue
                key = _key(block, kind)
                drop = _lowest(state.kept[key], scores[key], size)
                trial = dict(state.kept)
                trial[key] = [j for j in state.kept[key] if j not in set(drop)]
                if kind == "heads" and not trial[key]:  # last head: the whole attention branch goes
                    trial[_key(block, "qk")], trial[_key(block, "v")] = [], []
                try:
                    saved = (current_ms - float(latency(state.spec_of(trial)))) / dense_ms
                except VitrtError:  # the latency model cannot answer there (outside the table's grid)
                    continue
                value = float(scores[key][drop].sum()) / total
                if kind == "heads" and not trial[key]:
                    value += sum(float(scores[_key(block, k)][state.kept[_key(block, k)]].sum()) for k in ("qk", "v")) / total
                score = value - config.eta * saved
                rank = (score, KIND_ORDER.index(kind), -1 if block is None else block)
                if best is None or rank < best[0]:
                    best = (rank, kind, block, trial)
        if best is None:
            raise VitrtError(f"the latency target {config.target:g} cannot be reached within the alignment rules: "
                             f"every dim is at its minimum at {current_ms / dense_ms:.3f} of the dense latency")
        _, kind, block, trial = best
        state.kept = trial
        removed[kind] += 1
        steps += 1
        current_ms = float(latency(state.spec_of(state.kept)))
        if bar is not None:
            bar.n = min(100, int(100 * (dense_ms - current_ms) / max(dense_ms - goal, 1e-12)))
            bar.refresh()
        if current_ms <= next_rescore and current_ms > goal:
            scores = importance(state.kept)
            next_rescore = current_ms - (dense_ms - goal) / max(config.rounds, 1)
    if bar is not None:
        bar.close()
    plan = plan_from_kept(spec, state.kept, {**(meta or {}), "target": config.target, "eta": config.eta,
                                             "dense_ms": dense_ms, "predicted_ms": current_ms, "steps": steps})
    return SearchResult(plan, dense_ms, current_ms, steps, removed)


def _align(state: _State, scores: dict) -> int:
    """Hardware rules first: cut every unaligned dim down to its rule, dropping the least important indices."""
    count = 0
    for block in [None] + list(range(state.spec.depth)):
        for kind in (("emb",) if block is None else ("qk", "v", "mlp")):
            key = _key(block, kind)
            n = len(state.kept[key])
            multiple = HEAD_DIM_MULTIPLE if kind in ("qk", "v") else CHANNEL_MULTIPLE
            floor = HEAD_DIM_MIN if kind in ("qk", "v") else (CHANNEL_MULTIPLE if kind == "emb" else 0)
            target = (n // multiple) * multiple
            if n % multiple and target >= floor and key in scores:
                drop = set(_lowest(state.kept[key], scores[key], n - target))
                state.kept[key] = [j for j in state.kept[key] if j not in drop]
                count += 1
    return count


def plan_from_kept(spec: ViTSpec, kept: dict, meta: dict | None = None) -> PruningPlan:
    base = PruningPlan.keep_all(spec)
    blocks = []
    for i in range(spec.depth):
        heads = tuple(sorted(kept.get(_key(i, "heads"), ())))
        blocks.append(BlockPlan(heads, tuple(sorted(kept.get(_key(i, "qk"), ()))) if heads else (),
                                tuple(sorted(kept.get(_key(i, "v"), ()))) if heads else (),
                                tuple(sorted(kept.get(_key(i, "mlp"), ())))))
    return PruningPlan(tuple(sorted(kept["emb"])), tuple(blocks), base.original_emb, base.original_blocks,
                       dict(meta or {})).validate()


# --- ReViT (NViT sec. 5.4, Table 6) -------------------------------------------------------------------
def revit_dims(spec: ViTSpec) -> list[dict]:
    """Per-block target dims: H = ε·EMB/100 (nearest even, >= 1), QK = ε·EMB/20 (nearest multiple of 8,
    >= 16), V = 64, MLP = ε·EMB·3 (multiple of 16), ε = 2 in the middle half of the blocks (4-9 of 12),
    else 1; never more than the model has."""
    emb, depth = spec.emb, spec.depth
    out = []
    for i, b in enumerate(spec.blocks):
        eps = 2 if depth // 4 <= i < depth - depth // 4 else 1
        heads = max(1, 2 * round(eps * emb / 100 / 2))
        qk = max(HEAD_DIM_MIN, HEAD_DIM_MULTIPLE * round(eps * emb / 20 / HEAD_DIM_MULTIPLE))
        mlp = CHANNEL_MULTIPLE * round(eps * emb * 3 / CHANNEL_MULTIPLE)
        out.append({"heads": min(heads, b.heads), "qk": min(qk, b.qk), "v": min(64, b.v), "mlp": min(mlp, b.mlp)})
    return out


def revit_plan(spec: ViTSpec, scores: dict, meta: dict | None = None) -> PruningPlan:
    """Keep, in every block, the ReViT target number of the highest-importance heads / QK / V / MLP indices."""
    kept = {"emb": list(range(spec.emb))}
    for i, target in enumerate(revit_dims(spec)):
        for kind in ("heads", "qk", "v", "mlp"):
            key = _key(i, kind)
            size = spec.blocks[i].heads if kind == "heads" else getattr(spec.blocks[i], kind)
            if key not in scores:
                kept[key] = list(range(size)) if spec.blocks[i].heads or kind == "mlp" else []
                continue
            order = sorted(range(size), key=lambda j: (-float(scores[key][j]), j))
            kept[key] = order[:target[kind]]
    return plan_from_kept(spec, kept, {**(meta or {}), "revit": revit_dims(spec)})
