"""The token-merging planner: the user's schedule (or a FLOPs / latency target) resolved into a MergePlan
for the spec the stage meets (after pruning), so every token count — and every shape — is fixed."""

from __future__ import annotations

from vitrt.compiler.errors import VitrtError
from vitrt.transforms.base import PlanContext
from vitrt.transforms.tome.config import TomeConfig
from vitrt.transforms.tome.schedule import MergePlan, TomeSchedule, parse_per_block, parse_r, resolve
from vitrt.transforms.tome.solve import solve_flops, solve_latency


def schedule_of(options: TomeConfig) -> TomeSchedule | None:
    """The explicit schedule of ``--tome`` / ``--tome-schedule`` (None for the FLOPs / latency solvers)."""
    placement = dict(skip=options.skip, window=options.window, transition=options.transition)
    if options.r is not None:
        r, inflection = parse_r(options.r)
        return TomeSchedule(r=r, inflection=inflection, **placement)
    if options.schedule is not None:
        return TomeSchedule(per_block=parse_per_block(options.schedule), **placement)
    return None


def check(options: TomeConfig, spec, target) -> None:
    """Refuse an explicit schedule the model cannot take before any work (wrong length, too many merges)."""
    schedule = schedule_of(options)
    if schedule is not None:
        resolve(schedule, spec)


def plan(twin, ctx: PlanContext, options: TomeConfig) -> MergePlan:
    spec = twin.spec
    schedule = schedule_of(options)
    if schedule is not None:
        return resolve(schedule, spec)
    placement = dict(skip=options.skip, window=options.window, transition=options.transition)
    if options.flops is not None:
        return solve_flops(spec, options.flops, **placement)
    table = options.lut or ctx.lut_path
    if table is None:
        raise VitrtError("--tome-latency needs --tome-lut PATH (a latency table built with vitrt)")
    return solve_latency(spec, options.latency, table, **placement)
