"""The TensorRT lint: checks an ONNX model against TensorRT's documented rules, without TensorRT.

    report = lint(model)                 every rule of :data:`RULES` (operator, qdq, fusion)
    report.errors / report.warnings      Findings: rule id, severity, node, message, source
    qdq_findings(model)                  the Q/DQ rules only (the Q/DQ pass's postcondition)

The rules are data (:mod:`.rules`: id, severity, category, summary and the document + TensorRT version each is
read from; :mod:`.operators`: the ONNX-TensorRT parser's operator list and per-op restrictions); the checks are
one function per rule id in :mod:`.ops`, :mod:`.qdq` and :mod:`.fusion`. ``vitrt lint-trt MODEL.onnx`` prints a
report; every compile records one in the manifest (``trt_lint``) and, for ``--backend trt``, fails on an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.trt_lint import fusion, ops, qdq
from vitrt.compiler.trt_lint.graph import LintGraph
from vitrt.compiler.trt_lint.rules import ERROR, QDQ_RULES, RULES, WARNING, Rule, Source

CHECKS = {**ops.CHECKS, **qdq.CHECKS, **fusion.CHECKS}
assert set(CHECKS) == set(RULES), "every rule has exactly one check"


@dataclass(frozen=True)
class Finding:
    rule: str
    node: str
    message: str

    @property
    def severity(self) -> str:
        return RULES[self.rule].severity

    @property
    def source(self) -> Source:
        return RULES[self.rule].source

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"

    def to_dict(self) -> dict:
        return {"rule": self.rule, "node": self.node, "message": self.message, "source": str(self.source)}


@dataclass(frozen=True)
class LintReport:
    findings: tuple[Finding, ...]
    rules: tuple[str, ...] = field(default=tuple(RULES))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def summary(self) -> str:
        """One line: counts and the first error (else the first warning)."""
        first = (self.errors or self.warnings or [None])[0]
        head = f"TensorRT lint: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return head if first is None else f"{head}; first: {first}"

    def to_dict(self) -> dict:
        return {"errors": [f.to_dict() for f in self.errors], "warnings": [f.to_dict() for f in self.warnings],
                "rules_checked": list(self.rules)}


def lint(model: onnx.ModelProto, rules=None) -> LintReport:
    """Check ``model`` against ``rules`` (rule ids; default: all). The model is not modified."""
    rules = tuple(RULES) if rules is None else tuple(rules)
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        raise VitrtError(f"unknown TensorRT lint rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
    graph = LintGraph(model)
    findings = [Finding(rule, node, message) for rule in rules for node, message in CHECKS[rule](graph)]
    return LintReport(tuple(findings), rules)


def qdq_findings(model: onnx.ModelProto) -> list[Finding]:
    """Violations of the Q/DQ rules (errors and placement warnings alike): the Q/DQ pass's postcondition."""
    return list(lint(model, QDQ_RULES).findings)


def check_trt(model: onnx.ModelProto) -> LintReport:
    """:func:`lint`, raising a one-line VitrtError naming the first error (for ``--backend trt``)."""
    report = lint(model)
    if report.errors:
        first = report.errors[0]
        more = f" (and {len(report.errors) - 1} more; see vitrt lint-trt)" if len(report.errors) > 1 else ""
        where = f" at node '{first.node}'" if first.node else ""
        raise VitrtError(f"TensorRT would not accept the compiled graph: {first}{where}{more}")
    return report


__all__ = ["CHECKS", "Finding", "LintReport", "RULES", "Rule", "Source", "check_trt", "lint", "qdq_findings"]
