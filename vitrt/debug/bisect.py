"""``vitrt compare OUT --bisect``: the fewest compressed layers whose reversion brings top-1 back, found by halving.

The units a compile's record can revert, each on its own:

    quant      a quantized layer (its input and weight Q/DQ; an attention matmul's two inputs): back to float
    sparsity   a 2:4-masked layer: back to its dense weight (not after 2:4 fine-tuning, whose dense weights are gone)
    tome       a block that merges tokens: merges nothing (global merging only; LGTM windows are not revertable)

A set of reverted units is judged by rewriting the graph from the record with the plans changed (the compile's own
passes, :meth:`~vitrt.pipeline.replay.Record.rewrite`) and running it in ONNX Runtime on the data: top-1 with
labels, else top-1 agreement with the graph that has every unit reverted. The search wants the set within
``max_drop`` points of that fully reverted graph, and finds an irreducible one by recursive halving (QuickXplain,
Junker 2004): with the first half reverted, find what the second half must contribute; then what the first half
must contribute given that — O(k log(n / k)) graphs for k needed units of n, assuming that reverting more never
hurts. The answer is written as the flags a compile takes (``--quant-exclude``, ``--sparse-exclude``,
``--tome-schedule``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.debug.config import BISECT_STAGES


@dataclass(frozen=True)
class Unit:
    stage: str  # quant | sparsity | tome
    name: str  # the layer (quant, sparsity) or the block (tome: blocks.5)


def revertible_units(record, stages=BISECT_STAGES) -> tuple[list[Unit], list[str]]:
    """Every unit of ``stages`` the record can revert, in graph order, and notes on what it cannot."""
    units, notes = [], []
    plans = record.plans
    if "tome" in stages and "tome" in plans:
        plan = plans["tome"]
        if any(b.windows > 1 for b in plan.blocks):
            notes.append("tome: merging inside LGTM windows cannot be reverted block by block; left as compiled")
        else:
            units += [Unit("tome", f"blocks.{b.index}") for b in plan.blocks if b.merges]
    if "sparsity" in stages and "sparsity" in plans:
        plan = plans["sparsity"]
        if plan.finetune is not None:
            notes.append("sparsity: the 2:4 layers were fine-tuned, their dense weights are gone; left as compiled")
        else:
            units += [Unit("sparsity", d.name) for d in plan.eligible]
    if "quant" in stages and "quant" in plans:
        layers = dict.fromkeys(key.rpartition(".")[0] for key in plans["quant"].table.entries)
        units += [Unit("quant", layer) for layer in layers]
    return units, notes


def reverted_plans(record, units) -> dict:
    """The record's plans with ``units`` reverted (only the stages they touch)."""
    by_stage: dict[str, set[str]] = {}
    for unit in units:
        by_stage.setdefault(unit.stage, set()).add(unit.name)
    plans = {}
    if "quant" in by_stage:
        plan = record.plans["quant"]
        float_layers = {**plan.float_layers, **{layer: "reverted by bisection" for layer in sorted(by_stage["quant"])}}
        plans["quant"] = dataclasses.replace(plan, table=plan.table.without(by_stage["quant"]), float_layers=float_layers)
    if "sparsity" in by_stage:
        plan, names = record.plans["sparsity"], by_stage["sparsity"]
        decisions = tuple(dataclasses.replace(d, eligible=False, reason="reverted by bisection") if d.name in names
                          else d for d in plan.decisions)
        plans["sparsity"] = dataclasses.replace(plan, decisions=decisions,
                                                masks={k: v for k, v in plan.masks.items() if k not in names})
    if "tome" in by_stage:
        from vitrt.transforms.tome.schedule import TomeSchedule, resolve

        plan = record.plans["tome"]
        r = [0 if f"blocks.{b.index}" in by_stage["tome"] else b.merges for b in plan.blocks]
        before = record.twins[record.stages.index("tome")].spec
        plans["tome"] = resolve(TomeSchedule(per_block=tuple(r)), before)  # per block: no DFE skip to add
    return plans


def exclude_flags(record, units) -> str:
    """The compile flags that leave ``units`` uncompressed."""
    flags = []
    quant = [u.name for u in units if u.stage == "quant"]
    sparse = [u.name for u in units if u.stage == "sparsity"]
    if quant:
        flags.append(f"--quant-exclude {','.join(quant)}")
    if sparse:
        flags.append(f"--sparse-exclude {','.join(sparse)}")
    if any(u.stage == "tome" for u in units):
        plan = reverted_plans(record, [u for u in units if u.stage == "tome"])["tome"]
        flags.append(f"--tome-schedule {','.join(str(r) for r in plan.r)}")
    return " ".join(flags)


