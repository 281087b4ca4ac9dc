"""The 2:4 sparsity plan: which weight layers are pruned along which axis (and why the others are not), their
masks, and — when the planner permuted channels or fine-tuned — the twin parameters the masks apply to.

Which axis
----------
TensorRT (and Polygraphy's ``polygraphy inspect sparsity`` / ``surgeon prune``) checks a MatMul's constant B
along axis 0 (K), a Gemm's B along axis 1 if ``transB`` else axis 0, and a Conv weight ``[M, C, R, S]``
along C (axis 1) separately at every kernel position (r, s) — *not* along the flattened C·R·S: the
implicit GEMM of an NHWC convolution reduces over (r, s, c) with c fastest, so groups of 4 consecutive c at
one (r, s) are groups of 4 consecutive K of the GEMM. vitrt prunes exactly that axis, so an RGB patch
embedding (C = 3) is not eligible; a 4-channel input's is.

Eligibility (per layer, with the reason for every skip): the pruned axis must be a multiple of 4; the
layer must hold at least ``min_weights`` weights (narrow layers stay dense in TensorRT and cost accuracy for
nothing — the classifier head of a small model is the usual case); the name must match ``--sparse-include``
(default: all) and not ``--sparse-exclude`` (comma-separated fnmatch patterns over canonical names; a
pattern that matches no layer is an error).

``masks`` is the contract with later stages (QAT keeps them fixed): canonical layer name -> bool array shaped
like the twin module's weight (Linear [N, K], Conv [M, C, R, S]). A plan is checked when it is built or loaded
(:meth:`SparsityPlan.from_dict`): one mask per eligible layer, bool, in that shape, 2:4 along the axis TensorRT
checks; ``to_dict`` is its JSON part, ``arrays`` the masks and weights that travel beside it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.kernels import sparse24
from vitrt.transforms.sparsity.config import DEFAULT_MIN_WEIGHTS

PLAN_FORMAT = 1


@dataclass(frozen=True)
class LayerDecision:
    """One weight layer and whether it is pruned. ``shape`` is the ONNX initializer's; ``axis`` the pruned axis."""

    name: str  # canonical node name, e.g. blocks.3.mlp.fc2
    kind: str  # matmul | conv | gemm
    shape: tuple[int, ...]
    axis: int
    eligible: bool
    reason: str = ""  # why it is skipped (empty when eligible)

    @property
    def initializer(self) -> str:
        return f"{self.name}.weight"

    @property
    def twin_shape(self) -> tuple[int, ...]:
        """The twin module's weight shape (a MatMul's B[K, N] is the Linear weight [N, K] transposed)."""
        return self.shape[::-1] if self.kind == "matmul" else self.shape

    def operand_shape(self) -> tuple[int, int]:
        """[M, K] of the sparse GEMM operand (sparse24 convention)."""
        if self.kind == "conv":
            m, c, r, s = self.shape
            return m, c * r * s
        k_axis = self.shape[self.axis]
        return int(np.prod(self.shape)) // k_axis, k_axis


def prune_axis(kind: str, trans_b: bool = False) -> int:
    """The axis of a weight that TensorRT checks for 2:4: MatMul B[K, N] → 0; Gemm B → 1 if transB else 0;
    Conv W[M, C, R, S] → 1 (input channels)."""
    if kind == "matmul":
        return 0
    if kind == "gemm":
        return 1 if trans_b else 0
    if kind == "conv":
        return 1
    raise VitrtError(f"unknown layer kind '{kind}' for 2:4 sparsity (expected matmul, gemm or conv)")


