"""Cheap estimates of a recipe: its latency from the table, its accuracy as the held-out top-1 of the twin the
compile's planners leave (fake-quant, 2:4 masks, merging and factors applied) and its held-out cross-entropy (what
orders recipes whose top-1 ties) — no graph is lowered or built.

Planning goes through the compile's own :func:`vitrt.pipeline.driver.plan_stages`, with the search's fit split as
the planners' data (:class:`~vitrt.search.holdout.HoldoutContext`). Plans are cached by the options of the stages
up to them, so recipes that share a prefix (the same pruning and fine-tuning budget, say) plan it once.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field

from vitrt.calib.evaluate import cross_entropy, top1, torch_logits
from vitrt.compiler.cost import vit_flops, vit_params
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import as_dict, from_options
from vitrt.pipeline.config import CompileConfig
from vitrt.pipeline.driver import plan_stages
from vitrt.pipeline.stages import active_stages, stage_options
from vitrt.search.holdout import HoldoutContext, SearchData
from vitrt.search.space import Recipe


@dataclass
class Estimate:
    recipe: Recipe
    epochs: int
    predicted_ms: float | None = None
    holdout_top1: float | None = None
    params: int | None = None
    flops: int | None = None
    seconds: float = 0.0
    refused: str = ""  # why the compile refuses this recipe (one line), else empty
    holdout_loss: float | None = None  # held-out cross-entropy: orders recipes whose top-1 ties
    plans: dict | None = field(default=None, repr=False, compare=False)  # in memory only

    @property
    def ok(self) -> bool:
        return not self.refused

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "label": self.recipe.label(), "key": self.recipe.key,
                "epochs": self.epochs, "predicted_ms": self.predicted_ms, "holdout_top1": self.holdout_top1,
                "params": self.params, "flops": self.flops, "seconds": round(self.seconds, 2), "refused": self.refused,
                "holdout_loss": self.holdout_loss}

    @classmethod
    def from_dict(cls, data: dict) -> "Estimate":
        return cls(Recipe.from_dict(data["recipe"]), data["epochs"], data["predicted_ms"], data["holdout_top1"],
                   data["params"], data["flops"], data["seconds"], data["refused"], data.get("holdout_loss"))


@dataclass
class Target:
    batch: int = 8
    backend: str = "ort"
    threads: int | None = 1


class Evaluator:
    """Estimates recipes of one model: ``twin`` (the dense canonical twin), the search data, the latency table."""

    def __init__(self, twin, name: str, data: SearchData, lut, lut_path, target: Target, progress, seed: int = 0):
        self.twin, self.name, self.data, self.lut, self.lut_path = twin, name, data, lut, lut_path
        self.target, self.progress, self.seed = target, progress, seed
        self.cache: dict[str, object] = {}
        self.dense_table_alone_ms = lut.model_ms(twin.spec, clamp=True)  # the table alone
        self.scale = 1.0  # measured / calibrated table time of the dense engine (:meth:`calibrate`)
        self.merge_factor = 1.0  # measured / table cost of token merging in this model (:meth:`calibrate`)
        self.offset = 0.0  # ms a whole engine of this model costs that no part of the table holds (:meth:`calibrate`)
        logits = torch_logits(twin, data.holdout)
        self.dense_holdout = top1(logits, data.holdout.labels)
        self.dense_holdout_loss = cross_entropy(logits, data.holdout.labels)

    @property
    def dense_table_ms(self) -> float:
        """The calibrated table's time of the dense engine (before the machine's scale)."""
        return self.dense_table_alone_ms + self.offset

    @property
    def dense_ms(self) -> float:
        return self.dense_table_ms * self.scale

    def calibrate(self, scale: float, merge_factor: float = 1.0, offset: float = 0.0) -> None:
        """Add ``offset`` ms to every prediction (:func:`table_offset`), scale the table's token-merge part by
        ``merge_factor`` (:func:`merge_factor`) and the result by ``scale`` (the dense engine's measured time over
        its calibrated table time).

        A table times each part alone; a whole engine adds what the parts do not see in isolation. Measured on the
        digits reference (ORT CPU, batch 8): a constant per run (~0.1 ms, the same for every pruned size) and a
        merge costing ~2.5x the table's probe; what remains is one factor for the machine at that moment, which
        moves every prediction alike and so never changes the search's ranking."""
        self.scale, self.merge_factor, self.offset = float(scale), float(merge_factor), float(offset)

    def options(self, recipe: Recipe, epochs: int) -> dict:
        return recipe.options(epochs=epochs, data=self.data.source, lut=self.lut_path, batch=self.target.batch,
                              backend=self.target.backend, threads=self.target.threads)

    def config(self, recipe: Recipe, epochs: int) -> CompileConfig:
        return from_options(CompileConfig, {**self.options(recipe, epochs), "seed": self.seed, "quiet": True})

    def predict(self, recipe: Recipe, spec) -> float:
        return self.table_ms(recipe, spec) * self.scale

    def table_ms(self, recipe: Recipe, spec, *, calibrated: bool = True) -> float:
        """The table's prediction for ``spec`` in ``recipe``'s key: with ``calibrated``, its token-merge part
        scaled by the merge factor and the offset added (before the machine's scale); else the table alone."""
        precision, sparsity = recipe.lut_key
        total = self.lut.model_ms(spec, precision=precision, sparsity=sparsity, clamp=True)
        if not calibrated:
            return total
        merge = self.lut.merge_ms(spec, precision=precision, sparsity=sparsity, clamp=True) \
            if self.merge_factor != 1.0 else 0.0
        return calibrated_ms(total, merge, offset=self.offset, merge_factor=self.merge_factor)

    def lut_has(self, recipe: Recipe) -> bool:
        return "/".join(recipe.lut_key) in self.lut.tables

    def plan(self, recipe: Recipe, epochs: int):
        """The compile's planning of ``recipe`` (cached by stage prefix); returns the driver's Planned."""
        config = self.config(recipe, epochs).validate()
        stages = active_stages(config)
        keys, chain = [], {"target": [config.target.batch, config.target.backend, config.seed]}
        for stage in stages:
            options = stage_options(config, stage)
            chain[stage.name] = as_dict(options) if options is not None else None
            if stage.name in ("quant", "precision"):
                chain[f"{stage.name}.precision"] = config.target.precision
            keys.append(json.dumps(chain, sort_keys=True, default=str))
        given = {}
        for stage, key in zip(stages, keys):
            if key not in self.cache:
                break
            given[stage.name] = self.cache[key]
        context = functools.partial(HoldoutContext, search=self.data)
        planned = plan_stages(config, self.twin, lut=self.lut, name=self.name, progress=self.progress, given=given,
                              context=context, preprocessing=self.data.preprocessing)
        for stage, key in zip(stages, keys):
            self.cache[key] = planned.plans[stage.name]
        return planned

    def estimate(self, recipe: Recipe, epochs: int) -> Estimate:
        start = time.perf_counter()
        try:
            planned = self.plan(recipe, epochs)
        except VitrtError as exc:
            return Estimate(recipe, epochs, refused=str(exc), seconds=time.perf_counter() - start)
        spec = planned.final.spec
        logits = torch_logits(planned.final, self.data.holdout)
        return Estimate(recipe, epochs, self.predict(recipe, spec), top1(logits, self.data.holdout.labels),
                        vit_params(spec), vit_flops(spec), time.perf_counter() - start,
                        holdout_loss=cross_entropy(logits, self.data.holdout.labels), plans=planned.plans)

    def predicted_spec(self, recipe: Recipe):
        """The spec ``recipe`` compiles to, planning only what changes dims (pruning without fine-tuning, merging,
        low rank): enough for the latency table."""
        return self.plan(recipe.structural(), 0).final.spec


