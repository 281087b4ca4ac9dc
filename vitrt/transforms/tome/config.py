"""Options of the static token-merging stage (ToMe / DFE / LGTM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option


@dataclass(frozen=True)
class TomeConfig:
    r: str | None = option(None, "merge R tokens per block after the first --dfe-skip blocks (default depth // 6, "
                           "DFE; --dfe-skip 0 for plain ToMe), or R,INFLECTION for ToMe's ramp", flag="--tome",
                           metavar="R")
    schedule: str | None = option(None, "explicit r of every block, comma-separated (refused where a block cannot "
                                  "merge that many)", flag="--tome-schedule", metavar="LIST")
    flops: float | None = option(None, "pick the constant r that keeps at most this fraction of the FLOPs",
                                 flag="--tome-flops", type=float, metavar="F")
    latency: float | None = option(None, "pick r from the latency table's token axis to keep at most this fraction "
                                   "of the predicted latency", flag="--tome-latency", type=float, metavar="F")
    lut: Path | None = option(None, "latency table for --tome-latency (default: --lut)", flag="--tome-lut", type=Path,
                              metavar="PATH")
    skip: int | None = option(None, "dense feature extractor: first S blocks merge nothing (default depth // 6)",
                              flag="--dfe-skip", type=int, metavar="S")
    window: int | None = option(None, "local-global merging: window side W in patches (must divide the grid)",
                                flag="--lgtm-window", type=int, metavar="W")
    transition: int | None = option(None, "local-global merging: local blocks after the skip (default: until the "
                                    "windows cover the grid)", flag="--lgtm-transition", type=int, metavar="T")

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.r, self.schedule, self.flops, self.latency))

    def validate(self) -> "TomeConfig":
        from vitrt.transforms.tome.schedule import parse_per_block, parse_r

        chosen = [v for v in (self.r, self.schedule, self.flops, self.latency) if v is not None]
        if len(chosen) > 1:
            raise OptionError("give at most one of --tome, --tome-schedule, --tome-flops, --tome-latency")
        if not chosen and any(v is not None for v in (self.skip, self.window, self.transition)):
            raise OptionError("--dfe-skip / --lgtm-window / --lgtm-transition need --tome, --tome-schedule, "
                             "--tome-flops or --tome-latency")
        if self.r is not None:
            parse_r(self.r)
        if self.schedule is not None:
            parse_per_block(self.schedule)
        return self

    def check(self, spec, target):
        """An explicit schedule the model cannot take is refused before any work (wrong length, too many merges);
        returns the merged spec then (None for the FLOPs / latency solvers, which decide at planning time)."""
        from vitrt.transforms.tome.schedule import resolve, schedule_of

        schedule = schedule_of(self)
        if schedule is None or spec is None:
            return None
        return resolve(schedule, spec).apply_to_spec(spec)