def _patterns(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def decide_layers(layers: list[tuple], include: str | None = None, exclude: str | None = None,
                  min_weights: int = DEFAULT_MIN_WEIGHTS) -> list[LayerDecision]:
    """Eligibility of ``layers`` — (name, kind, ONNX weight shape[, transB for a Gemm]); pure. Unmatched
    patterns raise VitrtError."""
    names = [layer[0] for layer in layers]
    includes, excludes = _patterns(include), _patterns(exclude)
    for flag, patterns in (("--sparse-include", includes), ("--sparse-exclude", excludes)):
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                raise VitrtError(f"{flag} pattern '{pattern}' matches no layer; layers are named like "
                                 f"{names[min(1, len(names) - 1)]} (canonical names, fnmatch patterns)")
    decisions = []
    for name, kind, shape, *trans_b in layers:
        axis = prune_axis(kind, bool(trans_b and trans_b[0]))
        length = shape[axis]
        size = int(np.prod(shape))
        reason = ""
        if includes and not any(fnmatch.fnmatchcase(name, p) for p in includes):
            reason = f"not matched by --sparse-include '{','.join(includes)}'"
        elif any(fnmatch.fnmatchcase(name, p) for p in excludes):
            matched = next(p for p in excludes if fnmatch.fnmatchcase(name, p))
            reason = f"excluded by --sparse-exclude '{matched}'"
        elif length % 4:
            what = "input channels C" if kind == "conv" else "K"
            reason = f"{what} = {length} is not a multiple of 4"
        elif size < min_weights:
            reason = f"below the size threshold: {size} weights < {min_weights}"
        decisions.append(LayerDecision(name, kind, tuple(int(d) for d in shape), axis, not reason, reason))
    return decisions


def canonical_layers(twin) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, ONNX weight shape) of every weight layer of a twin, in graph order."""
    out = [("patch_embed", "conv", tuple(twin.patch_embed.weight.shape))]
    for name, module in twin.named_modules():
        if name != "patch_embed" and hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 2:
            out.append((name, "matmul", (module.weight.shape[1], module.weight.shape[0])))  # B = Wᵀ
    return out


def onnx_mask(decision: LayerDecision, twin_mask: np.ndarray) -> np.ndarray:
    """A twin-layout mask (Linear [N, K], Conv [M, C, R, S]) in the ONNX initializer's layout."""
    mask = np.asarray(twin_mask, dtype=bool)
    return mask.T if decision.kind == "matmul" else mask


def torch_masks(masks: Mapping[str, np.ndarray]) -> dict:
    """Numpy bool masks as torch bool tensors, by layer name (the trainer's mask hook takes these)."""
    import torch

    return {name: torch.from_numpy(np.asarray(mask, dtype=bool)) for name, mask in masks.items()}


