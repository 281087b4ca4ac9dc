"""Retained 2:4 magnitude of fc2 (and proj) weights with and without channel permutation.

    python -m vitrt.benchmarks.permutation_gain --model deit_small_patch16_224 --blocks 0,5,11
    python -m vitrt.benchmarks.permutation_gain --model digits

``digits`` is the shipped digits reference (trained weights); timm names use timm's random initialisation
(no model hub here). Prints one row per layer: Σ|w| kept by 2:4 masking / Σ|w|, without and with the
permutation found by ``vitrt.transforms.sparsity.permutation.search_permutation``, and the search time.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option


@dataclass(frozen=True)
class PermutationGainConfig:
    model: str = option("digits", "digits (the shipped reference) or a timm model name (random initialisation)",
                        metavar="NAME")
    blocks: str | None = option(None, "comma-separated block indices (default: all)", metavar="I,J,...")

    def block_indices(self, depth: int) -> list[int]:
        """The blocks to measure, checked against the model's ``depth``."""
        if self.blocks is None:
            return list(range(depth))
        try:
            indices = [int(b) for b in self.blocks.split(",")]
        except ValueError:
            raise VitrtError(f"--blocks must be comma-separated integers, got '{self.blocks}'") from None
        bad = [i for i in indices if not 0 <= i < depth]
        if bad:
            raise VitrtError(f"--blocks: block {bad[0]} is out of range 0..{depth - 1} for {self.model}")
        return indices


def load_model(name: str):
    import torch

    if name == "digits":
        from vitrt.calib.reference import load_reference

        return load_reference()[0]
    from vitrt.compiler.models import load_timm_model

    torch.manual_seed(0)  # timm's random initialisation, the same on every run
    return load_timm_model(name)


def run(config: PermutationGainConfig) -> list[dict]:
    from vitrt.transforms.sparsity.permutation import head_blocks, retained_fraction, search_permutation

    model = load_model(config.model)
    rows = []
    for index in config.block_indices(len(model.blocks)):
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


def main(config: PermutationGainConfig) -> int:
    rows = run(config)
    print(f"| {config.model} layer | A[M, K] | retained without | retained with | gain (points) | search s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['without'] * 100:.2f} % | {r['with'] * 100:.2f} % | "
              f"{(r['with'] - r['without']) * 100:+.2f} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(module_main(PermutationGainConfig, main, description=__doc__.splitlines()[0]))
