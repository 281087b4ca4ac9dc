"""The low-rank plan: per linear layer its dense B[K, N], the rank it is factored to (0: left dense, with the
reason) and the fraction of the squared singular values that rank keeps — plain, frozen, JSON in and out — and,
beside the JSON, the factors the planner computed (and, after fine-tuning, the other fine-tuned parameters).

Factors are stored in the twin's layout (torch ``[out, in]``) under the factored module's parameter names:
``<layer>.u`` [rank, K] (the first MatMul), ``<layer>.weight`` [N, rank] and ``<layer>.bias`` [N] (the second, which
keeps the layer's canonical name). ``weights`` holds every other twin parameter after fine-tuning (None without).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.jsonfile import read_json

PLAN_FORMAT = 1


class LowRankPlanError(VitrtError):
    """A malformed low-rank plan, or one that does not fit the model (one line, exit code 2)."""


@dataclass(frozen=True)
class LayerRank:
    name: str  # canonical layer, e.g. blocks.3.mlp.fc1
    k: int  # input features (rows of B[K, N])
    n: int  # output features
    rank: int  # 0: the layer stays dense
    energy: float  # fraction of the squared singular values the rank keeps (1.0 when dense)
    reason: str = ""  # why a layer stays dense

    @property
    def factored(self) -> bool:
        return self.rank > 0

    @property
    def params_before(self) -> int:
        return self.k * self.n

    @property
    def params_after(self) -> int:
        return self.rank * (self.k + self.n) if self.factored else self.k * self.n


@dataclass(frozen=True, eq=False)  # holds arrays: identity, not value, equality
class LowRankPlan:
    layers: tuple[LayerRank, ...]
    align: int
    factors: Mapping[str, np.ndarray] = field(repr=False)  # <layer>.u / <layer>.weight / <layer>.bias per factored layer
    weights: Mapping[str, np.ndarray] | None = field(default=None, repr=False)  # fine-tuned twin parameters
    meta: Mapping[str, Any] = field(default_factory=dict)  # how it was made (rule, fine-tuning record)

    def __post_init__(self):
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise LowRankPlanError("low-rank plan lists a layer twice")
        for layer in self.layers:
            if layer.rank < 0 or (layer.factored and layer.rank > min(layer.k, layer.n)):
                raise LowRankPlanError(f"low-rank plan: {layer.name} rank {layer.rank} is outside 0..{min(layer.k, layer.n)}")
            if not layer.factored:
                continue
            for key, shape in ((f"{layer.name}.u", (layer.rank, layer.k)), (f"{layer.name}.weight", (layer.n, layer.rank)),
                               (f"{layer.name}.bias", (layer.n,))):
                value = self.factors.get(key)
                if value is None or tuple(np.shape(value)) != shape:
                    got = None if value is None else list(np.shape(value))
                    raise LowRankPlanError(f"low-rank plan: factor '{key}' should be {list(shape)}, found {got}")

    # --- queries -----------------------------------------------------------------------------------
    @property
    def ranks(self) -> dict[str, int]:
        """Factored layers -> rank (what the spec records)."""
        return {layer.name: layer.rank for layer in self.layers if layer.factored}

    def factored(self) -> list[LayerRank]:
        return [layer for layer in self.layers if layer.factored]

    def apply_to_spec(self, spec):
        """The spec with the factored layers recorded in ``extra['lowrank']`` (graph view and cost model read it)."""
        from vitrt.compiler.spec import LOWRANK_KEY

        self.check_matches(spec)
        extra = dict(spec.extra)
        extra[LOWRANK_KEY] = {"ranks": self.ranks, "align": self.align}
        return spec.replace(extra=extra)

    def check_matches(self, spec) -> None:
        """Refuse (one line) a plan made for other dims: every planned layer must exist with its K, N."""
        from vitrt.compiler.errors import SpecError

        if spec.ranks:
            raise LowRankPlanError("the model's layers are already factored: a low-rank plan applies to dense layers")
        for layer in self.layers:
            try:
                _, k, n = spec.linear_dims(layer.name)
            except SpecError as exc:
                raise LowRankPlanError(f"low-rank plan names {exc}") from None
            if (k, n) != (layer.k, layer.n):
                raise LowRankPlanError(f"low-rank plan: {layer.name} was planned as [{layer.k}, {layer.n}], the model's "
                                       f"is [{k}, {n}] (plan it again on this model)")

    def notes(self) -> list[str]:
        if self.layers and not self.factored():
            return [f"low rank: no layer factored (every chosen rank would save nothing; first: {self.layers[0].reason})"]
        return []

    def summary(self) -> dict:
        before = sum(layer.params_before for layer in self.layers)
        after = sum(layer.params_after for layer in self.layers)
        return {"factored": len(self.factored()), "layers": len(self.layers), "params_before": before,
                "params_after": after, "ranks": self.ranks}

    def with_meta(self, meta: Mapping[str, Any]) -> "LowRankPlan":
        return replace(self, meta={**self.meta, **meta})

    # --- JSON + arrays -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "align": self.align,
                "layers": [{"name": layer.name, "k": layer.k, "n": layer.n, "rank": layer.rank,
                            "energy": round(layer.energy, 6), "reason": layer.reason} for layer in self.layers],
                "meta": dict(self.meta)}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"factor/{k}": np.asarray(v) for k, v in self.factors.items()}
        out.update({f"weight/{k}": np.asarray(v) for k, v in (self.weights or {}).items()})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "LowRankPlan":
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise LowRankPlanError(f"low-rank plan format {data.get('format') if isinstance(data, Mapping) else None!r} "
                                   f"is not supported (expected {PLAN_FORMAT})")
        try:
            layers = tuple(LayerRank(str(d["name"]), int(d["k"]), int(d["n"]), int(d["rank"]), float(d["energy"]),
                                     str(d.get("reason", ""))) for d in data["layers"])
            align = int(data["align"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LowRankPlanError(f"malformed low-rank plan: missing or invalid field {exc}") from None
        factors = {k[len("factor/"):]: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k.startswith("factor/")}
        weights = {k[len("weight/"):]: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k.startswith("weight/")}
        return cls(layers, align, factors, weights or None, dict(data.get("meta") or {}))

    def save(self, path: str | Path) -> None:
        """``path`` (JSON) and ``path`` with suffix .npz (the factors and fine-tuned weights)."""
        path = Path(path)
        with open(path.with_suffix(".npz"), "wb") as f:
            np.savez(f, **self.arrays())
        path.write_text(json.dumps({**self.to_dict(), "arrays_file": path.with_suffix(".npz").name}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LowRankPlan":
        import zipfile

        path = Path(path)
        data = read_json(path, "low-rank plan", "write one with vitrt compile --lowrank ... (OUT/lowrank_plan.json)",
                         error=LowRankPlanError)
        name = data.get("arrays_file") if isinstance(data, dict) else None
        if not isinstance(name, str) or Path(name).name != name:
            raise LowRankPlanError(f"low-rank plan '{path}': 'arrays_file' must name the .npz of factors beside it")
        try:
            with np.load(path.parent / name, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise LowRankPlanError(f"cannot read the low-rank factors '{path.parent / name}': {exc}") from None
        return cls.from_dict(data, arrays)
