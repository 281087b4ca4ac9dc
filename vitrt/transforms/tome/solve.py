"""Schedule solvers: the constant r (after the DFE skip) that reaches a FLOPs or a latency fraction of the dense model.

Both search the integer r of a constant schedule (ToMe's parametrisation, capped per block) and return the
smallest r whose predicted cost is at most the target fraction — the least merging that meets the budget.
"""

from __future__ import annotations

from vitrt.compiler.cost import vit_flops
from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.lut import LatencyTable
from vitrt.transforms.tome.schedule import MergePlan, TomeSchedule, resolve


class UnreachableTarget(VitrtError):
    """The most merging a schedule allows stays above the target fraction (``least``: the fraction it keeps)."""

    def __init__(self, message: str, least: float):
        super().__init__(message)
        self.least = least


def _search(spec, fraction: float, cost, what: str, *, skip=None, window=None, transition=None) -> MergePlan:
    if not 0.0 < fraction <= 1.0:
        raise OptionError(f"--tome-{what} must be a fraction in (0, 1], got {fraction}")
    dense = cost(spec)
    most = resolve(TomeSchedule(r=spec.tokens, skip=skip, window=window, transition=transition), spec).r
    for r in range(0, spec.tokens + 1):  # capping makes large r equivalent; stop at the most merging (every block capped)
        plan = resolve(TomeSchedule(r=r, skip=skip, window=window, transition=transition), spec)
        ratio = cost(plan.apply_to_spec(spec)) / dense
        if ratio <= fraction:
            return plan
        if plan.r == most:  # not "the same plan as r - 1": under LGTM, ceil(r / windows) makes plateaus
            break
    raise UnreachableTarget(f"--tome-{what} {fraction}: the most merging this schedule allows keeps "
                            f"{ratio:.3f} of the dense {what}; raise the fraction or lower --dfe-skip", ratio)


def solve_flops(spec, fraction: float, **kwargs) -> MergePlan:
    """Smallest constant r with FLOPs(merged) / FLOPs(dense) <= ``fraction`` (analytic, vitrt.compiler.cost)."""
    return _search(spec, fraction, vit_flops, "flops", **kwargs)


def solve_latency(spec, fraction: float, table_path, target=None, **kwargs) -> MergePlan:
    """Smallest constant r whose latency-table prediction is <= ``fraction`` of the dense prediction. ``target``
    (the compile's): the table must be of its backend and batch — how much merging saves depends on both — and
    its predictions are those of its fp32 part (a ratio, merged / dense, of one precision)."""
    if table_path is None:
        raise VitrtError("--tome-latency needs --tome-lut PATH (a latency table built with vitrt)")
    table = LatencyTable.load(table_path)
    if target is not None:
        table.check(backend=target.backend, batch=target.batch)
    # Token counts below the table's grid are clamped to its smallest row: that over-predicts the merged
    # latency, so the solver errs towards merging more, never towards missing the target.
    return _search(spec, fraction, lambda s: table.model_ms(s, clamp=True), "latency", **kwargs)
