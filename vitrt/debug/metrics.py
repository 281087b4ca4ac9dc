"""Per-point error statistics, accumulated batch by batch, and what they say: the first point over its tolerance and
the block that adds the most error.

For every point (candidate ``a`` against reference ``b``, over all images):

    max_abs   max |a - b|                 rel      ‖a - b‖₂ / ‖b‖₂ (relative L2 error of the whole tensor)
    mean_abs  mean |a - b|                cosine   mean over images of cos(a_img, b_img)
    ref_max   max |b|                     at the head also: top-1 agreement, and top-1 of both with labels

**Tolerance.** Verification allows the logits an absolute error ``tol`` per dtype (fp32 1e-4, fp16 5e-2, int8 / fp8
0.25 — the passes' own figures, :func:`dtype_tolerance`): the logits point is held to exactly that. Measured against
the logits' magnitude it is a relative error ``tol / max|logits|``, and every other point is allowed that relative
L2 error. (Not its max |Δ|: where ONNX Runtime and the fake quantizer round a value within an ulp of a tie to
neighbouring integers, one activation moves by a quantization step, and that step travels through the following
Q/DQs as a few steps at single elements — harmless, within the logits tolerance, and invisible in the L2 error; a
wrong weight, scale or placement moves the whole tensor.) A point over its allowance *exceeds*; the first one in
computation order is where the graph departs from its reference.

**Largest contributor.** The residual stream's relative error before and after each block (``embed`` /
``blocks.{i-1}.output`` -> ``blocks.{i}.output``); the block whose output error grows the most is named, with its
internal point of largest relative error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.debug.points import Point


def dtype_tolerance(precision: str) -> float:
    """Verification's logits tolerance for a graph of ``precision`` (the passes' own figures)."""
    from vitrt.compiler.pass_manager import FP32_TOLERANCE
    from vitrt.transforms.precision.plan import TOLERANCES
    from vitrt.transforms.quant.graph_pass import QDQ_TOLERANCE

    return {"fp32": FP32_TOLERANCE, **TOLERANCES, **QDQ_TOLERANCE}.get(precision, FP32_TOLERANCE)


@dataclass
class PointStats:
    point: Point
    shape: tuple = ()
    max_abs: float = 0.0
    sum_abs: float = 0.0
    count: int = 0
    sum_sq_diff: float = 0.0
    sum_sq_ref: float = 0.0
    ref_max: float = 0.0
    cos_sum: float = 0.0
    images: int = 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = a - b
        self.shape = tuple(b.shape[1:])
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        self.sum_abs += float(np.sum(np.abs(diff)))
        self.count += diff.size
        self.sum_sq_diff += float(np.sum(diff * diff))
        self.sum_sq_ref += float(np.sum(b * b))
        self.ref_max = max(self.ref_max, float(np.max(np.abs(b))) if b.size else 0.0)
        fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
        norms = np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1)
        cos = np.where(norms > 0, np.sum(fa * fb, axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
        self.cos_sum += float(np.sum(cos))
        self.images += len(a)

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.count if self.count else 0.0

    @property
    def rel(self) -> float:
        return float(np.sqrt(self.sum_sq_diff / self.sum_sq_ref)) if self.sum_sq_ref else float(self.sum_sq_diff > 0)

    @property
    def cosine(self) -> float:
        return self.cos_sum / self.images if self.images else 1.0


@dataclass
class HeadStats:
    images: int = 0
    agree: int = 0
    correct_a: int = 0
    correct_b: int = 0
    labelled: bool = False

    def update(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None) -> None:
        pa, pb = a.argmax(axis=1), b.argmax(axis=1)
        self.images += len(a)
        self.agree += int(np.sum(pa == pb))
        if labels is not None:
            self.labelled = True
            self.correct_a += int(np.sum(pa == labels))
            self.correct_b += int(np.sum(pb == labels))

    def to_dict(self) -> dict:
        out = {"images": self.images, "top1_agreement": round(self.agree / self.images, 5) if self.images else None}
        if self.labelled:
            out.update(top1_candidate=round(self.correct_a / self.images, 5),
                       top1_reference=round(self.correct_b / self.images, 5))
        return out


@dataclass
class Comparison:
    """The statistics of every point two probes share, in computation order."""

    stats: list[PointStats]
    head: HeadStats
    tolerance: float  # the logits tolerance (per dtype) the points' tolerances derive from
    missing: dict[str, str] = field(default_factory=dict)  # point -> why it was not compared

    @property
    def logits(self) -> PointStats | None:
        return next((s for s in self.stats if s.point.name == "logits"), None)

    def point_tolerance(self, s: PointStats) -> float:
        """The logits' absolute tolerance; any other point's allowed relative L2 error."""
        logits = self.logits
        if s.point.name == "logits" or logits is None or logits.ref_max == 0:
            return self.tolerance
        return self.tolerance / logits.ref_max

    def exceeds(self, s: PointStats) -> bool:
        logits = self.logits
        if s.point.name == "logits" or logits is None or logits.ref_max == 0:
            return s.max_abs > self.tolerance
        return s.rel > self.point_tolerance(s)

    def first_exceeding(self) -> PointStats | None:
        return next((s for s in self.stats if self.exceeds(s)), None)

    def block_growth(self) -> list[dict]:
        """Per block: the stream's relative error entering and leaving it, and its worst internal point."""
        by_name = {s.point.name: s for s in self.stats}
        rows, previous = [], by_name.get("embed")
        blocks = sorted({s.point.block for s in self.stats if s.point.block is not None})
        for i in blocks:
            out = by_name.get(f"blocks.{i}.output")
            if out is None:
                continue
            inside = [s for s in self.stats if s.point.block == i and s is not out]
            worst = max(inside, key=lambda s: s.rel, default=None)
            rel_in = previous.rel if previous is not None else 0.0
            rows.append({"block": i, "rel_in": rel_in, "rel_out": out.rel, "growth": out.rel - rel_in,
                         "max_abs_out": out.max_abs, "cosine_out": out.cosine, "exceeds": self.exceeds(out),
                         "worst_point": worst.point.name if worst else None,
                         "worst_rel": worst.rel if worst else None})
            previous = out
        return rows

    def stem_growth(self) -> dict | None:
        """The error the stream already has entering block 0 (input quantization, patch embedding), as a row like
        :meth:`block_growth`'s with ``block`` "stem"; None when the stream was not compared there."""
        names = [s.point.name for s in self.stats]
        if "embed" not in names:
            return None
        stem = self.stats[: names.index("embed") + 1]  # computation order: the points before block 0
        embed, worst = stem[-1], max(stem, key=lambda s: s.rel)
        return {"block": "stem", "rel_in": 0.0, "rel_out": embed.rel, "growth": embed.rel,
                "max_abs_out": embed.max_abs, "cosine_out": embed.cosine, "exceeds": self.exceeds(embed),
                "worst_point": worst.point.name, "worst_rel": worst.rel}

    def largest_contributor(self) -> dict | None:
        """The block (or the stem) that adds the most relative error to the stream."""
        rows = self.block_growth()
        stem = self.stem_growth()
        candidates = rows + ([stem] if stem is not None and rows else [])
        return max(candidates, key=lambda r: r["growth"]) if candidates else None

    def rows(self) -> list[dict]:
        return [{"point": s.point.name, "kind": s.point.kind, "block": s.point.block, "shape": list(s.shape),
                 "max_abs": s.max_abs, "mean_abs": s.mean_abs, "rel": s.rel, "cosine": s.cosine,
                 "ref_max": s.ref_max, "tolerance": self.point_tolerance(s), "exceeds": self.exceeds(s)}
                for s in self.stats]

    def to_dict(self) -> dict:
        first, top = self.first_exceeding(), self.largest_contributor()
        return {"tolerance_logits": self.tolerance, "head": self.head.to_dict(), "points": self.rows(),
                "blocks": self.block_growth(), "first_exceeding": first.point.name if first else None,
                "largest_contributor": top, "not_compared": dict(self.missing)}


