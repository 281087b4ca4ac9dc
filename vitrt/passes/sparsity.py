"""2:4 sparsity: replace every eligible weight by its 2:4-masked value (masks computed on the twin; graph shape unchanged).

    MatMul(x, B[K, N])            ──►  MatMul(x, B ⊙ M)        M: in every 4 consecutive rows k of a column n,
    Conv(images, W[M, C, R, S])   ──►  Conv(images, W ⊙ M)        ≤ 2 kept (K = axis 0, TensorRT's check)
                                                                 Conv: ≤ 2 of every 4 input channels C
                                                                 at each output channel and kernel position

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

The data-driven part (channel permutation, masks, sparse fine-tuning) runs on the twin in
:func:`vitrt.calib.sparsify.prepare_sparsity` (which leaves ``twin.sparsity_masks`` for QAT); this pass
carries its plain-data result (``SparsityResult``: masks, final parameter values) into the graph, and
:meth:`SparsityPass.apply_to_twin` loads the same into the twin it is given.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, SHAPES_INFERRED, TOPOSORTED, Pass, PassContext, PassResult
from vitrt.kernels import sparse24

PATTERNS = ("2:4",)
DEFAULT_MIN_WEIGHTS = 4096


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


def canonical_layers(view_or_twin) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, ONNX weight shape) of every weight layer of a GraphView or a CanonicalViT, in graph order."""
    if isinstance(view_or_twin, GraphView):
        view = view_or_twin
        out = [("patch_embed", "conv", tuple(view.node("patch_embed").inputs[1].shape))]
        out += [(ref.name, "matmul", tuple(ref.weight.shape)) for ref in view.weight_linears()]
        return out
    twin = view_or_twin
    out = [("patch_embed", "conv", tuple(twin.patch_embed.weight.shape))]
    for name, module in twin.named_modules():
        if name != "patch_embed" and hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 2:
            out.append((name, "matmul", (module.weight.shape[1], module.weight.shape[0])))  # B = Wᵀ
    return out


def onnx_mask(decision: LayerDecision, twin_mask) -> np.ndarray:
    """A twin-layout mask (Linear [N, K], Conv [M, C, R, S]) in the ONNX initializer's layout."""
    mask = np.asarray(twin_mask.cpu().numpy() if hasattr(twin_mask, "cpu") else twin_mask, dtype=bool)
    return mask.T if decision.kind == "matmul" else mask


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


# --- the result the stage hands to the pass ---------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # holds tensors: identity, not value, equality
class SparsityResult:
    """Plain data: decisions, masks (twin layout, name -> bool tensor), the final twin state and its ONNX values.

    ``masks`` is the contract for later stages (QAT keeps them fixed): keys are canonical layer names
    (``blocks.3.mlp.fc2``), values bool tensors shaped like the twin module's ``weight``.
    """

    pattern: str
    decisions: tuple[LayerDecision, ...]
    masks: dict
    state: dict  # twin state_dict after permutation / masking / fine-tuning
    initializers: dict  # ONNX initializer name -> np.ndarray of the same twin (parameters only)
    retained: dict = field(default_factory=dict)  # name -> {"without_permutation": r, "with_permutation": r}
    permutation: dict | None = None
    finetune: dict | None = None
    export: bool = False

    def report(self) -> dict:
        layers = []
        for d in self.decisions:
            entry = {"name": d.name, "kind": d.kind, "shape": list(d.shape), "axis": d.axis, "eligible": d.eligible}
            if d.reason:
                entry["reason"] = d.reason
            if d.name in self.retained:
                entry["retained_magnitude"] = self.retained[d.name]
            entry["storage"] = layer_storage(d)
            layers.append(entry)
        out = {"pattern": self.pattern, "eligible": sum(d.eligible for d in self.decisions),
               "skipped": sum(not d.eligible for d in self.decisions), "layers": layers,
               "storage": model_storage(list(self.decisions)), "masks_api": "twin.sparsity_masks (vitrt.calib.sparsify)"}
        if self.permutation is not None:
            out["permutation"] = self.permutation
        if self.finetune is not None:
            out["finetune"] = self.finetune
        return out


