"""The token-merging planner: the user's schedule (or a FLOPs / latency target) resolved into a MergePlan
for the spec the stage meets (after pruning), so every token count — and every shape — is fixed."""

from __future__ import annotations

from vitrt.compiler.errors import VitrtError
from vitrt.transforms.base import PlanContext
from vitrt.transforms.tome.config import TomeConfig
from vitrt.transforms.tome.schedule import MergePlan, resolve, schedule_of
from vitrt.transforms.tome.solve import solve_flops, solve_latency


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
        raise VitrtError("--tome-latency needs a latency table: --tome-lut PATH or --lut PATH (vitrt lut build)")
    return solve_latency(spec, options.latency, table, target=ctx.target, **placement)
