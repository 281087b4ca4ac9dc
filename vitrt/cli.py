"""The ``vitrt`` command line. Every user error prints one line and exits 2; flags come from the config dataclasses."""

from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__
from .compiler.config import CompileConfig, add_arguments, from_args
from .compiler.errors import VitrtError

EXIT_USAGE = 2


def _cmd_compile(args) -> int:
    from .compiler.api import compile

    result = compile(config=from_args(CompileConfig, args))
    print_summary(result.manifest)
    return 0


def print_summary(manifest: dict) -> None:
    rows = [("model", manifest["model"]), ("input", "x".join(map(str, manifest["input_shape"]))),
            ("params", f"{manifest['params']['before']:,} -> {manifest['params']['after']:,}"),
            ("GFLOPs/image", f"{manifest['flops']['before'] / 1e9:.3f} -> {manifest['flops']['after'] / 1e9:.3f}")]
    if "verify" in manifest:
        rows.append(("max abs err", f"{manifest['verify']['max_abs_err']:.2e} vs {manifest['verify']['reference']}"))
    if "latency" in manifest:
        lat = manifest["latency"]
        rows.append(("latency", f"{lat['median_ms']:.2f} ms median, {lat['p90_ms']:.2f} ms p90, "
                                f"{lat['images_per_s']:.1f} images/s on {lat['device']}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def add_compile_subcommand(sub) -> None:
    parser = sub.add_parser("compile", help="compile a timm ViT into an engine + manifest",
                            description="Lower a timm ViT to canonical ONNX, run the passes, build the backend "
                                        "artifact and write OUT/manifest.json.")
    add_arguments(parser, CompileConfig)
    parser.set_defaults(func=_cmd_compile)


# Modules that contribute subcommands: each has ``add_subcommands(subparsers)`` setting ``func`` per command.
SUBCOMMAND_MODULES = (
    "vitrt.calib.demo",
    "vitrt.benchmarks.commands",
    "vitrt.benchmarks.quantization",
    "vitrt.benchmarks.sparsity_digits",
    "vitrt.benchmarks.tome_bench",  # issue 5
    "vitrt.calib.pruning",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitrt", description="Deployment compiler for timm Vision Transformers.")
    parser.add_argument("--version", action="version", version=f"vitrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_compile_subcommand(sub)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_subcommands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VitrtError as exc:
        print(f"vitrt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vitrt: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
