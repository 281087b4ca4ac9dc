"""``vitrt compare`` (layer-by-layer comparison, bisection) and ``vitrt sensitivity`` (per-layer quantization
sensitivity): the accuracy-debugging commands of :mod:`vitrt.debug`."""

from __future__ import annotations

from vitrt.compiler.options import add_command


def _compare(config) -> int:
    from vitrt.debug.compare import run

    return run(config)


def add_subcommands(sub) -> None:
    from vitrt.debug.config import CompareConfig

    add_command(sub, "compare", CompareConfig, _compare,
                "compare a compiled graph with its twin (or with another OUT) at every block, attention and MLP "
                "output and Q/DQ'd activation; --bisect finds the layers to revert",
                description="Run OUT's graph with every canonical intermediate as an output against the twin the "
                            "compile verified against (compile with --keep-twin), or graph B against graph A; print "
                            "and write the per-point table, the first point over its tolerance, the block adding the "
                            "most error and an error-growth plot.")