class Judge:
    """Top-1 (or agreement) of the graph with a set of units reverted; every set evaluated once."""

    def __init__(self, record, units, images: np.ndarray, labels: np.ndarray | None, threads: int | None = None,
                 progress=None):
        self.record, self.units, self.images, self.labels, self.threads = record, units, images, labels, threads
        self.progress = progress
        self.cache: dict[frozenset, float] = {}
        self.reference = None
        if labels is None:  # agreement with the fully reverted graph
            self.reference = self.logits(frozenset(units)).argmax(axis=1)
            self.cache[frozenset(units)] = 1.0

    def logits(self, reverted: frozenset) -> np.ndarray:
        from vitrt.compiler.spec import ViTSpec
        from vitrt.debug.points import graph_points
        from vitrt.debug.probes import ort_probe

        model = self.record.rewrite(reverted_plans(self.record, reverted))
        logits = [p for p in graph_points(model, ViTSpec.from_onnx(model)) if p.name == "logits"]
        return ort_probe(model, logits, self.threads)(self.images)["logits"]

    def __call__(self, reverted) -> float:
        key = frozenset(reverted)
        if key not in self.cache:
            predicted = self.logits(key).argmax(axis=1)
            truth = self.labels if self.labels is not None else self.reference
            self.cache[key] = float(np.mean(predicted == truth))
            if self.progress is not None:
                self.progress.log(f"bisect: {len(key)} of {len(self.units)} reverted -> {self.cache[key] * 100:.2f} %")
        return self.cache[key]


def minimal_set(units: list, ok) -> list:
    """An irreducible subset S of ``units`` with ``ok(S)``, given ``ok(units)`` (QuickXplain's recursion)."""
    def search(base: list, changed: bool, candidates: list) -> list:
        if changed and ok(base):
            return []
        if len(candidates) == 1:
            return candidates
        half = len(candidates) // 2
        first, second = candidates[:half], candidates[half:]
        from_second = search(base + first, bool(first), second)
        from_first = search(base + from_second, bool(from_second), first)
        return from_first + from_second

    if ok([]):
        return []
    return search([], False, list(units))


def bisect_record(record, images, labels, max_drop: float, stages=BISECT_STAGES, threads=None, progress=None) -> dict:
    """Find the fewest units of ``stages`` to revert so that top-1 (or agreement) is within ``max_drop`` points of
    the fully reverted graph."""
    start = time.perf_counter()
    units, notes = revertible_units(record, stages)
    if not units:
        raise VitrtError(f"--bisect: the compile has no revertible quantized, 2:4 or merging layers in stages "
                         f"{', '.join(stages)}" + (f" ({'; '.join(notes)})" if notes else ""))
    judge = Judge(record, units, images, labels, threads, progress)
    baseline, compiled = judge(units), judge([])
    target = baseline - max_drop / 100.0
    found = minimal_set(units, lambda reverted: judge(reverted) >= target - 1e-12)
    quantized = [u for u in units if u.stage == "quant"]
    kept = len([u for u in quantized if u not in found])
    return {"metric": "top1" if labels is not None else "top1_agreement_with_reverted", "images": len(images),
            "stages": sorted({u.stage for u in units}), "units": len(units), "notes": notes,
            "uncompressed": baseline, "compiled": compiled, "max_drop_points": max_drop, "target": target,
            "reverted": [dataclasses.asdict(u) for u in found], "after": judge(found),
            "quantized_layers_kept": f"{kept}/{len(quantized)}" if quantized else None,
            "quantized_fraction_kept": round(kept / len(quantized), 4) if quantized else None,
            "evaluations": len(judge.cache), "seconds": round(time.perf_counter() - start, 1),
            "flags": exclude_flags(record, found)}


def bisect_out(config, progress) -> dict:
    """``vitrt compare OUT --bisect`` on ``config.data``."""
    from vitrt.calib.data import load_data
    from vitrt.pipeline.replay import load_record

    record = load_record(config.a)
    stages = config.stages_to_bisect()  # checked by CompareConfig.validate
    data = load_data(config.data, record.twin.spec.img, split="test", limit=config.images, seed=config.seed)
    images = np.concatenate([x.numpy() for x, _ in data.batches(256)])
    labels = np.concatenate([y.numpy() for _, y in data.batches(256)]) if data.labelled else None
    with progress.step(f"bisecting over {config.images} {config.data} images"):
        return bisect_record(record, images, labels, config.max_drop, stages, config.threads, progress)


def bisect_lines(result: dict) -> list[str]:
    names = [u["name"] for u in result["reverted"]]
    metric = "top-1" if result["metric"] == "top1" else "top-1 agreement with the reverted graph"
    lines = [f"bisect ({metric}, {result['images']} images, {result['evaluations']} graphs in {result['seconds']} s): "
             f"uncompressed {result['uncompressed'] * 100:.2f} %, compiled {result['compiled'] * 100:.2f} %, "
             f"target >= {result['target'] * 100:.2f} %"]
    if not names:
        lines.append("bisect: the compiled graph is already within the allowed drop; nothing to revert")
    else:
        lines.append(f"bisect: revert {len(names)} of {result['units']} units -> {result['after'] * 100:.2f} %: "
                     f"{', '.join(names)}")
    if result["quantized_layers_kept"]:
        lines.append(f"bisect: quantized layers kept {result['quantized_layers_kept']}")
    lines += [f"bisect: {note}" for note in result["notes"]]
    if result["flags"]:
        lines.append(f"compile with: {result['flags']}")
    return lines
