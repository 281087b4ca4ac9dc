"""``vitrt export triton``, ``vitrt serve`` and ``vitrt loadtest``: compiled artifacts behind Triton, on loopback."""

from __future__ import annotations

import sys

from vitrt.compiler.options import add_arguments, add_command, command_line, from_args
from vitrt.compiler.progress import progress_for
from vitrt.serving.loadtest import LoadtestConfig
from vitrt.serving.repository import ExportTritonConfig
from vitrt.serving.server import ServeConfig


def _export_triton(config: ExportTritonConfig) -> int:
    from vitrt.serving.repository import export_triton

    target = export_triton(config, command_line())
    also = (f"; with {target.name}_preprocess/ and {target.name}_ensemble/ beside it (send raw images to "
            f"{target.name}_ensemble)" if config.preprocess else "")
    print(f"wrote {target} (config.pbtxt, 1/, labels.txt, vitrt.json){also}")
    return 0


def _serve(config: ServeConfig) -> int:
    from vitrt.serving.server import serve

    serve(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def _loadtest(config: LoadtestConfig) -> int:
    from vitrt.compiler.output import write_json
    from vitrt.serving.loadtest import failure_line, format_table, loadtest

    result = loadtest(config, progress_for(config))
    print(format_table(result))
    if config.json:
        write_json(config.json, {**result, "command": command_line()})
    failure = failure_line(result)
    if failure:  # a load test whose requests mostly failed is not a measurement: say so, and fail a CI step
        print(f"vitrt: error: {failure}", file=sys.stderr)
        return 1
    return 0


def add_subcommands(sub) -> None:
    export = sub.add_parser("export", help="write a compiled OUT in a serving format")
    export_sub = export.add_subparsers(dest="export_format", required=True)
    parser = export_sub.add_parser("triton", help="a Triton model repository entry: config.pbtxt, the engine, labels")
    add_arguments(parser, ExportTritonConfig)
    parser.set_defaults(func=lambda args: _export_triton(from_args(ExportTritonConfig, args)))
    add_command(sub, "serve", ServeConfig, _serve, "serve a compiled OUT on a Triton Inference Server "
                "(PyTriton) at 127.0.0.1 until SIGINT/SIGTERM")
    add_command(sub, "loadtest", LoadtestConfig, _loadtest, "bounded load test of a served model on this machine: "
                "throughput, latency percentiles, errors, top-1")
