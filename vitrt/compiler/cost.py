"""Analytic cost of a ViTSpec: FLOPs per image (2 per multiply-accumulate) of every matrix product of the model's
layers, and parameters.

A linear layer factored to rank r (``spec.ranks``, low rank) costs r·(K + N) instead of K·N multiply-accumulates
per token and holds r·(K + N) weights instead of K·N. A token merge's own products (its bipartite similarity scores
and the one-hot gather / average MatMuls of the static graph) are not counted: they add 0.7-0.9 % to a graph count
on the digits reference at r = 2-4 (LayerNorm, Softmax and GELU are not counted either).
"""

from __future__ import annotations

from vitrt.compiler.spec import BlockSpec, ViTSpec


def block_flops(emb: int, block: BlockSpec) -> int:
    """FLOPs of one block; the MLP runs on the tokens left after a merge (``out_tokens``)."""
    n, m = block.tokens, block.out_tokens
    attn = 0
    if block.heads:
        h, qk, v = block.heads, block.qk, block.v
        attn = 2 * n * emb * h * (2 * qk + v)  # Q, K, V projections
        attn += 2 * h * n * n * (qk + v)  # QKᵀ and attention·V
        attn += 2 * n * h * v * emb  # output projection
    mlp = 4 * m * emb * block.mlp if block.mlp else 0
    return attn + mlp


def stem_flops(spec: ViTSpec) -> int:
    return 2 * spec.num_patches * spec.emb * spec.in_chans * spec.patch * spec.patch


def head_flops(spec: ViTSpec) -> int:
    return 2 * spec.emb * spec.num_classes * (2 if spec.distilled else 1)


def factored_savings(spec: ViTSpec) -> tuple[int, int]:
    """(FLOPs per image, parameters) that the factored layers save against their dense K·N weights."""
    flops = params = 0
    for name, rank in spec.ranks.items():
        tokens, k, n = spec.linear_dims(name)
        saved = k * n - rank * (k + n)
        flops += 2 * tokens * saved
        params += saved
    return flops, params


def vit_flops(spec: ViTSpec) -> int:
    dense = stem_flops(spec) + sum(block_flops(spec.emb, b) for b in spec.blocks) + head_flops(spec)
    return dense - factored_savings(spec)[0]


def block_params(emb: int, block: BlockSpec) -> int:
    params = 0
    if block.heads:
        inner_qk, inner_v = block.heads * block.qk, block.heads * block.v
        params += 2 * emb  # norm1
        params += 2 * (emb * inner_qk + inner_qk) + (emb * inner_v + inner_v) + (inner_v * emb + emb)
    if block.mlp:
        params += 2 * emb + (emb * block.mlp + block.mlp) + (block.mlp * emb + emb)
    return params


def vit_params(spec: ViTSpec) -> int:
    """Trainable parameters of the canonical model (equals the twin's ``numel`` sum)."""
    stem = spec.emb * spec.in_chans * spec.patch * spec.patch + spec.emb
    embeddings = spec.prefix_tokens * spec.emb + spec.tokens * spec.emb
    heads = (spec.emb * spec.num_classes + spec.num_classes) * (2 if spec.distilled else 1)
    blocks = sum(block_params(spec.emb, b) for b in spec.blocks)
    return stem + embeddings + blocks + 2 * spec.emb + heads - factored_savings(spec)[1]
