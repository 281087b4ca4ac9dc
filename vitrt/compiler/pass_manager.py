"""The pass contract and the pass manager.

A pass is a small class: a ``name``, the graph properties it ``requires`` and ``ensures``, ordering
constraints (``run_after``: passes that must come earlier when both are scheduled), and
``run(view, ctx) -> PassResult``. A pass that changes the model's function also implements
``apply_to_twin`` so the torch twin undergoes the same change and stays the verification reference.

The manager checks the whole schedule before running anything (unknown ordering, unmet requirements),
then runs each pass with its instruments around it. Properties a modifying pass does not list in
``ensures`` or ``preserves`` are dropped, so a later pass that requires them fails the schedule check.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from .errors import VitrtError
from .graph import GraphView

# Properties that hold right after lowering.
CANONICAL = "canonical"  # every node the spec implies exists under its canonical name
SHAPES_INFERRED = "shapes_inferred"
TOPOSORTED = "toposorted"
LOWERED_PROPERTIES = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})


@dataclass
class PassResult:
    view: GraphView
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What passes may read besides the graph, and what they hand to the rest of the compile.

    ``manifest``: extra top-level manifest fields (e.g. ``{"pruning": {...}}``), merged by ``compile()``.
    ``files``: extra files for OUT, name -> writer(path) called with the staging path.
    ``build``: backend build hints, e.g. ``{"sparse_weights": True}`` when the graph holds 2:4 weights.
    """

    twin: Any = None  # vitrt.compiler.twin.CanonicalViT, updated by function-changing passes
    options: Any = None  # the CompileConfig
    seed: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset({CANONICAL})
    ensures: ClassVar[frozenset[str]] = frozenset()
    preserves: ClassVar[frozenset[str]] = frozenset({CANONICAL})
    run_after: ClassVar[tuple[str, ...]] = ()
    changes_function: ClassVar[bool] = False

    @abstractmethod
    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        """Rewrite ``view`` (in place or into a new view) and say whether anything changed."""

    def apply_to_twin(self, twin, ctx: PassContext):
        """The same change on the torch twin; function-preserving passes leave it alone."""
        if self.changes_function:
            raise NotImplementedError(f"pass '{self.name}' changes the function but has no twin transform")
        return twin


@dataclass
class PassRecord:
    name: str
    seconds: float = 0.0
    modified: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    changes_function: bool = False  # the pass modified the graph and is not function-preserving
    verify_tolerance: float = 0.0  # a reduced-precision pass's own tolerance against its twin (0: the fp32 one)

    def to_dict(self) -> dict:
        return {"name": self.name, "seconds": round(self.seconds, 4), "modified": self.modified,
                "changes_function": self.changes_function, "stats": self.stats}


class Instrument:
    """Hooks around every pass; instruments add entries to the pass's record stats."""

    def before_pass(self, p: Pass, view: GraphView, ctx: PassContext) -> None:
        pass

    def after_pass(self, p: Pass, result: PassResult, ctx: PassContext, record: PassRecord) -> None:
        pass


class OpCountInstrument(Instrument):
    """Records how the op-type histogram changed (``op_delta``)."""

    def before_pass(self, p, view, ctx):
        self._before = view.op_counts()

    def after_pass(self, p, result, ctx, record):
        after = result.view.op_counts()
        delta = {op: after.get(op, 0) - self._before.get(op, 0) for op in sorted(set(after) | set(self._before))}
        record.stats["op_delta"] = {op: d for op, d in delta.items() if d}
        record.stats["nodes"] = sum(after.values())


class PassManager:
    def __init__(self, passes: Iterable[Pass], instruments: Iterable[Instrument] = (),
                 initial_properties: frozenset[str] = LOWERED_PROPERTIES):
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.initial_properties = frozenset(initial_properties)
        self.check_schedule()

    def check_schedule(self) -> None:
        """Refuse a schedule whose ordering constraints or property requirements cannot hold."""
        positions = {}
        for index, p in enumerate(self.passes):
            if p.name in positions:
                raise VitrtError(f"pass '{p.name}' is scheduled twice")
            positions[p.name] = index
        for index, p in enumerate(self.passes):
            for earlier in p.run_after:
                if earlier in positions and positions[earlier] > index:
                    raise VitrtError(f"pass '{p.name}' must run after '{earlier}', but is scheduled before it")
        properties = set(self.initial_properties)
        for p in self.passes:
            missing = p.requires - properties
            if missing:
                raise VitrtError(f"pass '{p.name}' requires {sorted(missing)}, which no earlier pass ensures; "
                                 "schedule the cleanup pass before it")
            # Conservative: assume the pass modifies the graph.
            properties = (properties & p.preserves) | p.ensures
        self.final_properties = frozenset(properties)

    def run(self, view: GraphView, ctx: PassContext, progress=None) -> tuple[GraphView, list[PassRecord]]:
        records = []
        for p in self.passes:
            if progress is not None:
                progress(p.name)
            for instrument in self.instruments:
                instrument.before_pass(p, view, ctx)
            start = time.perf_counter()
            result = p.run(view, ctx)
            if result.modified and p.changes_function and ctx.twin is not None:
                ctx.twin = p.apply_to_twin(ctx.twin, ctx)
            record = PassRecord(p.name, time.perf_counter() - start, result.modified, dict(result.stats),
                                changes_function=result.modified and p.changes_function,
                                verify_tolerance=getattr(p, "verify_tolerance", 0.0))
            result.view.refresh()
            for instrument in self.instruments:
                instrument.after_pass(p, result, ctx, record)
            records.append(record)
            view = result.view
        return view, records
