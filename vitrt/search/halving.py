"""The search: cheap estimates first, fine-tuning only for the finalists (successive halving), resumable.

    1. every recipe of the space gets its latency from the table (the structural stages planned without
       fine-tuning); a recipe with a lossy extra (lower precision, 2:4, low rank, token merging) that the table
       (its merge part calibrated on the model, :func:`vitrt.search.evaluate.merge_factor`) does not predict
       faster than the same recipe without it is dominated and dropped (it cannot be faster, and the extra only
       costs accuracy);
    2. rung 0: every remaining recipe's held-out top-1 without fine-tuning (a pruned recipe goes on whatever its
       rung-0 accuracy: before fine-tuning it is near chance and says nothing about what training recovers);
    3. rungs 1..k: the fastest admissible recipes of the rung before (held-out drop within --max-drop plus a
       slack that shrinks rung by rung; with --target-speedup: the most accurate that are fast enough, a pruned
       recipe not yet fine-tuned first; "more accurate": top-1, then the cross-entropy) are
       planned again with more fine-tuning epochs per trainable stage, and the population halves;
    4. the answer: the fastest recipe of the last rung within --max-drop (or the most accurate one at
       --target-speedup), every estimate kept for the Pareto front;
    5. filling the front: halving trains only the recipes near the goal, so the front (a recipe's estimate at its
       largest budget) is short elsewhere. While it has fewer than --front-points points and the budget allows,
       the trainable recipe nearest the middle of the front's widest latency gap (log scale; the regions faster
       than its fastest point and slower than its slowest count as gaps) gets the last rung's epochs.

Every estimate is written to the state file as it finishes and its plans as a recipe beside it, so an interrupted
search (Ctrl-C) keeps what was measured and a rerun with the same arguments continues where it stopped. A time
budget stops a rung early (its remaining recipes are recorded as skipped) and leaves time for the measurements.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import Interrupted, VitrtError
from vitrt.search.evaluate import Estimate, Evaluator
from vitrt.search.front import accuracy_score
from vitrt.search.space import Recipe

DOMINANCE_MARGIN = 0.01  # a lossy extra must be predicted > 1 % faster to be worth an accuracy estimate
AXES = ("precision", "sparsity", "lowrank", "merge")
# top-1 is a ratio of image counts, so a drop of exactly --max-drop points comes out a rounding error above it
# (297/300 → 294/300: 1.0000000000000009 points); far below one image on any held-out set
DROP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Schedule:
    """Epochs per trainable stage at each rung, how many recipes go on to the next rung, and the slack in points
    added to --max-drop at each rung (estimates before fine-tuning are pessimistic)."""

    epochs: tuple[int, ...] = (0, 1, 3, 6)
    keep: tuple[int, ...] = (12, 6, 3)
    slack: tuple[float, ...] = (30.0, 3.0, 1.0, 0.0)

    def __post_init__(self):
        if not (len(self.epochs) == len(self.slack) == len(self.keep) + 1):
            raise VitrtError("search schedule: epochs and slack need one entry per rung, keep one fewer")


@dataclass
class Goal:
    max_drop: float | None = None  # points of held-out top-1 below the dense model
    target_speedup: float | None = None  # predicted speedup over the dense model

    def admissible(self, e: Estimate, dense_top1: float, dense_ms: float, slack: float) -> bool:
        if not e.ok or e.holdout_top1 is None:
            return False
        if self.max_drop is not None and unjudged(e) and slack > 0:
            return True
        if self.max_drop is not None:
            return (dense_top1 - e.holdout_top1) * 100 <= self.max_drop + slack + DROP_TOLERANCE
        return dense_ms / e.predicted_ms >= self.target_speedup

    def rank(self, e: Estimate, slack: float = 0.0):
        """Sort key, best first: fastest (within the drop), or most accurate (at the speed); "more accurate" as on
        the front: top-1, then the cross-entropy. While ``slack`` > 0 (a rung that selects for the next one), an
        unjudged recipe counts as accurate as can be: its accuracy before fine-tuning says nothing (step 2)."""
        accuracy = (-1.0, 0.0) if slack > 0 and unjudged(e) else tuple(-x for x in accuracy_score(e))
        if self.max_drop is not None:
            return (e.predicted_ms, *accuracy)
        return (*accuracy, e.predicted_ms)


def unjudged(e: Estimate) -> bool:
    """A structurally compressed twin before any fine-tuning: near chance at large cuts (NViT fine-tunes after
    pruning, DC-ViT after each block), so its rung-0 accuracy says nothing about what fine-tuning recovers; it is
    judged from the first rung that trains it."""
    return e.epochs == 0 and bool({"prune", "dcvit"} & set(e.recipe.trainable()))


def choose(points: list[Estimate], goal: Goal, dense_top1: float, dense_ms: float) -> Estimate | None:
    """The answer (step 4): the best of ``points`` by :meth:`Goal.rank` among those admissible with no slack (within
    --max-drop itself, or at least --target-speedup), the fastest under --max-drop; None when none is."""
    final = [e for e in points if goal.admissible(e, dense_top1, dense_ms, 0.0)]
    return min(final, key=goal.rank) if final else None


ARGUMENT_NAMES = {"lut_mtime": "the --lut file's contents", "model": "MODEL"}  # fingerprint keys that are no flag


@contextlib.contextmanager
def resumable(state: "SearchState", work: Path):
    """Ctrl-C anywhere in a search (calibrating, training, measuring) says what is kept and how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"{len(state.done)} estimates are kept in '{work}': run the same command again to "
                          "continue") from None