def calibrated_ms(table_ms: float, merge_part_ms: float, *, offset: float, merge_factor: float) -> float:
    """A table time with the calibration applied (before the machine's scale): its token-merge part scaled by
    ``merge_factor`` (:func:`merge_factor`) and the per-run ``offset`` (:func:`table_offset`) added."""
    return table_ms + (merge_factor - 1.0) * merge_part_ms + offset


OFFSET_LIMIT = 0.25  # an offset this large (x the dense table time) says the table was built on another machine


def table_offset(*, dense_table_ms: float, small_table_ms: float, measured_ratio: float) -> float:
    """The constant (ms) that, added to both table times, makes the table's ratio of a small engine to the dense
    one equal the ``measured_ratio`` (timed side by side): ``(small + c) / (dense + c) = ratio``.

    A table's parts are timed alone, the runtime's empty-graph overhead subtracted once; a whole engine pays a
    per-run cost beyond that which does not shrink with pruning (on the digits reference, ORT CPU, batch 8:
    ~0.12 ms; fitted by least squares over the 9 engines of ``optimize_digits_run7.md``, 0.12 to 1.0 of the dense
    latency, every one within 2 %, where one scale alone left the smallest 9 % too fast). Clamped to
    [0, OFFSET_LIMIT x dense]; 0 when the ratio cannot tell."""
    if not 0 < measured_ratio < 1 or small_table_ms >= dense_table_ms:
        return 0.0
    offset = (small_table_ms - measured_ratio * dense_table_ms) / (measured_ratio - 1.0)
    return min(max(offset, 0.0), OFFSET_LIMIT * dense_table_ms)


