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


def _distill_codec():
    from vitrt.transforms.distill.plan import DistillPlan

    return _arrays_codec(DistillPlan)


def _lowrank_codec():
    from vitrt.transforms.lowrank.plan import LowRankPlan

    return _arrays_codec(LowRankPlan)


def _sparsity_codec():
    from vitrt.transforms.sparsity.plan import SparsityPlan

    return _arrays_codec(SparsityPlan)


CODECS = {"prune": _prune_codec, "tome": _tome_codec, "distill": _distill_codec, "lowrank": _lowrank_codec,
          "sparsity": _sparsity_codec, "quant": _quant_codec, "precision": _precision_codec}
STAGES_WITH_PLANS = tuple(CODECS)


def stage_codec(stage: str) -> tuple[Callable, Callable] | None:
    """(plan -> (JSON dict, arrays), (JSON dict, arrays) -> plan or twin -> plan) for the stage's plan type; None
    for a stage vitrt does not know."""
    make = CODECS.get(stage)
    return None if make is None else make()
