"""How good is a latency table? Off-grid block predictions and whole-model predictions, before and after refining.

    python -m vitrt.benchmarks.lut_eval LUT [--configs 10] [--models deit_tiny_patch16_224,deit_small_patch16_224]
                                            [-o benchmarks/results/lut_eval]

1. ``--configs`` random block configurations strictly inside the grid and on no grid value of any axis; each
   full block (both halves in one graph, as the lowering emits it) is timed now, on the table's backend,
   batch, threads and clock, and compared with the table's prediction.
2. Each model (random weights, static batch = the table's) is timed whole, and its profiler's per-block
   times are taken; the table predicts it before refinement and after refining a fresh copy of the table
   with each model's own measurement, so the refined model's error and the other model's are side by side.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.lut import LatencyTable
from vitrt.benchmarks.lut_build import Timer, block_model
from vitrt.compiler.options import command_line, module_main, option
from vitrt.compiler.output import result_file
from vitrt.compiler.timing import Timing, measure, synced


def off_grid_configs(table: LatencyTable, count: int, seed: int = 0) -> list[dict]:
    """Random block configurations inside the grid, off every grid value (multiples of 8 / 64 as real models use)."""
    attn = table.tables["fp32/dense"]["attn"].axes
    mlp = table.tables["fp32/dense"]["mlp"].axes
    rng = np.random.default_rng(seed)

    def pick(values, step):
        lo, hi = values[0], values[-1]
        choices = [x for x in range(lo - lo % step + step, hi, step) if x not in values]
        if not choices:
            raise VitrtError(f"grid axis {values} has no off-grid value in steps of {step}")
        return int(rng.choice(choices))

    return [{"emb": pick(attn["emb"], 64), "heads": pick(attn["heads"], 1), "qk": pick(attn["qk"], 8),
             "v": pick(attn["v"], 8), "mlp": pick(mlp["mlp"], 64), "tokens": pick(attn["tokens"], 1)}
            for _ in range(count)]


def full_block_model(*, batch, emb, heads, qk, v, mlp, tokens, seed=0, opset=17):
    """One whole canonical block (attention and MLP halves in one graph), random weights."""
    return block_model(batch=batch, emb=emb, tokens=tokens, heads=heads, qk=qk, v=v, mlp=mlp, seed=seed, opset=opset)


def evaluate(lut, *, configs: int = 10, models=("deit_tiny_patch16_224", "deit_small_patch16_224"), seed: int = 0,
             iterations: int = 5, similar: float | None = 0.8, progress=None) -> dict:
    """``similar``: also time a variant of the first model with its MLPs pruned to that fraction (a block
    near, not at, the refined one) to show how far a refinement carries."""
    import torch

    from vitrt.compiler.models import canonicalize, load_timm_model
    from vitrt.compiler.twin import CanonicalViT
    from vitrt.benchmarks.harness import build_twin, images_for

    table = LatencyTable.load(lut)
    threads = table.meta.get("threads")
    threads = threads if isinstance(threads, int) else None
    timing = Timing(warmup=2, iterations=iterations, min_seconds=0.1, clock=table.clock)
    timer = Timer(table.backend, timing, threads)
    device = timer.backend.device_name()
    table.check(device=device)
    rows = []
    try:
        for cfg in off_grid_configs(table, configs, seed):
            model, x = full_block_model(batch=table.batch, seed=seed, **cfg)
            measured = timer.time_model(model, x) - table.overhead_ms
            predicted = table.grid_block_ms(**cfg)
            rows.append({**cfg, "measured_ms": measured, "predicted_ms": predicted, "error": predicted / measured - 1})
            if progress:
                progress.log(f"block {cfg}: measured {measured:.2f} ms, predicted {predicted:.2f} ms")
    finally:
        timer.close()
    measured_models = {}
    with tempfile.TemporaryDirectory(prefix="vitrt-luteval-") as tmp:
        twins = {}
        for name in models:
            torch.manual_seed(seed)
            twins[name] = canonicalize(load_timm_model(name))
        if similar:  # the first model with every block's MLP pruned to ``similar`` x its width (multiple of 64)
            base = twins[models[0]].spec
            blocks = [b.__class__(**{**b.__dict__, "mlp": max(64, round(b.mlp * similar / 64) * 64)})
                      for b in base.blocks]
            torch.manual_seed(seed)
            twins[f"{models[0]} mlp {blocks[0].mlp}"] = CanonicalViT(base.with_blocks(blocks)).eval()
        for name, twin in twins.items():
            loaded = build_twin(twin, Path(tmp) / name.replace(" ", "_"), name=name, backend=table.backend,
                                batch=table.batch, threads=threads)
            images = images_for(loaded.spec, table.batch, seed)
            ms = measure(synced(loaded.runner, images), timing)
            per_block = loaded.runner.per_block_ms(images, iterations=3)
            measured_models[name] = {"spec": loaded.spec, "median_ms": ms, "per_block_ms": per_block}
            if progress:
                progress.log(f"{name}: measured {ms:.1f} ms")
            del loaded
    manifests = {name: {"model": name, "spec_after": m["spec"].to_dict(),
                        "latency": {"backend": table.backend, "device": device, "batch": table.batch,
                                    "median_ms": m["median_ms"], "per_block_ms": m["per_block_ms"],
                                    "clock": table.clock}} for name, m in measured_models.items()}
    whole = []
    for refined_with in [None, *models]:
        t = LatencyTable.load(lut)
        if refined_with:
            t.refine(manifests[refined_with], source=f"lut_eval measurement of {refined_with}")
        for name, m in measured_models.items():
            predicted = t.model_ms(m["spec"])
            whole.append({"refined_with": refined_with, "model": name, "measured_ms": m["median_ms"],
                          "predicted_ms": predicted, "error": predicted / m["median_ms"] - 1})
    errors = [abs(r["error"]) for r in rows]
    return {"lut": str(lut), "backend": table.backend, "device": device, "batch": table.batch, "clock": table.clock,
            "threads": threads or "runtime default", "blocks": rows,
            "median_abs_block_error": float(np.median(errors)) if errors else None, "models": whole}


def format_eval(result: dict) -> str:
    lines = [f"table {result['lut']} ({result['backend']} on {result['device']}, batch {result['batch']}, "
             f"{result['clock']} clock, threads {result['threads']})", "",
             "| emb | heads | qk | v | mlp | tokens | measured ms | predicted ms | error |", "|---" * 9 + "|"]
    for r in result["blocks"]:
        lines.append(f"| {r['emb']} | {r['heads']} | {r['qk']} | {r['v']} | {r['mlp']} | {r['tokens']} | "
                     f"{r['measured_ms']:.2f} | {r['predicted_ms']:.2f} | {r['error'] * 100:+.1f}% |")
    if result["median_abs_block_error"] is not None:
        lines.append(f"\nmedian |error| over {len(result['blocks'])} off-grid blocks: "
                     f"{result['median_abs_block_error'] * 100:.1f}%\n")
    lines += ["| table refined with | model | measured ms | predicted ms | error |", "|---" * 5 + "|"]
    for r in result["models"]:
        lines.append(f"| {r['refined_with'] or '(grid only)'} | {r['model']} | {r['measured_ms']:.1f} | "
                     f"{r['predicted_ms']:.1f} | {r['error'] * 100:+.1f}% |")
    return "\n".join(lines)


@dataclass(frozen=True)
class LutEvalConfig:
    lut: Path = option(None, "latency table to evaluate", positional=True, type=Path, metavar="LUT")
    configs: int = option(10, "random off-grid block configurations to time", type=int, metavar="N")
    models: str = option("deit_tiny_patch16_224,deit_small_patch16_224", "comma-separated timm models to time whole",
                         metavar="M1,M2")
    iterations: int = option(5, "timed runs per measurement", type=int, metavar="N")
    seed: int = option(0, "seed of the configurations, weights and inputs", type=int, metavar="N")
    similar: float = option(0.8, "also time the first model with MLPs pruned to this fraction (0: no)", type=float,
                            metavar="F")
    out: Path | None = option(None, "write OUT.json and OUT.md",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")


def run(config: LutEvalConfig) -> int:
    from vitrt.benchmarks.harness import write_json
    from vitrt.compiler.progress import Progress

    command = command_line("python -m vitrt.benchmarks.lut_eval")
    result = evaluate(config.lut, configs=config.configs, models=[m for m in config.models.split(",") if m],
                      seed=config.seed, iterations=config.iterations, similar=config.similar or None,
                      progress=Progress())
    text = format_eval(result)
    print(text)
    if config.out:
        write_json(result_file(config.out, ".json"), {**result, "command": command})
        result_file(config.out, ".md").write_text(f"Command:\n\n```\n{command}\n```\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(module_main(LutEvalConfig, run, description=__doc__.splitlines()[0]))