def merge_factor(*, dense_table_ms: float, merged_table_ms: float, merge_part_ms: float,
                 measured_ratio: float) -> float:
    """The factor on the table's token-merge part that makes the table's ratio of a merging engine to the dense one
    equal the ``measured_ratio`` (timed side by side): ``dense · ratio = merged + (k - 1) · merge part`` (both
    table times with the offset of :func:`table_offset` added).

    The table prices a merge by a two-block probe without MLPs; whole merging engines run slower than that. On
    the digits reference (ORT CPU, batch 8, side by side; ``benchmarks/results/table_calibration_digits.md``) the
    table alone puts merging engines up to 38 % too fast; with the offset and a factor fitted on ToMe r=2 (2.85x),
    DFE r = 2, 3, 4, 6, r=1 in the last six blocks and one merge alone are predicted within 5 %, prune 0.3 / 0.5
    + DFE r=6 within 7 % (two runs; what the table misses does not shrink with pruning, as the merge part does
    not). Where the time goes is not established. One factor per model, from one measured merging engine,
    clamped to [0, 10]; 1 when nothing merges."""
    if merge_part_ms <= 0:
        return 1.0
    return min(max(1.0 + (dense_table_ms * measured_ratio - merged_table_ms) / merge_part_ms, 0.0), 10.0)


def lut_scale(dense_measured_ms: float, dense_table_ms: float, offset: float) -> float:
    """The machine's scale (:meth:`Evaluator.calibrate`): the dense engine's measured ms over its calibrated table
    time, the table alone plus the per-run ``offset`` (the dense engine merges nothing), so the calibrated
    prediction of the dense engine is the measured time."""
    return dense_measured_ms / (dense_table_ms + offset)


def fit_calibration(dense_table_ms: float, small: tuple[float, float] | None = None,
                    merge: tuple[float, float, float] | None = None) -> tuple[float, float]:
    """(offset, merge factor) from the table alone and measured ratios to dense: ``small`` = (table ms of a small
    non-merging engine, its measured ratio), ``merge`` = (table ms of a merging engine, its table merge part, its
    measured ratio); the offset first (:func:`table_offset`), the merge factor on top of it (:func:`merge_factor`)."""
    offset = 0.0 if small is None else table_offset(dense_table_ms=dense_table_ms, small_table_ms=small[0],
                                                     measured_ratio=small[1])
    k = 1.0 if merge is None else merge_factor(dense_table_ms=dense_table_ms + offset,
                                               merged_table_ms=merge[0] + offset, merge_part_ms=merge[1],
                                               measured_ratio=merge[2])
    return offset, k
