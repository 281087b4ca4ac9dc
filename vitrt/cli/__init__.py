"""The ``vitrt`` command line. Every user error prints one line and exits 2; flags come from config dataclasses.

Each module in :data:`COMMAND_MODULES` contributes its subcommands through ``add_subcommands(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vitrt._version import __version__
from vitrt.compiler.errors import Interrupted, VitrtError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it

COMMAND_MODULES = (
    "vitrt.cli.compile",  # compile, prune-plan
    "vitrt.reports.demo",  # demo
    "vitrt.cli.reference",  # reference
    "vitrt.cli.synth",  # synth
    "vitrt.cli.lut",  # lut build | query | refine | plot
    "vitrt.cli.bench",  # bench, nvit-table, dcvit-table
    "vitrt.cli.lint_trt",  # lint-trt
    "vitrt.benchmarks.quantization",  # bench-quant-accuracy, bench-quant-speed
    "vitrt.benchmarks.sparsity_digits",  # sparsity-digits
    "vitrt.benchmarks.tome_bench",  # tome-bench
    "vitrt.cli.serving",  # export triton, serve, loadtest
    "vitrt.search.optimize",  # optimize
    "vitrt.search.study",  # study
    "vitrt.cli.debug",  # compare, sensitivity
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong and where the help is) and exit 2, not a usage dump."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vitrt", description="Deployment compiler for timm Vision Transformers.")
    parser.add_argument("--version", action="version", version=f"vitrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_subcommands(sub)
    return parser


def main(argv=None) -> int:
    """Run one command; its exit status (under torchrun, the process ends here: :func:`finish`)."""
    from vitrt.compiler.distributed import finish

    return finish(_run(argv))


def _run(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except VitrtError as exc:
        print(f"vitrt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"vitrt: interrupted; {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("vitrt: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
