"""``vitrt lut build | merge | query | refine | plot``: the latency lookup table from the command line."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lut import PRECISIONS, SPARSITIES
from vitrt.compiler.options import add_arguments, from_args, option
from vitrt.compiler.progress import progress_for
from vitrt.compiler.target import BACKENDS, check_precision_runs
from vitrt.compiler.timing import CLOCKS

PLOT_FORMATS = (".png", ".svg", ".pdf")
BLOCK_DIMS = ("emb", "heads", "qk", "v", "mlp", "tokens")  # what a block query sizes (and --tokens-out, optional)


@dataclass(frozen=True)
class LutBuildConfig:
    backend: str = option("ort", "backend to time on: ort (ONNX Runtime CPU), trt (TensorRT GPU) or torch "
                          "(PyTorch on --device)", choices=BACKENDS)
    device: str | None = option(None, "device of --backend torch: cpu (default), cuda, cuda:N or cuda:local (torchrun: "
                                "the GPU of LOCAL_RANK)", metavar="DEVICE")
    grid: str = option("coarse", "grid preset: coarse (CPU, minutes), dense (NViT's grid, for a GPU), digits (the "
                       "digits reference and what compression makes of it), tiny (tests)",
                       choices=("coarse", "dense", "digits", "tiny"))
    batch: int = option(1, "batch size the table is measured at", type=int, metavar="N")
    precision: str = option("fp32", "precision key to build (the subgraphs are timed after that precision's passes; "
                            "another key of an existing table is added to it)", choices=PRECISIONS)
    sparsity: str = option("dense", "sparsity key to build (2:4: masked weights, timed as the backend runs them)",
                           choices=SPARSITIES)
    threads: int | None = option(None, "intra-op threads (default: the runtime's, as vitrt compile)",
                                 type=int, metavar="N")
    iterations: int = option(5, "timed runs per grid point (median)", type=int, metavar="N")
    clock: str | None = option(None, "wall: wall-clock latency (what vitrt compile --bench measures on a CPU); cpu: "
                               "CPU time of a single-threaded run, robust on a shared machine (needs --threads 1); "
                               "cuda: CUDA events (what --bench measures on a GPU). Default: cuda on a GPU backend, "
                               "else wall", choices=CLOCKS)
    shard: str | None = option(None, "time only shard K of N (0 <= K < N: every N-th grid point from the K-th) and "
                               "write -o lut.json as lut.partK-of-N.json; 'env' takes K/N from torchrun "
                               "(RANK/WORLD_SIZE) or a Slurm array (SLURM_ARRAY_TASK_ID/COUNT); join the parts with "
                               "vitrt lut merge", metavar="K/N")
    out: Path | None = option(None, "the table file to write (an interrupted build of it is resumed)", writes="file",
                              flag="-o/--out", type=Path, metavar="LUT")
    quiet: bool = option(False, "no progress output")


@dataclass(frozen=True)
class LutMergeConfig:
    parts: list[Path] = option(None, "partial tables (vitrt lut build --shard K/N outputs) and whole tables of other "
                               "precision/sparsity keys", positional=True, type=Path, nargs="+", metavar="PART")
    out: Path | None = option(None, "the merged table to write",
                              writes="file", flag="-o/--out", type=Path, metavar="LUT")


@dataclass(frozen=True)
class LutQueryConfig:
    lut: Path = option(None, "latency table file", positional=True, type=Path, metavar="LUT")
    emb: int | None = option(None, "embedding dim", type=int, metavar="N")
    heads: int | None = option(None, "attention heads (0: attention removed)", type=int, metavar="N")
    qk: int | None = option(None, "query/key dim per head", type=int, metavar="N")
    v: int | None = option(None, "value dim per head", type=int, metavar="N")
    mlp: int | None = option(None, "MLP hidden dim (0: MLP removed)", type=int, metavar="N")
    tokens: int | None = option(None, "tokens entering the block", type=int, metavar="N")
    tokens_out: int | None = option(None, "tokens the MLP runs on after merging (default: --tokens)", type=int,
                                    metavar="N")
    model: str | None = option(None, "predict a whole timm model instead of one block (e.g. deit_tiny_patch16_224)",
                               metavar="MODEL")
    manifest: Path | None = option(None, "predict the spec_after of a compiled OUT/manifest.json", type=Path,
                                   metavar="PATH")
    precision: str | None = option(None, "precision key (default: fp32; with --manifest, the manifest's)",
                                   choices=PRECISIONS)
    sparsity: str | None = option(None, "sparsity key (default: dense; with --manifest, the manifest's)",
                                  choices=SPARSITIES)
    clamp: bool = option(False, "clamp points outside the grid to its edge instead of failing")
    json: bool = option(False, "print JSON")


@dataclass(frozen=True)
class LutRefineConfig:
    lut: Path = option(None, "latency table file (updated atomically)", positional=True, type=Path, metavar="LUT")
    source: Path | None = option(None, "OUT/manifest.json of a vitrt compile --bench", flag="--from", type=Path,
                                 metavar="MANIFEST")
    precision: str | None = option(None, "precision key (default: the manifest's, else fp32)",
                                   choices=PRECISIONS)
    sparsity: str | None = option(None, "sparsity key (default: the manifest's, else dense)", choices=SPARSITIES)


@dataclass(frozen=True)
class LutPlotConfig:
    lut: Path = option(None, "latency table file", positional=True, type=Path, metavar="LUT")
    out: Path | None = option(None, "PNG to write", writes="file", flag="-o/--out", type=Path, metavar="PNG")
    precision: str = option("fp32", "precision key", choices=PRECISIONS)
    sparsity: str = option("dense", "sparsity key", choices=SPARSITIES)


# --- lut -----------------------------------------------------------------------------------------
def _cmd_lut_build(args) -> int:
    import dataclasses

    from vitrt.benchmarks.harness import check_counts
    from vitrt.benchmarks.lut_build import LUT_TIMING, build_table, parse_shard, shard_path
    from vitrt.compiler.timing import default_clock

    config = from_args(LutBuildConfig, args)
    if config.out is None:
        raise VitrtError("no output file: pass -o LUT")
    check_counts(iterations=config.iterations, threads=config.threads)
    check_precision_runs(config.precision, config.backend)
    shard = parse_shard(config.shard)
    table = build_table(config.out, backend=config.backend, grid=config.grid, batch=config.batch,
                        precision=config.precision, sparsity=config.sparsity, threads=config.threads,
                        timing=dataclasses.replace(LUT_TIMING, iterations=config.iterations,
                                                   clock=config.clock or default_clock(config.backend, config.device)),
                        progress=progress_for(config), device=config.device, shard=shard)
    part = f", shard {shard[0]} of {shard[1]}" if shard else ""
    print(f"wrote {shard_path(config.out, shard)}: {config.backend} on {table.device}, batch {table.batch}, grid "
          f"{config.grid}, {config.precision}/{config.sparsity}{part}, {table.clock} clock, built in "
          f"{table.meta['build_seconds']} s")
    return 0


def _cmd_lut_merge(args) -> int:
    from vitrt.benchmarks.lut_merge import merge_tables
    from vitrt.compiler.lut import inversion_note

    config = from_args(LutMergeConfig, args)
    if config.out is None:
        raise VitrtError("no output file: pass -o LUT")
    table = merge_tables(list(config.parts))
    table.save(config.out)
    print(f"wrote {config.out}: {len(config.parts)} parts, keys {', '.join(table.keys())}, {table.backend} on "
          f"{table.device}, batch {table.batch}, {table.clock} clock")
    if note := inversion_note(table.meta["inversions"]["compared"], table.meta["inversions"]["found"]):
        print(f"note: {note}")
    return 0


def _spec_for_query(config):
    from vitrt.compiler.spec import ViTSpec

    if config.model:
        from vitrt.compiler.models import spec_of_timm
        from vitrt.pipeline.driver import model_by_name

        return spec_of_timm(model_by_name(config.model))  # digits: the reference, as compile, bench and synth take it
    from vitrt.pipeline.feedback import read_manifest

    manifest = read_manifest(config.manifest)
    if "spec_after" not in manifest:
        raise VitrtError(f"'{config.manifest}' has no spec_after: it was not written by vitrt compile")
    return ViTSpec.from_dict(manifest["spec_after"])


def _cmd_lut_query(args) -> int:
    from vitrt.compiler.lut import LatencyTable

    config = from_args(LutQueryConfig, args)
    given = ["--" + k.replace("_", "-") for k in (*BLOCK_DIMS, "tokens_out") if getattr(config, k) is not None]
    if config.model and config.manifest:
        raise VitrtError("--model and --manifest both name the model to predict: pass one")
    if (config.model or config.manifest) and given:
        raise VitrtError(f"{given[0]} sizes a single block; a whole model (--model / --manifest) brings its own "
                         "dims: drop it, or query the block alone")
    keys = [flag for flag, value in (("--precision", config.precision), ("--sparsity", config.sparsity)) if value]
    if config.manifest and keys:  # it would be answered for the manifest's keys, not for the one given
        raise VitrtError(f"--manifest brings its compile's precision and sparsity: drop {keys[0]}")
    table = LatencyTable.load(config.lut)
    if config.manifest:  # a compiled model is answered for its own batch, backend and precision, or refused
        from vitrt.pipeline.feedback import compile_precision, read_manifest

        manifest = read_manifest(config.manifest)
        precision, sparsity = compile_precision(None, manifest)
        shape = manifest.get("input_shape")
        batch = shape[0] if isinstance(shape, list) and shape else None  # a damaged shape: checked as no batch
        table.check(backend=manifest.get("backend"), batch=batch if isinstance(batch, int) else None,
                    precision=precision, sparsity=sparsity)
        config = replace(config, precision=precision, sparsity=sparsity)
    kw = dict(precision=config.precision or "fp32", sparsity=config.sparsity or "dense")
    if config.model or config.manifest:
        spec = _spec_for_query(config)

        def query(clamp):
            return table.model_breakdown(spec, **kw, clamp=clamp)
    else:
        dims = {k: getattr(config, k) for k in BLOCK_DIMS}
        missing = [k for k, val in dims.items() if val is None and not (k in ("qk", "v") and dims["heads"] == 0)]
        if missing:
            raise VitrtError(f"block query needs --{' --'.join(missing)} (or --model / --manifest for a whole model)")
        if dims["heads"] == 0 and (dims["qk"] or dims["v"]):  # they would be ignored: no attention is timed
            raise VitrtError("--heads 0 removes the attention, which --qk / --v size: drop them")
        dims = {k: (val or 0) for k, val in dims.items()}
        bad = [k for k, val in dims.items() if val < 0 or (val == 0 and k in ("emb", "tokens"))
               or (val == 0 and k in ("qk", "v") and dims["heads"] > 0)]
        if bad:  # 0 heads / mlp: that half removed; nothing else is a size
            raise VitrtError(f"--{bad[0]} {dims[bad[0]]} is not a size: dims are >= 1 (--heads / --mlp 0: removed)")
        if config.tokens_out is not None and not 1 <= config.tokens_out <= dims["tokens"]:
            raise VitrtError(f"--tokens-out must be in 1..--tokens ({dims['tokens']}), got {config.tokens_out}")

        def query(clamp):
            return {"block_ms": table.block_ms(**dims, tokens_out=config.tokens_out, **kw, clamp=clamp),
                    "grid_ms": table.grid_block_ms(**dims, tokens_out=config.tokens_out, **kw, clamp=clamp)}
    try:
        result, clamped = query(False), False
    except VitrtError:
        if not config.clamp:
            raise
        result, clamped = query(True), True
    if "block_ms" not in result:
        result = {"model_ms": sum(result.values()), "parts_ms": result}
    result["clamped_to_grid"] = clamped
    ms = result.get("model_ms", result.get("block_ms"))
    text = f"{ms:.3f} ms (batch {table.batch}, {table.backend})" + (
        "; clamped: outside the table's grid, the nearest grid edge answered" if clamped else "")
    print(json.dumps(result, indent=2) if config.json else text)
    return 0


def _cmd_lut_refine(args) -> int:
    from vitrt.pipeline.feedback import refine_file

    config = from_args(LutRefineConfig, args)
    if config.source is None:
        raise VitrtError("pass --from OUT/manifest.json (a vitrt compile --bench output)")
    s = refine_file(config.lut, config.source, precision=config.precision, sparsity=config.sparsity)
    print(f"refined {config.lut} with {s['model']}: prediction {s['predicted_before_ms']:.2f} -> "
          f"{s['predicted_after_ms']:.2f} ms, measured {s['measured_ms']:.2f} ms")
    return 0


def _cmd_lut_plot(args) -> int:
    from vitrt.compiler.lut import LatencyTable
    from vitrt.benchmarks.plot import plot_table

    config = from_args(LutPlotConfig, args)
    if config.out is None:
        raise VitrtError("no output file: pass -o PNG")
    if Path(config.out).suffix.lower() not in PLOT_FORMATS:
        raise VitrtError(f"-o {config.out}: name a {', '.join(PLOT_FORMATS)} file (the format follows the suffix)")
    plot_table(LatencyTable.load(config.lut), config.out, precision=config.precision, sparsity=config.sparsity)
    print(f"wrote {config.out}")
    return 0


def add_subcommands(sub) -> None:
    lut = sub.add_parser("lut", help="latency lookup table: build, merge, query, refine, plot")
    lut_sub = lut.add_subparsers(dest="lut_command", required=True)
    for name, cls, func, help_ in (
            ("build", LutBuildConfig, _cmd_lut_build, "time the canonical block halves, stem and head on a grid"),
            ("merge", LutMergeConfig, _cmd_lut_merge, "join the shards of a sharded build (and other keys' tables)"),
            ("query", LutQueryConfig, _cmd_lut_query, "predict a block's (or a whole model's) latency"),
            ("refine", LutRefineConfig, _cmd_lut_refine, "fold a compiled model's measured latency into the table"),
            ("plot", LutPlotConfig, _cmd_lut_plot, "plot latency surfaces to a PNG")):
        parser = lut_sub.add_parser(name, help=help_)
        add_arguments(parser, cls)
        parser.set_defaults(func=func)
