"""GPU benchmark: PyTorch semi-structured (2:4) sparse GEMMs vs dense on deit_base's projections (needs CUDA).

For deit_base_patch16_224 (emb 768, MLP 3072, 197 tokens) at batch 256 — X is [256·197, K] — each of the
block's weight shapes (q / k / v / proj: 768 → 768, fc1: 768 → 3072, fc2: 3072 → 768) is pruned with vitrt's
magnitude 2:4 mask (``vitrt.kernels.sparse24.mask_2to4`` along K) and timed side by side in one run:

* FP16: ``F.linear(x, W)`` dense vs ``F.linear(x, to_sparse_semi_structured(W))`` (cuSPARSELt when PyTorch
  has it, else CUTLASS — the backend used is printed);
* INT8: ``torch._int_mm(x, Wᵀ)`` dense vs ``torch._cslt_sparse_mm(compressed W, xᵀ)`` (cuSPARSELt, int32 out).

Timing: the shared loop's ``cuda`` clock (CUDA events around each call, median). Also checks, per shape, that
vitrt's packed FP16 values + CUTLASS metadata drive PyTorch's CUTLASS sparse
GEMM (``torch._sparse_semi_structured_mm``) to the dense result. Weights are timm's random initialisation
(no model hub here): GEMM time does not depend on the values.

    python -m vitrt.benchmarks.sparse_gemm --batch 256 -o benchmarks/results/sparse_gemm_gpu.md

The torch backend runs the same kernels inside whole models (``vitrt compile ... --backend torch --device cuda
--precision fp16 --sparsity 2:4``: ``F.linear`` on ``to_sparse_semi_structured`` weights, ``torch._int_mm``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.options import module_main, option
from vitrt.compiler.output import result_file

SHAPES = {"attn.q/k/v": (768, 768), "attn.proj": (768, 768), "mlp.fc1": (768, 3072), "mlp.fc2": (3072, 768)}


def _time_ms(fn, warmup: int, iterations: int) -> float:
    """Median GPU time of ``fn`` from the shared timing loop's CUDA-event clock."""
    from vitrt.compiler.timing import Timing, measure

    return measure(fn, Timing(warmup=warmup, iterations=iterations, clock="cuda"))


def run(batch: int = 256, tokens: int = 197, warmup: int = 10, iterations: int = 50) -> dict:
    import timm
    import torch
    import torch.nn.functional as F
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from vitrt.kernels import sparse24

    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU with sparse tensor cores (Ampere or later)")
    torch.manual_seed(0)
    model = timm.create_model("deit_base_patch16_224", pretrained=False)
    block = model.blocks[0]
    weights = {"attn.q/k/v": block.attn.qkv.weight[:768], "attn.proj": block.attn.proj.weight,
               "mlp.fc1": block.mlp.fc1.weight, "mlp.fc2": block.mlp.fc2.weight}
    rows = batch * tokens
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": batch, "tokens": tokens,
               "cusparselt": not SparseSemiStructuredTensor._FORCE_CUTLASS, "rows": []}
    for name, w in weights.items():
        n, k = w.shape
        w_np = w.detach().numpy()
        mask = sparse24.mask_2to4(w_np, 1)
        pruned = np.where(mask, w_np, 0).astype(np.float16)
        w16 = torch.from_numpy(pruned).cuda()
        x16 = torch.randn(rows, k, dtype=torch.float16, device="cuda")
        sparse_w = to_sparse_semi_structured(w16)
        row = {"layer": name, "K": k, "N": n, "M_rows": rows,
               "fp16_dense_ms": _time_ms(lambda: F.linear(x16, w16), warmup, iterations),
               "fp16_sparse_ms": _time_ms(lambda: F.linear(x16, sparse_w), warmup, iterations)}
        # vitrt's own packing consumed by the CUTLASS sparse GEMM
        packed = sparse24.compress(pruned, "fp16")
        got = torch._sparse_semi_structured_mm(torch.from_numpy(packed.values).cuda(), torch.from_numpy(packed.meta).cuda(),
                                              x16[:256].t().contiguous())
        row["vitrt_meta_gemm_max_err"] = float((got.float() - (w16.float() @ x16[:256].t().float())).abs().max())
        scale = np.abs(w_np).max(axis=1, keepdims=True) / 127
        w8 = torch.from_numpy(np.where(mask, np.round(w_np / scale), 0).astype(np.int8)).cuda()
        x8 = torch.randint(-127, 128, (rows, k), dtype=torch.int8, device="cuda")
        try:
            compressed = torch._cslt_compress(w8)
            row["int8_dense_ms"] = _time_ms(lambda: torch._int_mm(x8, w8.t()), warmup, iterations)
            row["int8_sparse_ms"] = _time_ms(lambda: torch._cslt_sparse_mm(compressed, x8.t(), out_dtype=torch.int32),
                                             warmup, iterations)
        except (RuntimeError, AttributeError) as exc:  # no cuSPARSELt in this PyTorch build
            row["int8_error"] = str(exc).splitlines()[0]
        for fmt in ("fp16", "int8"):
            if f"{fmt}_sparse_ms" in row:
                row[f"{fmt}_speedup"] = round(row[f"{fmt}_dense_ms"] / row[f"{fmt}_sparse_ms"], 3)
        results["rows"].append(row)
    return results


def to_markdown(results: dict, command: str) -> str:
    lines = [f"# 2:4 sparse GEMM vs dense on {results['device']} (torch {results['torch']})", "",
             f"Command: `{command}`", "",
             f"deit_base projections, X = [{results['batch']}·{results['tokens']}, K]; median of CUDA-event timings; "
             f"cuSPARSELt: {results['cusparselt']}.", "",
             "| layer | K → N | FP16 dense ms | FP16 2:4 ms | FP16 speed-up | INT8 dense ms | INT8 2:4 ms | INT8 speed-up | vitrt meta GEMM max err |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['layer']} | {r['K']} → {r['N']} | {r['fp16_dense_ms']:.3f} | {r['fp16_sparse_ms']:.3f} | "
                     f"{r.get('fp16_speedup', '')} | {r.get('int8_dense_ms', float('nan')):.3f} | "
                     f"{r.get('int8_sparse_ms', float('nan')):.3f} | {r.get('int8_speedup', r.get('int8_error', ''))} | "
                     f"{r['vitrt_meta_gemm_max_err']:.3g} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SparseGemmConfig:
    batch: int = option(256, "images per batch (X = [batch·tokens, K])", type=int, metavar="N")
    iterations: int = option(50, "timed runs per GEMM", type=int, metavar="N")
    out: Path | None = option(None, "write OUT.md and OUT.json",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")


def main(config: SparseGemmConfig) -> int:
    results = run(batch=config.batch, iterations=config.iterations)
    command = "python -m vitrt.benchmarks.sparse_gemm " + " ".join(sys.argv[1:])
    text = to_markdown(results, command)
    print(text)
    if config.out:
        result_file(config.out, ".md").write_text(text)
        result_file(config.out, ".json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(module_main(SparseGemmConfig, main, description=__doc__.splitlines()[0]))
