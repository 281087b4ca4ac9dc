"""Lowering accuracy table: max abs error of canonical ONNX (ONNX Runtime) vs timm and vs the twin, per model.

    python -m vitrt.benchmarks.lowering [--batch 2] [--models a,b,...]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from vitrt.compiler.options import module_main, option

SUPPORTED_MODELS = (
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
)


def lowering_errors(name: str, batch: int = 2, seed: int = 1) -> dict:
    from vitrt.compiler.lower import lower
    from vitrt.compiler.models import canonicalize, load_timm_model
    from vitrt.compiler.verify import run_onnx, verification_inputs

    timm_model = load_timm_model(name)
    twin = canonicalize(timm_model)
    images = verification_inputs(twin.spec, batch=batch, seed=seed)
    with torch.no_grad():
        reference = timm_model(torch.from_numpy(images)).numpy()
        twin_out = twin(torch.from_numpy(images)).numpy()
    onnx_out = run_onnx(lower(twin, batch=batch), images, batch)
    return {"model": name, "twin_vs_timm": float(np.abs(twin_out - reference).max()),
            "onnx_vs_timm": float(np.abs(onnx_out - reference).max()),
            "onnx_vs_twin": float(np.abs(onnx_out - twin_out).max()),
            "logit_scale": float(np.abs(reference).max())}


@dataclass(frozen=True)
class LoweringConfig:
    batch: int = option(2, "batch size of the random verification images", type=int, metavar="N")
    models: str = option(",".join(SUPPORTED_MODELS), "comma-separated timm models", metavar="M1,M2")


def run(config: LoweringConfig) -> int:
    print("| model | twin vs timm | ONNX vs timm | ONNX vs twin | max abs logit |\n|---|---|---|---|---|")
    for name in config.models.split(","):
        r = lowering_errors(name, config.batch)
        print(f"| {r['model']} | {r['twin_vs_timm']:.2e} | {r['onnx_vs_timm']:.2e} | {r['onnx_vs_twin']:.2e} | "
              f"{r['logit_scale']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(module_main(LoweringConfig, run, description=__doc__.splitlines()[0]))
