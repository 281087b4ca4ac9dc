"""Retained 2:4 magnitude of fc2 (and proj) weights with and without channel permutation.

    python -m vitrt.benchmarks.permutation_gain --model deit_small_patch16_224 --blocks 0,5,11
    python -m vitrt.benchmarks.permutation_gain --model digits

``digits`` is the cached digits reference (trained weights); timm names use timm's random initialisation
(no model hub here). Prints one row per layer: Σ|w| kept by 2:4 masking / Σ|w|, without and with the
permutation found by ``vitrt.transforms.sparsity.permutation.search_permutation``, and the search time.
"""

from __future__ import annotations

import argparse
import sys
import time


def run(model_name: str, blocks: list[int] | None) -> list[dict]:
    import torch

    from vitrt.transforms.sparsity.permutation import head_blocks, retained_fraction, search_permutation

    if model_name == "digits":
        from vitrt.calib.reference import load_reference

        model, _ = load_reference()
    else:
        import timm

        torch.manual_seed(0)
        model = timm.create_model(model_name, pretrained=False)
    rows = []
    for index in blocks if blocks is not None else range(len(model.blocks)):
        block = model.blocks[index]
        heads = block.attn.num_heads
        jobs = [("mlp.fc2", block.mlp.fc2.weight, None),
                ("attn.proj", block.attn.proj.weight, head_blocks(heads, block.attn.proj.weight.shape[1] // heads))]
        for name, weight, labels in jobs:
            a = weight.detach().numpy().copy()
            start = time.perf_counter()
            order = search_permutation(a, labels)
            rows.append({"layer": f"blocks.{index}.{name}", "shape": list(a.shape),
                         "without": retained_fraction(a), "with": retained_fraction(a[:, order]),
                         "seconds": time.perf_counter() - start})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--blocks", help="comma-separated block indices (default: all)")
    args = parser.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else None
    rows = run(args.model, blocks)
    print(f"| {args.model} layer | A[M, K] | retained without | retained with | gain (points) | search s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['without'] * 100:.2f} % | {r['with'] * 100:.2f} % | "
              f"{(r['with'] - r['without']) * 100:+.2f} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