class SearchState:
    """Finished estimates by (recipe key, epochs), persisted as JSON after each one (resume after Ctrl-C)."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path, self.fingerprint = Path(path), fingerprint
        self.done: dict[tuple[str, int], dict] = {}
        self.log: list[dict] = []
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            old = data.get("fingerprint") or {}
            if old != fingerprint:
                differ = [ARGUMENT_NAMES.get(k, "--" + k.replace("_", "-")) for k in sorted(set(old) | set(fingerprint))
                          if old.get(k) != fingerprint.get(k)]
                raise VitrtError(f"'{self.path.parent.parent}' holds a search with other arguments "
                                 f"({', '.join(differ)}); rerun with its arguments to resume, choose another -o, or "
                                 "pass --force to start over")
            self.done = {(e["key"], e["epochs"]): e for e in data["estimates"]}
            self.log = data.get("log", [])
        else:  # at once: a run stopped before its first estimate still leaves a search the same command resumes
            self.save()

    def get(self, recipe: Recipe, epochs: int) -> Estimate | None:
        data = self.done.get((recipe.key, epochs))
        return Estimate.from_dict(data) if data is not None else None

    def add(self, estimate: Estimate, recipe_dir: str | None) -> None:
        self.done[(estimate.recipe.key, estimate.epochs)] = {**estimate.to_dict(), "recipe_dir": recipe_dir}
        self.save()

    def note(self, **entry) -> None:
        self.log.append(entry)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "estimates": list(self.done.values()),
                                   "log": self.log}, indent=1) + "\n")
        tmp.replace(self.path)

    def recipe_dir(self, recipe: Recipe, epochs: int) -> str | None:
        data = self.done.get((recipe.key, epochs))
        return data.get("recipe_dir") if data else None


class Clock:
    """The time budget: seconds used so far (this run and the runs it resumes) against the budget and a reserve."""

    def __init__(self, budget_s: float | None, reserve_s: float, already_s: float = 0.0):
        self.budget_s, self.reserve_s, self.start = budget_s, reserve_s, time.perf_counter() - already_s

    @property
    def used_s(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, cost_s: float) -> bool:
        return self.budget_s is None or self.used_s + cost_s <= self.budget_s - self.reserve_s


def structural_filter(evaluator: Evaluator, recipes: list[Recipe], progress) -> tuple[list[Recipe], dict]:
    """(recipes worth an accuracy estimate, predicted ms of every recipe); drops recipes whose latency-table key is
    missing and those a cheaper-loss sibling dominates (step 1)."""
    predicted, notes = {}, {}
    with progress.bar(len(recipes), "latency of every recipe from the table") as bar:
        for recipe in recipes:
            if not evaluator.lut_has(recipe):
                notes[recipe.key] = f"the latency table has no {'/'.join(recipe.lut_key)} key"
            else:
                try:
                    predicted[recipe.key] = evaluator.predict(recipe, evaluator.predicted_spec(recipe))
                except VitrtError as exc:
                    notes[recipe.key] = f"refused: {exc}"
            bar.update(1)
    kept = []
    for recipe in recipes:
        if recipe.key not in predicted:
            continue
        for axis in AXES:
            sibling = recipe.without(axis)
            if sibling is not None and sibling.key in predicted and \
                    predicted[sibling.key] <= predicted[recipe.key] * (1 + DOMINANCE_MARGIN):
                notes[recipe.key] = f"dominated: predicted not faster than {sibling.label()}"
                break
        else:
            kept.append(recipe)
    return kept, {"predicted_ms": predicted, "notes": notes}


def dropped_summary(notes: dict[str, str]) -> str:
    """Why recipes were dropped before any training, counted by reason (``3 refused, 2 dominated``), with the
    first refusal spelled out: an option the model cannot take should not read like a missing table key."""
    reasons = {"refused": "refused", "dominated": "dominated", "the latency table": "no latency-table key"}
    counts = {label: sum(1 for n in notes.values() if n.startswith(prefix)) for prefix, label in reasons.items()}
    text = ", ".join(f"{count} {label}" for label, count in counts.items() if count) or "none dropped"
    refusal = next((n for n in notes.values() if n.startswith("refused")), None)
    return text + (f"; first refusal: {refusal.removeprefix('refused: ')}" if refusal else "")


def run_rungs(evaluator: Evaluator, recipes: list[Recipe], goal: Goal, schedule: Schedule, state: SearchState,
              clock: Clock, save_recipe, progress) -> list[Estimate]:
    """Steps 2-4; returns the estimates of the last rung reached, best first. ``save_recipe(estimate)`` writes an
    estimate's plans as a recipe and returns its directory (None when it cannot)."""
    dense_top1, dense_ms = evaluator.dense_holdout, evaluator.dense_ms
    population = list(recipes)
    results: list[Estimate] = []
    for rung, epochs in enumerate(schedule.epochs):
        slack = schedule.slack[rung]
        progress.log(f"rung {rung}: {len(population)} recipe(s), {epochs} epoch(s) per trainable stage, "
                     f"{clock.used_s / 60:.1f} min used" + (f" of {clock.budget_s / 60:.1f}" if clock.budget_s else ""))
        results, costs, skipped = [], [], []
        with progress.bar(len(population), f"rung {rung} ({epochs} epochs)") as bar:
            for recipe in population:
                estimate = state.get(recipe, epochs)
                if estimate is None:
                    expected = sum(costs) / len(costs) if costs else 0.0
                    if not clock.fits(expected):
                        skipped.append(recipe.key)
                        bar.update(1)
                        continue
                    estimate = evaluator.estimate(recipe, epochs)
                    costs.append(estimate.seconds)
                    state.add(estimate, save_recipe(estimate) if estimate.ok else None)
                results.append(estimate)
                bar.update(1)
        if skipped:
            state.note(rung=rung, skipped_for_budget=skipped)
            progress.log(f"rung {rung}: time budget reached, {len(skipped)} recipe(s) not estimated")
        admissible = sorted((e for e in results if goal.admissible(e, dense_top1, dense_ms, slack)),
                            key=lambda e: goal.rank(e, slack))
        if rung == len(schedule.keep) or not admissible:
            return admissible or sorted((e for e in results if e.ok), key=lambda e: -(e.holdout_top1 or 0))
        nxt = [e.recipe for e in admissible[: schedule.keep[rung]] if e.recipe.trainable()]
        if not nxt:
            return admissible
        population = nxt
        if skipped or not clock.fits(0.0):
            return admissible
    return results


