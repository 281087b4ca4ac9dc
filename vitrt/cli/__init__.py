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
EXIT_TERMINATED = 143  # 128 + SIGTERM

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as Ctrl-C does (staging directories removed)."""


def _terminate(signum, frame):
    raise Terminated()


def interruption_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` wraps, if any: one raised while Python creates a class (an import under
    way) reaches us as "RuntimeError: Error calling __set_name__", caused by the interrupt."""
    cause = exc.__cause__
    return cause if isinstance(cause, KeyboardInterrupt) else None


def _run(argv) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # a command that handles SIGTERM itself (vitrt serve) installs its own handler, and restores this one
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        try:
            return args.func(args) or 0
        except RuntimeError as exc:
            raise interruption_in(exc) or exc
    except VitrtError as exc:
        print(f"vitrt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as exc:  # numpy's says how much it wanted: a batch or image count this machine cannot hold
        wanted = f" ({exc})" if str(exc) else ""
        print(f"vitrt: error: out of memory{wanted}: use a smaller --batch or fewer images", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:
        print(f"vitrt: interrupted; {exc}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc.__context__, Terminated) else EXIT_INTERRUPTED
    except KeyboardInterrupt as exc:
        print(f"vitrt: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; nothing was written",
              file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
