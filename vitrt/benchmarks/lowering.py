"""Lowering accuracy table: max abs error of canonical ONNX (ONNX Runtime) vs timm and vs the twin, per model.

    python -m vitrt.benchmarks.lowering [--batch 2] [--models a,b,...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", default=",".join(SUPPORTED_MODELS))
    args = parser.parse_args(argv)
    print("| model | twin vs timm | ONNX vs timm | ONNX vs twin | max abs logit |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        r = lowering_errors(name, args.batch)
        print(f"| {r['model']} | {r['twin_vs_timm']:.2e} | {r['onnx_vs_timm']:.2e} | {r['onnx_vs_twin']:.2e} | "
              f"{r['logit_scale']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