def fill_front(evaluator: Evaluator, recipes: list[Recipe], predicted: dict[str, float], epochs: int, want: int,
               state: SearchState, clock: Clock, save_recipe, progress) -> int:
    """Step 5; returns how many recipes it trained. ``predicted``: the table's ms of every recipe (step 1). A gap
    whose recipe did not join the front is not tried again until the front changes around it."""
    from vitrt.search.front import best_per_recipe, pareto

    tried, failed, last = set(), set(), None  # last: (the recipe trained in the previous round, its gap)
    costs = [e["seconds"] for e in state.done.values() if e["epochs"] == epochs and e["seconds"] > 1]
    while True:
        front = pareto(best_per_recipe([Estimate.from_dict(e) for e in state.done.values()]))
        if last is not None and all(e.recipe.key != last[0].key for e in front):
            failed.add(last[1])
        if len(front) >= want or not front:
            return len(tried)
        candidates = [r for r in recipes if r.trainable() and r.key in predicted and r.key not in tried
                      and (r.key, epochs) not in state.done]
        recipe, gap = widest_gap_candidate([e.predicted_ms for e in front], candidates, predicted, failed)
        expected = sum(costs) / len(costs) if costs else 0.0
        if recipe is None or not clock.fits(expected):
            if recipe is not None:
                state.note(front_fill_stopped_for_budget=len(front))
            return len(tried)
        progress.log(f"front: {len(front)} point(s) of {want}; fine-tuning {recipe.label()} ({epochs} epochs) in "
                     f"its widest gap ({gap[0]:.2f}-{gap[1]:.2f} ms)")
        tried.add(recipe.key)
        estimate = evaluator.estimate(recipe, epochs)
        costs.append(estimate.seconds)
        state.add(estimate, save_recipe(estimate) if estimate.ok else None)
        last = (recipe, gap)


def widest_gap_candidate(front_ms: list[float], candidates: list[Recipe], predicted: dict[str, float],
                         skip: set = frozenset()):
    """(the candidate nearest, in log latency, the middle of the widest gap of ``front_ms`` that holds one, that
    gap) or (None, None). The regions faster than the fastest point and slower than the slowest are gaps too,
    bounded by the candidates there; gaps in ``skip`` are passed over."""
    ms = sorted(front_ms)
    faster = [predicted[r.key] for r in candidates if predicted[r.key] < ms[0]]
    slower = [predicted[r.key] for r in candidates if predicted[r.key] > ms[-1]]
    edges = ([min(faster)] if faster else []) + ms + ([max(slower)] if slower else [])
    best, best_gap, best_width = None, None, 0.0
    for lo, hi in zip(edges, edges[1:]):
        inside = [r for r in candidates if lo <= predicted[r.key] <= hi and predicted[r.key] not in ms]
        width = math.log(hi / lo)
        if inside and width > best_width and (lo, hi) not in skip:
            middle = math.sqrt(lo * hi)
            best = min(inside, key=lambda r: abs(math.log(predicted[r.key] / middle)))
            best_gap, best_width = (lo, hi), width
    return best, best_gap
