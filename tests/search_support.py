"""Test helpers for the search tests: an evaluator whose answers are given, so what the search selects can be
checked without compiling or training anything."""

from __future__ import annotations

from vitrt.compiler.errors import VitrtError
from vitrt.search.evaluate import Estimate
from vitrt.search.space import Recipe


class ScriptedEvaluator:
    """The evaluator's interface with each recipe's predicted ms and held-out top-1 given (``top1[recipe, epochs]``,
    or ``top1[recipe]`` at any budget); recipes in ``refused`` are refused by the compile, those in ``unpriced`` by
    the table. ``seconds``: what each estimate says it took; ``estimated``: what was asked, in order."""

    def __init__(self, ms: dict, top1: dict, dense_ms=10.0, dense_holdout=0.99, seconds=0.0, refused=(),
                 unpriced=()):
        self.ms, self.top1, self.dense_ms, self.dense_holdout = ms, top1, dense_ms, dense_holdout
        self.seconds, self.refused, self.unpriced = seconds, set(refused), set(unpriced)
        self.estimated: list[tuple[Recipe, int]] = []

    def lut_has(self, recipe):
        return True

    def predicted_spec(self, recipe):
        return None

    def predict(self, recipe, spec):
        if recipe in self.unpriced:
            raise VitrtError("the planner refuses this recipe")
        return self.ms[recipe]

    def estimate(self, recipe, epochs):
        self.estimated.append((recipe, epochs))
        if recipe in self.refused:
            return Estimate(recipe, epochs, refused="the compile refuses it", seconds=self.seconds)
        return Estimate(recipe, epochs, self.ms[recipe], self.top1.get((recipe, epochs), self.top1.get(recipe)),
                        seconds=self.seconds)
