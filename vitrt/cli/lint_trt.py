"""``vitrt lint-trt MODEL.onnx``: check an ONNX model against TensorRT's documented rules, without TensorRT.

Prints one line per finding (severity, rule, node, message) and a summary; ``--json PATH`` also writes the report
(the manifest's ``trt_lint`` section). Exit code 0 when no rule is broken (warnings allowed unless ``--strict``),
1 when it is, 2 when the model cannot be read. ``--rules`` lists every rule with its source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import add_command, option


@dataclass(frozen=True)
class LintTrtConfig:
    model: Path | None = option(None, "the ONNX model to check (e.g. OUT/model.onnx)", positional=True, type=Path,
                                metavar="MODEL.onnx", nargs="?")
    json: Path | None = option(None, "also write the report as JSON", writes="file", type=Path, metavar="PATH")
    strict: bool = option(False, "exit 1 on warnings (fusions TensorRT cannot make) too")
    rules: bool = option(False, "list the rules with their severity and source, and exit")


def run(config: LintTrtConfig) -> int:
    from vitrt.compiler.errors import VitrtError
    from vitrt.compiler.onnx_file import read_onnx
    from vitrt.compiler.trt_lint import RULES, lint

    if config.rules:
        ignored = [name for name, given in ((config.model, config.model is not None), ("--json", config.json),
                                            ("--strict", config.strict)) if given]
        if ignored:  # each would be silently ignored: --json wrote no file, --strict changed no exit code
            raise VitrtError(f"--rules lists the rules and reads no model: drop {ignored[0]} or --rules")
        for rule in RULES.values():
            print(f"{rule.id:<24} {rule.severity:<8} {rule.summary}\n{'':<33}source: {rule.source}")
        return 0
    if config.model is None:
        raise VitrtError("no model given: vitrt lint-trt MODEL.onnx (or --rules)")
    model = read_onnx(config.model, fix="pass OUT/model.onnx")
    report = lint(model)
    for finding in report.errors + report.warnings:
        where = f" {finding.node}:" if finding.node else ""
        print(f"{finding.severity}: [{finding.rule}]{where} {finding.message}")
    print(report.summary().split("; first:")[0])
    if config.json:
        config.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 1 if report.errors or (config.strict and report.warnings) else 0


def add_subcommands(sub) -> None:
    add_command(sub, "lint-trt", LintTrtConfig, run, "check an ONNX model against TensorRT's rules (no TensorRT needed)")
