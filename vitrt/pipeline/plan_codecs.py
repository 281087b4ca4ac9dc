"""Each stage's plan to and from plain data (a JSON dict and named arrays): what recipes (vitrt.pipeline.recipe)
and twin records (vitrt.pipeline.replay) write and read, one codec per plan type."""

from __future__ import annotations

from typing import Callable

import numpy as np


def _prune_codec():
    from vitrt.transforms.prune.plan import PruningPlan

    def encode(plan):
        return plan.to_dict(), {f"weight/{k}": np.asarray(v) for k, v in (plan.weights or {}).items()}

    def decode(data, arrays):
        weights = {k[len("weight/"):]: v for k, v in arrays.items() if k.startswith("weight/")}
        return PruningPlan.from_dict(data).with_weights(weights or None)
    return encode, decode


def _tome_codec():
    from vitrt.transforms.tome.schedule import MergePlan

    return (lambda plan: (plan.to_dict(), {})), (lambda data, arrays: MergePlan.from_dict(data))


def _arrays_codec(cls):
    return (lambda plan: (plan.to_dict(), plan.arrays())), (lambda data, arrays: cls.from_dict(data, arrays))


def _quant_codec():
    from vitrt.transforms.quant.plan import QuantPlan

    # The scale table is validated against the spec the stage meets: decoded when the replay reaches the stage.
    return (lambda plan: (plan.to_dict(), plan.arrays())), \
        (lambda data, arrays: (lambda twin: QuantPlan.from_dict(data, arrays, twin.spec)))


def _precision_codec():
    from vitrt.transforms.precision.plan import PrecisionPlan

    return (lambda plan: (plan.to_dict(), {})), (lambda data, arrays: PrecisionPlan.from_dict(data))


def _plan_arrays_codec(stage: str):
    """The codec of a plan that carries its own arrays (``to_dict`` / ``arrays`` / ``from_dict(data, arrays)``)."""
    from vitrt.transforms.distill.plan import DistillPlan
    from vitrt.transforms.lowrank.plan import LowRankPlan
    from vitrt.transforms.sparsity.plan import SparsityPlan

    return _arrays_codec({"distill": DistillPlan, "lowrank": LowRankPlan, "sparsity": SparsityPlan}[stage])


CODECS = {"prune": _prune_codec, "tome": _tome_codec, "distill": lambda: _plan_arrays_codec("distill"),
          "lowrank": lambda: _plan_arrays_codec("lowrank"), "sparsity": lambda: _plan_arrays_codec("sparsity"),
          "quant": _quant_codec, "precision": _precision_codec}
STAGES_WITH_PLANS = tuple(CODECS)


def stage_codec(stage: str) -> tuple[Callable, Callable] | None:
    """(plan -> (JSON dict, arrays), (JSON dict, arrays) -> plan or twin -> plan) for the stage's plan type; None
    for a stage vitrt does not know."""
    make = CODECS.get(stage)
    return None if make is None else make()
