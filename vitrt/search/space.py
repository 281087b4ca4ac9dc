"""Recipes the search moves through, as plain data, and the compile options each one stands for.

A :class:`Recipe` fixes the structure of an engine — a pruning latency fraction (NViT) or a DC-ViT MACs fraction, a
token-merge schedule (ToMe / DFE / LGTM), a low-rank energy, 2:4 sparsity, a precision — and :meth:`Recipe.options`
turns it, together with a fine-tuning budget of ``epochs`` per trainable stage (pruning's and low rank's
fine-tuning, DC-ViT's feature mimicking per compressed block, 2:4's sparse fine-tuning, QAT; knowledge distillation
of a merged fp32 model), into the flat options of ``vitrt compile``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

from vitrt.compiler.errors import OptionError

PRECISIONS = ("fp32", "int8", "fp16", "int4w")
DCVIT_FEW_SHOT = 100  # DC-ViT's few-shot images (the and the paper's setting)
DCVIT_SCORE_EPOCHS = 2  # brief fine-tuning before a candidate block is scored


@dataclass(frozen=True, order=True)
class Merge:
    """A constant ToMe schedule: ``r`` per block after ``skip`` dense blocks (None: DFE's depth // 6), merging in
    windows of ``window`` patches first (LGTM) when given."""

    r: int
    skip: int | None = None
    window: int | None = None

    def label(self) -> str:
        kind = "ToMe" if self.skip == 0 else "DFE"
        return f"{kind}{'+LGTM' + str(self.window) if self.window else ''} r={self.r}"


@dataclass(frozen=True, order=True)
class Recipe:
    prune: float | None = None  # latency fraction of the dense model (None: no pruning)
    merge: Merge | None = None
    lowrank: float | None = None  # singular-value energy kept per layer (None: no low rank)
    sparsity: bool = False  # 2:4
    precision: str = "fp32"
    dcvit: float | None = None  # DC-ViT: fraction of the dense MACs (an alternative to prune)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise OptionError(f"search precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.prune and self.dcvit:
            raise OptionError("a recipe prunes with NViT or compresses blocks with DC-ViT, not both")

    @property
    def key(self) -> str:
        """A stable identifier (file names, the resume state)."""
        parts = [f"p{self.prune:g}" if self.prune else "p1", self.merge.label().replace(" ", "").replace("=", "")
                 if self.merge else "m0", f"lr{self.lowrank:g}" if self.lowrank else "lr0",
                 "s24" if self.sparsity else "dense", self.precision]
        if self.dcvit:  # appended, so keys of recipes without DC-ViT (and the states that hold them) are unchanged
            parts.append(f"dc{self.dcvit:g}")
        return "-".join(parts)

    def label(self) -> str:
        parts = []
        if self.prune:
            parts.append(f"prune {self.prune:g}")
        if self.dcvit:
            parts.append(f"DC-ViT {self.dcvit:g} MACs")
        if self.merge:
            parts.append(self.merge.label())
        if self.lowrank:
            parts.append(f"low rank {self.lowrank:g}")
        if self.sparsity:
            parts.append("2:4")
        parts.append(self.precision)
        return " + ".join(parts)

    def without(self, axis: str) -> "Recipe | None":
        """The same recipe without one lossy extra (precision back to fp32, dense instead of 2:4, no low rank, no
        token merging)."""
        if axis == "precision" and self.precision != "fp32":
            return replace(self, precision="fp32")
        if axis == "sparsity" and self.sparsity:
            return replace(self, sparsity=False)
        if axis == "lowrank" and self.lowrank:
            return replace(self, lowrank=None)
        if axis == "merge" and self.merge:
            return replace(self, merge=None)
        return None

    def structural(self) -> "Recipe":
        """What changes the model's dims (pruning or DC-ViT, merging, low rank): enough for the latency table."""
        return replace(self, sparsity=False, precision="fp32")

    @property
    def lut_key(self) -> tuple[str, str]:
        return self.precision, "2:4" if self.sparsity else "dense"

    @property
    def distills(self) -> bool:
        """Knowledge distillation after merging: a merged recipe without QAT has no other training after the merge."""
        return self.merge is not None and self.precision != "int8"

    def trainable(self) -> list[str]:
        """The stages this recipe fine-tunes when given a budget."""
        out = ["prune"] if self.prune else []
        out += ["dcvit"] if self.dcvit else []
        out += ["distill"] if self.distills else []
        out += ["lowrank"] if self.lowrank else []
        out += ["sparsity"] if self.sparsity else []
        out += ["quant"] if self.precision == "int8" else []
        return out

    def options(self, *, epochs: int, data: str, lut, batch: int, backend: str, threads: int | None,
                calib_images: int = 128, importance: str = "magnitude") -> dict:
        """The flat ``vitrt compile`` options of this recipe with ``epochs`` of fine-tuning per trainable stage.

        Pruning and DC-ViT rank units by weight magnitude by default: NViT's Hessian importance re-scores 8 times on
        the way to the target with double backward passes (DC-ViT once per compressed block), minutes per recipe on
        2 cores, and the fine-tuning the finalists get recovers what the cheaper ranking loses (pass
        ``importance="hessian"`` for the papers')."""
        o = {"batch": batch, "backend": backend, "precision": self.precision, "threads": threads}
        if self.prune:
            o.update(prune=self.prune, lut=lut, data=data, importance=importance, finetune_epochs=epochs)
        if self.dcvit:
            # recoverability is scored on the search's own (fit) images with the dense model's labels; every
            # count is explicit, 0 included (DC-ViT's own default is 50 epochs a block)
            o.update(dcvit_macs=self.dcvit, data=data, dcvit_metric=data, few_shot=DCVIT_FEW_SHOT,
                     importance=importance, dcvit_epochs=epochs,
                     dcvit_score_epochs=min(epochs, DCVIT_SCORE_EPOCHS))
        if self.merge:
            o.update(tome=str(self.merge.r), dfe_skip=self.merge.skip, lgtm_window=self.merge.window)
            if self.distills and epochs:
                o.update(distill_epochs=epochs, distill_data=data)
        if self.lowrank:
            o.update(lowrank=self.lowrank, lowrank_align=8, lowrank_finetune_epochs=epochs,
                     lowrank_data=data if epochs else None)  # data only trains
        if self.sparsity:
            o.update(sparsity="2:4", sparse_finetune_epochs=epochs, sparse_data=data if epochs else None)
        if self.precision in ("int8", "fp8"):
            o.update(calib_data=data, calib_images=calib_images, qat_epochs=epochs)
        # None: the compile's default; a zero epoch count: that training is off (dfe_skip=0 is a real value: ToMe)
        return {k: v for k, v in o.items() if v is not None and not (k.endswith("epochs") and v == 0
                                                                        and not k.startswith("dcvit"))}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        merge = data.get("merge")
        return cls(data.get("prune"), Merge(**merge) if merge else None, data.get("lowrank"),
                   bool(data.get("sparsity")), data.get("precision", "fp32"), data.get("dcvit"))


@dataclass(frozen=True)
class Space:
    """The axes of a search; :meth:`recipes` is their product without combinations the compile refuses."""

    prune: tuple[float | None, ...]
    merge: tuple[Merge | None, ...]
    lowrank: tuple[float | None, ...]
    sparsity: tuple[bool, ...]
    precision: tuple[str, ...]
    dcvit: tuple[float | None, ...] = (None,)

    def recipes(self) -> list[Recipe]:
        out = []
        for p, dc, m, lr, s, prec in itertools.product(self.prune, self.dcvit, self.merge, self.lowrank,
                                                        self.sparsity, self.precision):
            if lr and (s or prec != "fp32"):  # factors are neither masked nor quantized nor typed (yet)
                continue
            if p and dc:  # DC-ViT compresses the unpruned model's uniform blocks
                continue
            out.append(Recipe(p, m, lr, s, prec, dc))
        return out

    def to_dict(self) -> dict:
        return {"prune": list(self.prune), "merge": [asdict(m) if m else None for m in self.merge],
                "lowrank": list(self.lowrank), "sparsity": list(self.sparsity), "precision": list(self.precision),
                "dcvit": list(self.dcvit)}


def merge_step(spec) -> int:
    """Tokens a merge schedule of the search merges per block: about 3 % of the patch tokens (2 on the digits
    reference's 64, 6 on a 224-pixel /16 model's 196)."""
    return max(1, round((spec.tokens - spec.prefix_tokens) * 0.03))


def lgtm_window(spec) -> int | None:
    """The LGTM window the search tries: half or a quarter of the patch grid's side, if it divides the grid."""
    return next((w for w in (spec.grid // 2, spec.grid // 4) if w >= 2 and spec.grid % w == 0), None)


def default_space(spec) -> Space:
    """Prune fractions from 0.3 up, DC-ViT at 0.85 and 0.7 of the MACs, ToMe / DFE / DFE+LGTM schedules whose r is a
    few percent of the tokens, low rank, 2:4, and every precision the backend runs; what the latency table shows
    to be slower and lossier is dropped before any accuracy is estimated (:mod:`vitrt.search.halving`)."""
    step, window = merge_step(spec), lgtm_window(spec)
    merges = [None, Merge(step), Merge(2 * step), Merge(3 * step), Merge(2 * step, skip=0)]
    if window:
        merges.append(Merge(2 * step, window=window))
    from vitrt.transforms.prune.dcvit_structure import compressible

    dcvit = (None, 0.85, 0.7) if compressible(spec) else (None,)
    return Space(prune=(None, 0.7, 0.5, 0.4, 0.3), merge=tuple(merges), lowrank=(None, 0.9),
                 sparsity=(False, True), precision=PRECISIONS, dcvit=dcvit)
