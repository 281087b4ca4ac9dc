"""``vitrt compare`` (layer-by-layer comparison, bisection) and ``vitrt sensitivity`` (per-layer quantization
sensitivity): the accuracy-debugging commands of :mod:`vitrt.debug`."""

from __future__ import annotations

from vitrt.compiler.options import add_command


def _compare(config) -> int:
    from vitrt.debug.compare import run

    return run(config)


def _sensitivity(config) -> int:
    from vitrt.debug.sensitivity import run

    return run(config)


def _digits(config) -> int:
    from vitrt.debug.digits import run

    return run(config)


def add_subcommands(sub) -> None:
    from vitrt.debug.config import CompareConfig, SensitivityConfig
    from vitrt.debug.digits import DigitsDebugConfig

    add_command(sub, "compare", CompareConfig, _compare,
                "compare a compiled graph with its twin (or with another OUT) at every block, attention and MLP "
                "output and Q/DQ'd activation; --bisect finds the layers to revert",
                description="Run OUT's graph with every canonical intermediate as an output against the twin the "
                            "compile verified against (compile with --keep-twin), or graph B against graph A; print "
                            "and write the per-point table, the first point over its tolerance, the block adding the "
                            "most error and an error-growth plot.")
    add_command(sub, "sensitivity", SensitivityConfig, _sensitivity,
                "score every quantizable layer by how much the output moves when only it is quantized; ranked table "
                "and plot that compile --keep-float-top K --sensitivity FILE reads",
                description="Calibrate MODEL at --precision once, then quantize one layer at a time (and, with "
                            "--float-one, keep one layer at a time float) and measure the KL of the output against "
                            "the float twin, the top-1 agreement and, with digits, the top-1; write the ranked "
                            "sensitivity.json / .md / .png into -o DIR.")
    add_command(sub, "debug-digits", DigitsDebugConfig, _digits,
                "the accuracy-debugging figures on the digits reference: compare an int8 compile, recover an "
                "aggressive int8 setting by --bisect and --keep-float-top (benchmarks/results/debug_*)")
