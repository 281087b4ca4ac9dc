"""Static token-merge schedules: per-block r, DFE skip, LGTM windows — resolved at compile time to fixed token counts.

A :class:`TomeSchedule` is what the user asked for (plain, frozen, JSON-serialisable). :func:`resolve` turns it
into a :class:`MergePlan` for one :class:`~vitrt.compiler.spec.ViTSpec`: for every block the number of windows
its merge runs in (1 = global), the merges per window, and the tokens entering and leaving the block. The plan
fixes every token count, so every shape in the graph is static.

Rules (ToMe, Bolya et al. 2022; DFE + LGTM, Heo et al. 2023, Algorithm 1):

* prefix tokens (class, distillation) are never merged; the mergeable tokens of a block are ``tokens - prefix``;
* a block merges at most half of the tokens it can merge (per window under LGTM). Constant and ramp schedules
  (``--tome R``) are capped to that (ToMe's ``min(r, (t - protected) // 2)``); an explicit per-block list
  (``--tome-schedule``) is the user's exact intent and is refused, naming the block, when it asks for more;
* DFE: the first ``skip`` blocks merge nothing (default ``depth // 6``, the paper's first one-sixth);
* LGTM: the ``transition`` blocks after the skip merge inside local windows, ``ceil(r / windows)`` tokens per
  window. The first local block sees the patch grid cut into ``window × window`` windows; each later local
  block joins 2 × 2 neighbouring windows (the window side doubles — the paper's "increment w", in steps that
  keep every shape static), then merging is global. Windows are stored contiguously (quad-tree order), so a
  local merge is a reshape to ``(B · windows, tokens per window, C)``, batched as the paper describes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from vitrt.compiler.errors import OptionError, VitrtError


@dataclass(frozen=True)
class TomeSchedule:
    """What to merge. Exactly one of ``r`` (constant, with optional ramp ``inflection``) or ``per_block``."""

    r: int | None = None
    inflection: float = 0.0  # ToMe's ramp: r·(1 - inflection) in the first merging block ... r·(1 + inflection) in the last
    per_block: tuple[int, ...] | None = None  # explicit r of every block (strict: refused when too large)
    skip: int | None = None  # DFE: blocks that merge nothing at the start; None = depth // 6 for r, 0 for per_block
    window: int | None = None  # LGTM window side in patches; None = no local merging
    transition: int | None = None  # LGTM: local blocks after the skip; None = until the windows cover the grid

    def __post_init__(self):
        if (self.r is None) == (self.per_block is None):
            raise VitrtError("token merging: give either a constant r (--tome R) or a per-block list (--tome-schedule)")
        if self.r is not None and (not isinstance(self.r, int) or self.r < 0):
            raise OptionError(f"token merging: r must be a non-negative integer, got {self.r!r}")
        if not -1.0 <= float(self.inflection) <= 1.0:
            raise OptionError(f"token merging: ramp inflection must be in [-1, 1], got {self.inflection}")
        if self.per_block is not None and any(not isinstance(v, int) or v < 0 for v in self.per_block):
            raise OptionError(f"token merging: per-block r must be non-negative integers, got {list(self.per_block)}")
        if self.skip is not None and self.skip < 0:
            raise OptionError(f"--dfe-skip must be >= 0, got {self.skip}")
        if self.window is not None and self.window < 1:
            raise OptionError(f"--lgtm-window must be >= 1, got {self.window}")
        if self.transition is not None and self.transition < 0:
            raise OptionError(f"--lgtm-transition must be >= 0, got {self.transition}")

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.per_block is not None:
            data["per_block"] = list(self.per_block)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TomeSchedule":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise VitrtError(f"token-merge schedule: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        values = dict(data)
        if values.get("per_block") is not None:
            values["per_block"] = tuple(values["per_block"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TomeSchedule":
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError; so is float("x")
            raise VitrtError(f"malformed token-merge schedule JSON: {exc}") from None


def parse_r(text: str) -> tuple[int, float]:
    """``--tome`` value: ``R`` or ``R,INFLECTION`` (ToMe's ramp) -> (r, inflection)."""
    parts = str(text).split(",")
    try:
        if len(parts) == 1:
            return int(parts[0]), 0.0
        if len(parts) == 2:
            return int(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise OptionError(f"--tome expects R or R,INFLECTION (e.g. 13 or 16,0.5), got {text!r}")


def parse_per_block(text: str) -> tuple[int, ...]:
    """``--tome-schedule`` value: comma-separated r of every block, e.g. ``0,0,8,8,8,8,8,8,8,8,8,8``."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise OptionError(f"--tome-schedule expects comma-separated integers (one r per block), got {text!r}") from None
    return values


def schedule_of(options) -> TomeSchedule | None:
    """The explicit schedule of ``--tome`` / ``--tome-schedule`` (None for the FLOPs / latency solvers)."""
    placement = dict(skip=options.skip, window=options.window, transition=options.transition)
    if options.r is not None:
        r, inflection = parse_r(options.r)
        return TomeSchedule(r=r, inflection=inflection, **placement)
    if options.schedule is not None:
        return TomeSchedule(per_block=parse_per_block(options.schedule), **placement)
    return None


@dataclass(frozen=True)
class BlockMerge:
    """How block ``index`` merges: ``windows`` windows (1 = global), ``per_window`` merges in each."""

    index: int
    tokens: int  # entering the block (prefix included)
    windows: int
    per_window: int
    permute: bool  # the first block merging inside windows gathers the patch tokens into quad-tree window order

    @property
    def merges(self) -> int:
        return self.windows * self.per_window

    @property
    def tokens_out(self) -> int:
        return self.tokens - self.merges


@dataclass(frozen=True)
class MergePlan:
    """A schedule resolved for one spec: every block's merge, with static token counts."""

    schedule: TomeSchedule
    prefix: int
    grid: int
    blocks: tuple[BlockMerge, ...]

    @property
    def tokens(self) -> list[int]:
        return [b.tokens for b in self.blocks]

    @property
    def tokens_out(self) -> list[int]:
        return [b.tokens_out for b in self.blocks]

    @property
    def r(self) -> list[int]:
        return [b.merges for b in self.blocks]

    @property
    def merges_anything(self) -> bool:
        return any(b.merges for b in self.blocks)

    def apply_to_spec(self, spec):
        """The spec with per-block ``tokens`` / ``tokens_out`` and the plan recorded in ``extra['token_merge']``."""
        self.check_matches(spec)
        blocks = [dataclasses.replace(b, tokens=m.tokens, tokens_out=m.tokens_out if m.merges else None)
                  for b, m in zip(spec.blocks, self.blocks)]
        extra = dict(spec.extra)
        extra["token_merge"] = self.to_dict()
        return spec.with_blocks(blocks).replace(extra=extra).validate()

    def notes(self) -> list[str]:
        """What resolving changed from what was asked: r capped to half a block's mergeable tokens, blocks without
        attention left unmerged (said in one line each and recorded in the manifest)."""
        wanted, _ = requested_r(self.schedule, len(self.blocks))
        capped = [(b.index, w, b.merges) for b, w in zip(self.blocks, wanted) if b.merges < w and b.per_window]
        unmerged = [b.index for b, w in zip(self.blocks, wanted) if w and not b.per_window]
        notes = []
        if capped:
            blocks = ", ".join(f"{i} ({w} -> {got})" for i, w, got in capped)
            notes.append(f"token merging: r capped to half of each block's mergeable tokens in blocks {blocks}")
        if unmerged:
            notes.append(f"token merging: blocks {unmerged} merge nothing (no attention left, or the cap is 0)")
        return notes

    def to_dict(self) -> dict:
        return {"schedule": self.schedule.to_dict(), "r": self.r, "tokens": self.tokens,
                "tokens_out": self.tokens_out, "windows": [b.windows for b in self.blocks],
                "per_window": [b.per_window for b in self.blocks], "prefix": self.prefix, "grid": self.grid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MergePlan":
        """Inverse of :meth:`to_dict`; the per-block records are rebuilt and checked for consistency."""
        try:
            schedule = TomeSchedule.from_dict(data["schedule"])
            prefix, grid = int(data["prefix"]), int(data["grid"])
            tokens, windows, per_window = ([int(v) for v in data[key]] for key in ("tokens", "windows", "per_window"))
        except (KeyError, TypeError, ValueError) as exc:
            raise VitrtError(f"malformed merge plan: missing or invalid field {exc}") from None
        if not len(tokens) == len(windows) == len(per_window):
            raise VitrtError("malformed merge plan: tokens, windows and per_window differ in length")
        first = first_local_merge(windows, per_window)
        blocks = tuple(BlockMerge(i, t, w, r, i == first)
                       for i, (t, w, r) in enumerate(zip(tokens, windows, per_window)))
        for b in blocks:
            mergeable = b.tokens - prefix
            if b.windows < 1 or b.per_window < 0 or mergeable < 0 or mergeable % b.windows:
                raise VitrtError(f"malformed merge plan: block {b.index} cannot split {mergeable} mergeable tokens "
                                 f"into {b.windows} window(s)")
            if b.per_window > mergeable // b.windows // 2:
                raise VitrtError(f"malformed merge plan: block {b.index} merges {b.per_window} per window, more than "
                                 f"half of its {mergeable // b.windows} tokens per window")
        if first is not None and blocks[first].tokens != prefix + grid * grid:
            raise VitrtError(f"malformed merge plan: block {first} merges inside windows after tokens were merged "
                             f"globally ({blocks[first].tokens} tokens, the {grid}x{grid} grid has {grid * grid})")
        if first is not None and (schedule.window is None or grid % schedule.window
                                  or blocks[first].windows not in window_levels(grid, schedule.window)):
            raise VitrtError(f"malformed merge plan: block {first} merges inside {blocks[first].windows} windows, which "
                             f"--lgtm-window {schedule.window} does not make on the {grid}x{grid} grid")
        for a, b in zip(blocks, blocks[1:]):
            if a.tokens_out != b.tokens:
                raise VitrtError(f"malformed merge plan: block {a.index} leaves {a.tokens_out} tokens, block "
                                 f"{b.index} takes {b.tokens}")
        return cls(schedule, prefix, grid, blocks)

    def check_matches(self, spec) -> None:
        """Refuse (one line) a plan made for another model: depth, prefix tokens, grid or incoming tokens differ."""
        made = (len(self.blocks), self.prefix, self.grid, self.blocks[0].tokens if self.blocks else spec.tokens)
        model = (spec.depth, spec.prefix_tokens, spec.grid, spec.tokens)
        if made != model:
            def say(depth, prefix, grid, tokens):
                return f"{depth} blocks, {prefix} prefix token(s), a {grid}x{grid} grid, {tokens} tokens"
            raise VitrtError(f"merge plan made for {say(*made)}; the model has {say(*model)}")
        bare = [b.index for b, s in zip(self.blocks, spec.blocks) if b.merges and not s.heads]
        if bare:
            raise VitrtError(f"merge plan merges in block(s) {bare}, which have no attention in this model")


def requested_r(schedule: TomeSchedule, depth: int) -> tuple[list[int], int]:
    """(r asked of every block before capping, DFE skip)."""
    if schedule.per_block is not None:
        if len(schedule.per_block) != depth:
            raise OptionError(f"--tome-schedule lists {len(schedule.per_block)} values but the model has {depth} blocks")
        if schedule.skip is not None:
            raise OptionError("--dfe-skip cannot be combined with --tome-schedule: write the skipped blocks as 0")
        skip = next((i for i, v in enumerate(schedule.per_block) if v), depth)
        return list(schedule.per_block), skip
    skip = depth // 6 if schedule.skip is None else schedule.skip
    if skip > depth:
        raise OptionError(f"--dfe-skip {skip} is larger than the model's {depth} blocks")
    merging = depth - skip
    r, inflect = schedule.r, float(schedule.inflection)
    if merging <= 1 or inflect == 0.0:
        ramp = [r] * merging
    else:  # ToMe's parse_r
        low = int(r * (1.0 - inflect))
        high = 2 * r - low
        step = (high - low) / (merging - 1)
        ramp = [int(low + step * i) for i in range(merging)]
    return [0] * skip + ramp, skip


def window_levels(grid: int, window: int) -> list[int]:
    """Windows per local level: (grid/window)², then joined 2 × 2 while the window grid side stays even."""
    if grid % window:
        raise OptionError(f"--lgtm-window {window} does not divide the {grid}x{grid} patch grid; pick a divisor of {grid}")
    side = grid // window
    levels = []
    while side > 1:
        levels.append(side * side)
        if side % 2:
            break
        side //= 2
    return levels


def resolve(schedule: TomeSchedule, spec) -> MergePlan:
    """Resolve ``schedule`` for ``spec`` (its depth, grid, prefix and incoming token count).

    Raises VitrtError (one line, naming the block) for an explicit schedule asking more than half a block's
    mergeable tokens, and for LGTM settings the grid cannot hold.
    """
    depth, prefix, grid = spec.depth, spec.prefix_tokens, spec.grid
    wanted, skip = requested_r(schedule, depth)
    strict = schedule.per_block is not None
    levels: list[int] = []
    if schedule.window is not None:
        levels = window_levels(grid, schedule.window)
        transition = len(levels) if schedule.transition is None else schedule.transition
        if transition > len(levels):
            raise OptionError(f"--lgtm-transition {transition}: windows of side {schedule.window} on the {grid}x{grid} "
                              f"grid allow at most {len(levels)} local block(s) before they cover the grid")
        levels = levels[:transition]
    elif schedule.transition:
        raise OptionError("--lgtm-transition needs --lgtm-window")
    tokens = spec.tokens
    layout: list[tuple[int, int, int]] = []  # (tokens in, windows, merges per window) of every block
    for i in range(depth):
        level = i - skip
        windows = levels[level] if 0 <= level < len(levels) else 1
        mergeable = tokens - prefix
        if mergeable % windows:  # cannot happen for schedules built here; guards hand-made specs
            raise VitrtError(f"block {i}: {mergeable} mergeable tokens do not split into {windows} windows")
        per_window_tokens = mergeable // windows
        cap = per_window_tokens // 2
        per_window = math.ceil(wanted[i] / windows) if wanted[i] else 0
        if per_window > cap:
            if strict:
                raise VitrtError(f"block {i}: r={wanted[i]} asks for more merges than its {mergeable} mergeable tokens "
                                 f"allow (at most {cap * windows}: half of them{' per window' if windows > 1 else ''}); "
                                 f"lower r for block {i}")
            per_window = cap
        if spec.blocks[i].heads == 0 and per_window:
            if strict:
                raise VitrtError(f"block {i} has no attention (pruned away), so no keys to merge by; set its r to 0")
            per_window = 0  # constant and ramp schedules merge in the blocks that have keys to merge by
        layout.append((tokens, windows, per_window))
        tokens -= windows * per_window
    first = first_local_merge([w for _, w, _ in layout], [r for _, _, r in layout])
    blocks = tuple(BlockMerge(i, t, w, r, i == first) for i, (t, w, r) in enumerate(layout))
    return MergePlan(schedule, prefix, grid, blocks)


def first_local_merge(windows, per_window) -> int | None:
    """The block that gathers the patch tokens into window order: the first one that merges inside windows.

    Not simply the first local block: that one may merge nothing (no attention, or a ramp starting at 0), and
    the windows of every later local block are only spatial once the tokens are in window order.
    """
    return next((i for i, (w, r) in enumerate(zip(windows, per_window)) if w > 1 and r > 0), None)


def quadtree_order(grid: int, window: int) -> list[int]:
    """Row-major patch indices listed window by window, windows in quad-tree (Z) order.

    Every 2 × 2 group of windows is contiguous at every level, so joining windows is a reshape.
    """
    side = grid // window
    windows = [(wy, wx) for wy in range(side) for wx in range(side)]

    def z_key(pos):
        wy, wx = pos
        key, bit = 0, 0
        while (1 << bit) < side:
            key |= ((wy >> bit) & 1) << (2 * bit + 1) | ((wx >> bit) & 1) << (2 * bit)
            bit += 1
        return key

    order = []
    for wy, wx in sorted(windows, key=z_key):
        for y in range(window):
            for x in range(window):
                order.append((wy * window + y) * grid + wx * window + x)
    return order
