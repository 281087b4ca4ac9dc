"""The pruning twin transform: a new CanonicalViT with the plan's dims, the twin's weights sliced to the kept
indices (or, for a fine-tuned plan, the plan's weights). The input twin is never modified."""

from __future__ import annotations

import torch

from vitrt.compiler.twin import CanonicalViT
from vitrt.compiler.weights import load_parameter_state
from vitrt.transforms.prune.plan import PruningPlan


def apply_plan(twin: CanonicalViT, plan: PruningPlan) -> CanonicalViT:
    """The pruned twin: sliced, then the plan's fine-tuned weights loaded where it carries them."""
    pruned = prune_twin(twin, plan)
    if plan.weights:
        load_parameter_state(pruned, plan.weights)
    return pruned


@torch.no_grad()
def prune_twin(twin: CanonicalViT, plan: PruningPlan) -> CanonicalViT:
    """A new CanonicalViT with the pruned spec and ``twin``'s weights sliced to ``plan``."""
    spec = twin.spec
    new = CanonicalViT(plan.pruned_spec(spec))
    emb = torch.tensor(plan.emb, dtype=torch.long)
    new.patch_embed.weight.copy_(twin.patch_embed.weight[emb])
    new.patch_embed.bias.copy_(twin.patch_embed.bias[emb])
    new.cls_token.copy_(twin.cls_token[..., emb])
    if spec.distilled:
        new.dist_token.copy_(twin.dist_token[..., emb])
    new.pos_embed.copy_(twin.pos_embed[..., emb])
    for block, old, bplan, bspec in zip(new.blocks, twin.blocks, plan.blocks, spec.blocks):
        if block.attn is not None:
            qk = torch.tensor(bplan.qk_columns(bspec.qk), dtype=torch.long)
            v = torch.tensor(bplan.v_columns(bspec.v), dtype=torch.long)
            _copy_norm(block.norm1, old.norm1, emb)
            for name, cols in (("q", qk), ("k", qk), ("v", v)):
                _copy_linear(getattr(block.attn, name), getattr(old.attn, name), cols, emb)
            _copy_linear(block.attn.proj, old.attn.proj, emb, v)
        if block.mlp is not None:
            mlp = torch.tensor(bplan.mlp, dtype=torch.long)
            _copy_norm(block.norm2, old.norm2, emb)
            _copy_linear(block.mlp.fc1, old.mlp.fc1, mlp, emb)
            _copy_linear(block.mlp.fc2, old.mlp.fc2, emb, mlp)
    _copy_norm(new.norm, twin.norm, emb)
    all_classes = torch.arange(spec.num_classes)
    _copy_linear(new.head, twin.head, all_classes, emb)
    if spec.distilled:
        _copy_linear(new.head_dist, twin.head_dist, all_classes, emb)
    return new.eval()


def _copy_norm(dst, src, emb) -> None:
    dst.weight.copy_(src.weight[emb])
    dst.bias.copy_(src.bias[emb])


def _copy_linear(dst, src, rows, cols) -> None:
    """torch Linear weight is [out, in]: ``rows`` index outputs, ``cols`` inputs."""
    dst.weight.copy_(src.weight[rows][:, cols])
    dst.bias.copy_(src.bias[rows])
