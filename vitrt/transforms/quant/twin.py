"""The quantization twin transform: the fake-quant twin — a copy with the plan's (QAT) weights and modelopt's
fake quantizers at the table's ranges; what the Q/DQ graph computes."""

from __future__ import annotations

import copy

from vitrt.compiler.weights import load_parameter_state
from vitrt.transforms.quant.fakequant import apply_scale_table
from vitrt.transforms.quant.plan import QuantPlan


def apply_plan(twin, plan: QuantPlan):
    """The fake-quant twin of ``twin`` under ``plan``; ``twin`` is unchanged."""
    if plan.weights:
        twin = copy.deepcopy(twin)
        load_parameter_state(twin, plan.weights)
    return apply_scale_table(twin, plan.table, quantize_attention=plan.quantize_attention)
