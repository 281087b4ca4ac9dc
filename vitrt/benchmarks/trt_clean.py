"""Issue 11's done criterion as a record: every supported model and every stack compiled for TensorRT
(``vitrt compile --backend trt --no-build``, no TensorRT needed) and checked by ``vitrt lint-trt --strict``.

    python -m vitrt.benchmarks.trt_clean [--stack-model deit_small_patch16_224] -o benchmarks/results/trt_clean

Each row runs the two commands as a user would, in a new process, and records their exit codes and the lint's
error and warning counts (from the compile's manifest). Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import command_line, module_main, option
from vitrt.compiler.output import result_file

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "deit_tiny_patch16_224",
          "deit_small_patch16_224", "deit_base_patch16_224", "deit_tiny_distilled_patch16_224",
          "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224")
STACKS = {
    "--tome 8": ["--tome", "8"], "--tome 8 --lgtm-window 2": ["--tome", "8", "--lgtm-window", "2"],
    "--precision int8": ["--precision", "int8"],
    "--precision int8 --quantize-attention": ["--precision", "int8", "--quantize-attention"],
    "--precision fp8": ["--precision", "fp8"], "--precision fp16": ["--precision", "fp16"],
    "--precision bf16": ["--precision", "bf16"], "--precision int4w": ["--precision", "int4w"],
    "--sparsity 2:4": ["--sparsity", "2:4"], "--dynamic-batch": ["--dynamic-batch", "--batch", "8"],
    "--prune-plan (block 0 attention removed)": ["--prune-plan", "{plan}"],
    "--precision fp16 --tome 8 --sparsity 2:4 --dynamic-batch": ["--precision", "fp16", "--tome", "8", "--sparsity",
                                                                "2:4", "--dynamic-batch", "--batch", "8"],
}


@dataclass(frozen=True)
class TrtCleanConfig:
    stack_model: str = option("deit_small_patch16_224", "the model every stack is compiled for", metavar="MODEL")
    out: Path | None = option(None, "write OUT.md and OUT.json",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")


def removed_attention_plan(model: str, path: Path) -> None:
    """A pruning plan that keeps every dim but removes block 0's attention (0 heads)."""
    import dataclasses

    from vitrt.compiler.models import model_spec
    from vitrt.transforms.prune.plan import BlockPlan, PruningPlan

    plan = PruningPlan.keep_all(model_spec(model), {"made_by": "vitrt.benchmarks.trt_clean"})
    blocks = (BlockPlan((), (), (), plan.blocks[0].mlp), *plan.blocks[1:])
    dataclasses.replace(plan, blocks=blocks).save(path)


def check(model: str, extra: list[str], tmp: Path) -> dict:
    out = tmp / f"out{len(list(tmp.iterdir()))}"
    start = time.perf_counter()
    compiled = subprocess.run([sys.executable, "-m", "vitrt.cli", "compile", model, "-o", str(out), "--backend", "trt",
                               "--no-build", "--quiet", *extra], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if compiled.returncode != 0:
        return {"compile_exit": compiled.returncode, "error": compiled.stderr.strip()[-300:], "seconds": seconds}
    lint = subprocess.run([sys.executable, "-m", "vitrt.cli", "lint-trt", str(out / "model.onnx"), "--strict"],
                          capture_output=True, text=True, check=False)
    section = json.loads((out / "manifest.json").read_text())["trt_lint"]
    return {"compile_exit": 0, "lint_strict_exit": lint.returncode, "errors": len(section["errors"]),
            "warnings": len(section["warnings"]), "summary": " ".join(lint.stdout.strip().splitlines()[-1:]),
            "seconds": round(seconds, 1)}


def run(config: TrtCleanConfig) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitrt-trt-clean-") as tmp:
        tmp = Path(tmp)
        plan = tmp / "plan.json"
        removed_attention_plan(config.stack_model, plan)
        cases = [(m, "default", []) for m in MODELS] + [
            (config.stack_model, name, [str(plan) if a == "{plan}" else a for a in argv])
            for name, argv in STACKS.items()]
        for model, name, argv in cases:
            work = tmp / "work"
            work.mkdir(exist_ok=True)
            row = {"model": model, "stack": name, **check(model, argv, work)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    clean = [r for r in rows if r.get("lint_strict_exit") == 0 and r["errors"] == 0 and r["warnings"] == 0]
    lines = ["| model | stack | compile exit | lint-trt --strict exit | errors | warnings | compile s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['stack']} | {r['compile_exit']} | {r.get('lint_strict_exit', '—')} | "
                     f"{r.get('errors', '—')} | {r.get('warnings', '—')} | {r['seconds']} |")
    table = "\n".join(lines) + f"\n\n{len(clean)} of {len(rows)} clean (0 errors, 0 warnings)."
    print(table)
    if config.out is not None:
        command = command_line("python -m vitrt.benchmarks.trt_clean")
        result_file(config.out, ".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
        result_file(config.out, ".md").write_text(
            f"# Compiled for TensorRT, linted against its rules\n\nCommand:\n\n```\n{command}\n```\n\n"
            "Each row: `vitrt compile MODEL --backend trt --no-build STACK` then `vitrt lint-trt OUT/model.onnx "
            f"--strict` (exit 1 on any warning), in new processes; random timm weights.\n\n{table}\n")
    return 0 if len(clean) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(module_main(TrtCleanConfig, run, description=__doc__.splitlines()[0]))