class SparsityPass(Pass):
    """Writes the stage's final weights into the graph with the 2:4 masks applied (see module doc)."""

    name = "sparsity_2to4"
    requires = frozenset({CANONICAL})
    ensures = frozenset()
    preserves = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})
    changes_function = True

    def __init__(self, result: SparsityResult):
        self.result = result

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        constants = {t.name: t for t in view.graph.tensors().values() if isinstance(t, gs.Constant)}
        masks = {d.initializer: onnx_mask(d, self.result.masks[d.name]) for d in self.result.decisions if d.eligible}
        updated = 0
        for name, value in self.result.initializers.items():
            tensor = constants.get(name)
            if tensor is None:
                raise VitrtError(f"sparsity: the graph has no initializer '{name}' (a pass before it changed the "
                                 "structure the sparsity stage saw)")
            if tuple(tensor.shape) != tuple(value.shape):
                raise VitrtError(f"sparsity: initializer '{name}' has shape {tuple(tensor.shape)} in the graph but "
                                 f"{tuple(value.shape)} in the sparsity stage's twin")
            new = np.where(masks[name], value, 0) if name in masks else value  # +0, never -0
            tensor.values = np.ascontiguousarray(new.astype(np.float32))
            updated += 1
        for d in self.result.decisions:
            if d.eligible and not sparse24.is_2to4(constants[d.initializer].values, d.axis):
                raise VitrtError(f"sparsity: '{d.initializer}' is not 2:4 along axis {d.axis} after masking")
        eligible = [d for d in self.result.decisions if d.eligible]
        if eligible:
            ctx.build["sparse_weights"] = True
        ctx.manifest["sparsity"] = self.result.report()
        if getattr(ctx.options, "backend", None) == "trt":
            ctx.files["sparse_tactics.json"] = _tactics_writer(ctx, [d.name for d in eligible])
        finetune = self.result.finetune
        if finetune:
            # The quantization stage reads these as its W_j (vitrt.calib.distill.feature_weight_factors).
            losses = {key: finetune[key] for key in ("feature_names", "per_feature_losses", "feature_weights")}
            ctx.files["sparse_feature_losses.json"] = lambda path: path.write_text(json.dumps(losses, indent=2))
        if self.result.export:
            values = {d.initializer: constants[d.initializer].values for d in eligible}
            ctx.files["sparse_weights.npz"] = lambda path: write_sparse_weights(path, eligible, values)
        stats = {"eligible": len(eligible), "skipped": len(self.result.decisions) - len(eligible),
                 "initializers_written": updated}
        return PassResult(view, bool(eligible) or updated > 0, stats)

    def apply_to_twin(self, twin, ctx: PassContext):
        from vitrt.calib.sparsify import apply_masks

        twin.load_state_dict(self.result.state)  # a no-op when the stage already worked on this twin
        apply_masks(twin, self.result.masks)
        twin.sparsity_masks = self.result.masks
        return twin


# --- export and TensorRT report ----------------------------------------------------------------------------
def write_sparse_weights(path, decisions: list[LayerDecision], values: dict, fmt: str = "fp16") -> None:
    """``path`` (.npz): per eligible layer ``<layer>.values`` and ``<layer>.meta`` (FP16, CUTLASS-ordered
    metadata where the tile fits, else row-major), plus ``sparse_weights.json`` beside it as the index."""
    from pathlib import Path

    path = Path(path)
    arrays, index = {}, {"format": fmt, "operand": "A[M, K] = MatMul Bᵀ (Conv: W as [M, R·S·C]); 2:4 along K",
                         "layout_doc": "vitrt.kernels.sparse24", "layers": {}}
    for d in decisions:
        weight = values[d.initializer]
        a = sparse24.conv_operand(weight) if d.kind == "conv" else sparse24.matmul_operand(weight)
        a = a.astype(np.float16)
        layout = "cutlass" if sparse24.padded_shape(a.shape, fmt, "cutlass") == a.shape else "rowmajor"
        packed = sparse24.compress(a, fmt, layout)
        arrays[f"{d.name}.values"], arrays[f"{d.name}.meta"] = packed.values, packed.meta
        index["layers"][d.name] = {"initializer": d.initializer, "kind": d.kind, "onnx_shape": list(d.shape),
                                   "operand_shape": list(packed.shape), "padded_shape": list(packed.padded),
                                   "layout": layout, "values": f"{d.name}.values", "meta": f"{d.name}.meta",
                                   "values_dtype": str(packed.values.dtype), "meta_dtype": str(packed.meta.dtype),
                                   "bytes": packed.nbytes, "dense_bytes": packed.dense_nbytes()}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    (path.parent / "sparse_weights.json").write_text(json.dumps(index, indent=2))


def _tactics_writer(ctx: PassContext, eligible: list[str]):
    """After the backend build: which eligible layers TensorRT ran with sparse tactics (inspector JSON).

    Runs as a ctx.files writer, i.e. after ``backend.build`` wrote ``engine_inspector.json`` into the staging
    directory and before ``compile()`` merges ``ctx.manifest``; without an inspector (ort) it records that.
    """

    def write(path):
        from vitrt.compiler.backends.trt import sparse_layers

        inspector = path.parent / "engine_inspector.json"
        if inspector.is_file():
            sparse = sparse_layers(json.loads(inspector.read_text()))
            report = {"backend": "trt", "sparse_tactic_layers": sparse,
                      "eligible_with_sparse_tactic": [n for n in eligible if any(n in s for s in sparse)]}
        else:
            report = {"backend": "no TensorRT engine inspector (the backend is not trt)", "sparse_tactic_layers": None}
        ctx.manifest.setdefault("sparsity", {})["tensorrt"] = report
        path.write_text(json.dumps(report, indent=2))

    return write