def compare_probes(candidate, reference, points: list[Point], batches, tolerance: float) -> Comparison:
    """Run both probes over ``batches`` ((images, labels or None) pairs) and accumulate every shared point."""
    stats = {p.name: PointStats(p) for p in points}
    head = HeadStats()
    missing: dict[str, str] = {}
    for images, labels in batches:
        a, b = candidate(images), reference(images)
        for p in points:
            if p.name not in a or p.name not in b:
                missing.setdefault(p.name, "not in the candidate" if p.name not in a else "not in the reference")
            elif a[p.name].shape != b[p.name].shape:
                missing.setdefault(p.name, f"shapes differ: {list(a[p.name].shape[1:])} vs "
                                           f"{list(b[p.name].shape[1:])}")
            else:
                stats[p.name].update(a[p.name], b[p.name])
        if "logits" in a and "logits" in b and a["logits"].shape == b["logits"].shape:
            head.update(a["logits"], b["logits"], labels)
    kept = [stats[p.name] for p in points if p.name not in missing]
    if not kept or "logits" in missing:  # two unrelated models: nothing (or not even the outputs) compares
        reason = missing.get("logits", "no point is in both graphs")
        raise VitrtError(f"the two graphs cannot be compared: their logits differ ({reason}); compare an OUT with "
                         "its twin, or two compiles of the same model")
    return Comparison(kept, head, tolerance, missing)
