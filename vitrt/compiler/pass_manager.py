"""The pass contract and the pass manager.

A pass is a small, stateless class constructed with its plan (plain data): a ``name``, the graph properties
it ``requires``, ``ensures`` and ``preserves``, ordering constraints (``run_after``: passes that must come
earlier when both are scheduled), its verification ``tolerance`` against the twin, and

    run(view, ctx) -> PassResult(view, modified, stats)        the ONNX rewrite
    apply_to_twin(twin) -> new twin                             the same change on the torch twin (never
                                                                mutates its input); identity for passes that
                                                                preserve the function

One manager runs the whole schedule. Before anything runs it checks the schedule: every ordering constraint
across all stages, and that each pass's requirements are ensured by the lowering or an earlier pass
(properties a pass neither ensures nor preserves are assumed lost). With ``check_properties`` (``--verify``)
the properties are also checked against the graph itself before and after every pass, and with a twin
the manager keeps the twin in step (``apply_to_twin``) so the verify instrument compares like with like.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import onnx_graphsurgeon as gs

from vitrt.compiler.errors import SpecError, VitrtError
from vitrt.compiler.graph import GraphView

# Properties that hold right after lowering, and how each is checked on a graph.
CANONICAL = "canonical"  # every node and weight the spec implies exists under its canonical name, shaped as implied
SHAPES_INFERRED = "shapes_inferred"  # every tensor has a dtype and a static shape (the batch may be symbolic)
TOPOSORTED = "toposorted"  # every node comes after the producers of its inputs
LOWERED_PROPERTIES = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})

# fp32 end-to-end tolerance of the canonical lowering and of every exact pass (max |logits| difference).
FP32_TOLERANCE = 1e-4


def _check_canonical(view: GraphView) -> str | None:
    try:
        GraphView(view.graph, view.spec)
    except SpecError as exc:
        return str(exc)
    return None


def _check_shapes(view: GraphView) -> str | None:
    for tensor in view.graph.tensors().values():
        if not isinstance(tensor, gs.Variable):
            continue
        shape = tensor.shape
        if tensor.dtype is None or shape is None:
            return f"tensor '{tensor.name}' has no inferred dtype or shape"
        symbolic = [d for d in shape if not isinstance(d, int)]
        if symbolic and not (len(symbolic) == 1 and not isinstance(shape[0], int)):
            return f"tensor '{tensor.name}' has a non-static shape {list(shape)}"
    return None


def _check_toposorted(view: GraphView) -> str | None:
    produced = {t.name for t in view.graph.inputs}
    for node in view.graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Variable) and tensor.name and tensor.inputs and tensor.name not in produced:
                return f"node '{node.name}' reads '{tensor.name}' before it is produced"
        produced.update(t.name for t in node.outputs)
    return None


PROPERTY_CHECKS: dict[str, Callable[[GraphView], str | None]] = {
    CANONICAL: _check_canonical, SHAPES_INFERRED: _check_shapes, TOPOSORTED: _check_toposorted}


def check_properties(view: GraphView, properties: Iterable[str]) -> list[str]:
    """Violations of ``properties`` in ``view`` (one line each, naming the property); empty when they hold."""
    problems = []
    for prop in sorted(properties):
        problem = PROPERTY_CHECKS[prop](view)
        if problem:
            problems.append(f"{prop}: {problem}")
    return problems


@dataclass
class PassResult:
    view: GraphView
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    build_hints: dict[str, Any] = field(default_factory=dict)  # e.g. {"sparse_weights": True} for the backend


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides the graph and its plan (it writes nothing here: passes are stateless)."""

    seed: int = 0


class Pass(ABC):
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset({CANONICAL})
    ensures: ClassVar[frozenset[str]] = frozenset()
    preserves: ClassVar[frozenset[str]] = frozenset({CANONICAL})
    run_after: ClassVar[tuple[str, ...]] = ()
    changes_function: ClassVar[bool] = False

    def tolerance(self) -> float:
        """Max |logits| difference allowed against the twin after this pass (fp32 unless precision changes)."""
        return FP32_TOLERANCE

    @abstractmethod
    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        """Rewrite ``view`` (in place or into a new view) and say whether anything changed."""

    def apply_to_twin(self, twin):
        """The same change on the torch twin, as a new twin; function-preserving passes return it unchanged."""
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
    tolerance: float = FP32_TOLERANCE

    def to_dict(self) -> dict:
        return {"name": self.name, "seconds": round(self.seconds, 4), "modified": self.modified,
                "changes_function": self.changes_function, "stats": self.stats}


class Instrument:
    """Hooks around every pass; instruments add entries to the pass's record stats."""

    def before_pass(self, p: Pass, view: GraphView) -> None:
        pass

    def after_pass(self, p: Pass, result: PassResult, twin, record: PassRecord) -> None:
        pass


class OpCountInstrument(Instrument):
    """Records how the op-type histogram changed (``op_delta``)."""

    def before_pass(self, p, view):
        self._before = view.op_counts()

    def after_pass(self, p, result, twin, record):
        after = result.view.op_counts()
        delta = {op: after.get(op, 0) - self._before.get(op, 0) for op in sorted(set(after) | set(self._before))}
        record.stats["op_delta"] = {op: d for op, d in delta.items() if d}
        record.stats["nodes"] = sum(after.values())


@dataclass
class PassManagerResult:
    view: GraphView
    records: list[PassRecord]
    twin: Any  # the twin after every function-changing pass (None when none was given)
    build_hints: dict[str, Any]

    @property
    def tolerance(self) -> float:
        """The tolerance the final graph is held to: the loosest any pass declared."""
        return max([FP32_TOLERANCE] + [r.tolerance for r in self.records])

    @property
    def changes_function(self) -> bool:
        return any(r.changes_function for r in self.records)


class PassManager:
    def __init__(self, passes: Iterable[Pass], instruments: Iterable[Instrument] = (),
                 initial_properties: frozenset[str] = LOWERED_PROPERTIES, check_properties: bool = False):
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.initial_properties = frozenset(initial_properties)
        self.check_properties = check_properties
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

    def run(self, view: GraphView, ctx: PassContext = PassContext(), twin=None,
            progress: Callable[[str], None] | None = None) -> PassManagerResult:
        """Run the schedule on ``view``; with ``twin``, keep it in step for the instruments and return it."""
        records, hints = [], {}
        properties = set(self.initial_properties)
        for p in self.passes:
            if progress is not None:
                progress(p.name)
            if self.check_properties:
                self._expect(view, p.requires, f"before pass '{p.name}' (its requirements)")
            for instrument in self.instruments:
                instrument.before_pass(p, view)
            start = time.perf_counter()
            result = p.run(view, ctx)
            changed = result.modified and p.changes_function
            if changed and twin is not None:
                twin = p.apply_to_twin(twin)
            record = PassRecord(p.name, time.perf_counter() - start, result.modified, dict(result.stats),
                                changes_function=changed, tolerance=p.tolerance())
            result.view.refresh()
            if result.modified:
                properties = (properties & p.preserves) | p.ensures
            if self.check_properties:
                self._expect(result.view, p.ensures | (properties & p.preserves), f"after pass '{p.name}'")
            for instrument in self.instruments:
                instrument.after_pass(p, result, twin, record)
            records.append(record)
            hints.update(result.build_hints)
            view = result.view
        return PassManagerResult(view, records, twin, hints)

    @staticmethod
    def _expect(view: GraphView, properties, when: str) -> None:
        problems = check_properties(view, properties)
        if problems:
            raise VitrtError(f"graph property violated {when}: {problems[0]}")