# --- storage accounting ---------------------------------------------------------------------------------
def layer_storage(decision: LayerDecision) -> dict:
    """Dense and compressed bytes of one layer in FP16 and INT8 (compressed only if eligible)."""
    m, k = decision.operand_shape()
    out = {}
    for fmt in ("fp16", "int8"):
        dense, sparse = sparse24.storage_bits(m, k, fmt)
        after = sparse if decision.eligible else dense
        out[fmt] = {"dense_bytes": dense // 8, "sparse_bytes": after // 8, "saved": round(1 - after / dense, 6)}
    return out


def model_storage(decisions: list[LayerDecision]) -> dict:
    """Totals over all weight layers and over the eligible ones, per format."""
    totals = {}
    for fmt in ("fp16", "int8"):
        per = [layer_storage(d)[fmt] for d in decisions]
        eligible = [s for s, d in zip(per, decisions) if d.eligible]
        dense = sum(s["dense_bytes"] for s in per)
        after = sum(s["sparse_bytes"] for s in per)
        e_dense = sum(s["dense_bytes"] for s in eligible)
        e_after = sum(s["sparse_bytes"] for s in eligible)
        totals[fmt] = {"dense_bytes": dense, "sparse_bytes": after, "saved": round(1 - after / dense, 6) if dense else 0.0,
                       "eligible_dense_bytes": e_dense, "eligible_sparse_bytes": e_after,
                       "eligible_saved": round(1 - e_after / e_dense, 6) if e_dense else 0.0}
    return totals


@dataclass(frozen=True, eq=False)  # holds arrays: identity, not value, equality
class SparsityPlan:
    pattern: str
    decisions: tuple[LayerDecision, ...]
    masks: Mapping[str, np.ndarray]  # canonical layer name -> bool mask in the twin's weight layout
    weights: Mapping[str, np.ndarray] | None = None  # twin parameters after permutation / fine-tuning
    retained: Mapping[str, dict] = field(default_factory=dict)  # name -> retained magnitude without / with permutation
    permutation: Mapping[str, Any] | None = None
    finetune: Mapping[str, Any] | None = None
    export: bool = False

    def __post_init__(self):
        eligible = {d.name for d in self.decisions if d.eligible}
        if set(self.masks) != eligible:
            raise VitrtError(f"sparsity plan: masks for {sorted(set(self.masks) ^ eligible)[:3]} do not match the "
                             "eligible layers")
        for d in self.eligible:
            mask = np.asarray(self.masks[d.name])
            if mask.dtype != bool or mask.shape != d.twin_shape:
                raise VitrtError(f"sparsity plan: the mask of '{d.name}' is {mask.dtype} {list(mask.shape)}, expected "
                                 f"bool {list(d.twin_shape)} (the layer's weight in the twin's layout)")
            if not sparse24.is_2to4(onnx_mask(d, mask).astype(np.float32), d.axis):
                raise VitrtError(f"sparsity plan: the mask of '{d.name}' is not 2:4 along axis {d.axis} of the ONNX "
                                 "weight (the axis TensorRT checks)")

    @property
    def eligible(self) -> list[LayerDecision]:
        return [d for d in self.decisions if d.eligible]

    def torch_masks(self) -> dict:
        """The masks as torch bool tensors (for the trainer's mask hook)."""
        return torch_masks(self.masks)

    def notes(self) -> list[str]:
        """The layers left dense and why (said in one line and recorded in the manifest)."""
        skipped = [d for d in self.decisions if not d.eligible]
        if not skipped:
            return []
        reasons: dict[str, list[str]] = {}
        for d in skipped:
            reasons.setdefault(d.reason.split(":")[0], []).append(d.name)
        summary = "; ".join(f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({reason})"
                            for reason, names in reasons.items())
        return [f"2:4: {len(skipped)} of {len(self.decisions)} weight layers stay dense: {summary}"]

    def to_dict(self) -> dict:
        """JSON part (decisions and reports); masks and weights are the arrays of :meth:`arrays`."""
        return {"format": PLAN_FORMAT, "pattern": self.pattern, "export": self.export,
                "decisions": [{"name": d.name, "kind": d.kind, "shape": list(d.shape), "axis": d.axis,
                               "eligible": d.eligible, "reason": d.reason} for d in self.decisions],
                "retained": dict(self.retained), "permutation": self.permutation, "finetune": self.finetune}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"mask/{k}": np.asarray(v, dtype=bool) for k, v in self.masks.items()}
        out.update({f"weight/{k}": np.asarray(v) for k, v in (self.weights or {}).items()})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "SparsityPlan":
        if data.get("format") != PLAN_FORMAT:
            raise VitrtError(f"sparsity plan format {data.get('format')!r} is not supported (expected {PLAN_FORMAT})")
        try:
            pattern = data["pattern"]
            decisions = tuple(LayerDecision(d["name"], d["kind"], tuple(d["shape"]), d["axis"], d["eligible"],
                                            d.get("reason", "")) for d in data["decisions"])
        except (KeyError, TypeError) as exc:
            raise VitrtError(f"malformed sparsity plan: missing or invalid field {exc}") from None
        masks = {k[len("mask/"):]: v for k, v in arrays.items() if k.startswith("mask/")}
        weights = {k[len("weight/"):]: v for k, v in arrays.items() if k.startswith("weight/")} or None
        return cls(pattern, decisions, masks, weights, data.get("retained") or {}, data.get("permutation"),
                   data.get("finetune"), bool(data.get("export")))

    def report(self) -> dict:
        """The manifest's ``sparsity`` section."""
        layers = []
        for d in self.decisions:
            entry = {"name": d.name, "kind": d.kind, "shape": list(d.shape), "axis": d.axis, "eligible": d.eligible}
            if d.reason:
                entry["reason"] = d.reason
            if d.name in self.retained:
                entry["retained_magnitude"] = self.retained[d.name]
            entry["storage"] = layer_storage(d)
            layers.append(entry)
        out = {"pattern": self.pattern, "eligible": len(self.eligible),
               "skipped": len(self.decisions) - len(self.eligible), "layers": layers,
               "storage": model_storage(list(self.decisions)), "masks_api": "the sparsity plan's masks "
               "(vitrt.transforms.sparsity.plan.SparsityPlan.masks)"}
        if self.permutation is not None:
            out["permutation"] = dict(self.permutation)
        if self.finetune is not None:
            out["finetune"] = dict(self.finetune)
        return out
