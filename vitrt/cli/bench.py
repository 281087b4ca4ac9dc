"""``vitrt bench``, ``vitrt nvit-table`` and ``vitrt dcvit-table``: latency of compiled artifacts and models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import add_arguments, command_line, from_args, option
from vitrt.compiler.output import result_file
from vitrt.compiler.progress import progress_for
from vitrt.compiler.target import TORCH_COMPILE_MODES
from vitrt.compiler.timing import CLOCKS


@dataclass(frozen=True)
class BenchConfig:
    target: str = option(None, "a compiled OUT directory, a timm model name (random weights) or digits (the "
                         "reference)", positional=True, metavar="OUT|MODEL")
    batch: str = option("1", "comma-separated batch sizes, e.g. 1,8,32", metavar="B1,B2,..")
    backend: str | None = option(None, "backend(s), comma-separated: several (e.g. ort,torch) time the same graph "
                                 "side by side (default: the OUT's own backend; ort for a model name)",
                                 metavar="B1,B2,..")
    device: str | None = option(None, "device of the torch backend: cpu (default), cuda or cuda:N", metavar="DEVICE")
    torch_compile: str = option("off", "torch backend: run through torch.compile", choices=TORCH_COMPILE_MODES)
    img_size: int | None = option(None, "image size for a model name", type=int, metavar="N")
    iterations: int = option(20, "timed runs per batch size (per round when side by side)", type=int, metavar="N")
    warmup: int = option(3, "warm-up runs per batch size", type=int, metavar="N")
    rounds: int = option(5, "interleaved rounds when several backends are timed side by side", type=int, metavar="N")
    clock: str | None = option(None, "wall, cpu (least CPU time of a single-threaded run: needs --threads 1) or cuda "
                               "(CUDA events: --backend torch --device cuda); default: the runner's own (CUDA events "
                               "on a GPU, else wall; wall side by side)", choices=CLOCKS)
    threads: int | None = option(None, "intra-op threads (ONNX Runtime per session, torch process-wide)", type=int,
                                 metavar="N")
    json: Path | None = option(None, "also write the results as JSON", writes="file", type=Path, metavar="PATH")
    quiet: bool = option(False, "no progress output")


@dataclass(frozen=True)
class NvitTableConfig:
    outs: str = option(None, "compiled OUT directories, the dense reference first", positional=True, metavar="OUT")
    rounds: int = option(5, "interleaved timing rounds", type=int, metavar="N")
    iterations: int = option(5, "timed runs per artifact per round", type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    clock: str = option("wall", "wall (median) or cpu (least CPU time of a single-threaded run: needs --threads 1; "
                        "steadier for ratios on a shared machine)", choices=("wall", "cpu"))
    out: Path | None = option(None, "write OUT.json and OUT.md",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")
    quiet: bool = option(False, "no progress output")


# --- bench and the paper tables -------------------------------------------------------------------
def _cmd_bench(args) -> int:
    from vitrt.benchmarks.harness import bench_target, format_bench, parse_backends, parse_batches, write_json

    config = from_args(BenchConfig, args)
    result = bench_target(config.target, parse_batches(config.batch), backend=parse_backends(config.backend),
                          device=config.device, torch_compile=config.torch_compile, iterations=config.iterations,
                          warmup=config.warmup, img_size=config.img_size, threads=config.threads, clock=config.clock,
                          rounds=config.rounds, progress=progress_for(config))
    print(format_bench(result))
    if config.json:
        write_json(config.json, {**result, "command": command_line()})
    return 0


def _cmd_nvit_table(args) -> int:
    from vitrt.benchmarks.harness import format_nvit, nvit_table, write_json

    config = from_args(NvitTableConfig, args)
    result = nvit_table(list(config.outs), rounds=config.rounds, iterations=config.iterations,
                        threads=config.threads, clock=config.clock, progress=progress_for(config))
    text = format_nvit(result)
    print(text)
    if config.out:
        write_json(result_file(config.out, ".json"), {**result, "command": command_line()})
        result_file(config.out, ".md").write_text(f"# NViT Table 1 style\n\nCommand:\n\n```\n{command_line()}\n"
                                                       f"```\n\n{text}\n")
    return 0


def _cmd_dcvit_table(args) -> int:
    from vitrt.benchmarks.dcvit import DcvitConfig, main

    return main(from_args(DcvitConfig, args), command_line())


def add_subcommands(sub) -> None:
    from vitrt.benchmarks.dcvit import DcvitConfig

    parser = sub.add_parser("bench", help="latency / throughput of a compiled OUT or a timm model at several batches")
    add_arguments(parser, BenchConfig)
    parser.set_defaults(func=_cmd_bench)
    parser = sub.add_parser("nvit-table", help="NViT Table 1 style: params, FLOPs, speedup vs the first OUT")
    parser.add_argument("outs", nargs="+", metavar="OUT", help=NvitTableConfig.__dataclass_fields__["outs"].metadata["help"])
    add_arguments(parser, NvitTableConfig, skip=("outs",))
    parser.set_defaults(func=_cmd_nvit_table)
    parser = sub.add_parser("dcvit-table", help="DC-ViT Table 8: latency with each block's Block/Attn/FFN removed")
    add_arguments(parser, DcvitConfig)
    parser.set_defaults(func=_cmd_dcvit_table)
