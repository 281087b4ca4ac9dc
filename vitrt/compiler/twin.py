"""The torch twin: a canonical ViT whose modules mirror the canonical ONNX node for node.

timm's fused ``qkv`` is split into ``q``, ``k``, ``v`` projections so that heads, QK dims and V dims can be
pruned independently; LayerScale (if any) is folded into ``proj`` / ``fc2``; the attention scale is folded into
``q`` (weight and bias, see :func:`vitrt.compiler.models.canonicalize`), so attention is written out as
``softmax(q @ kᵀ [+ bias]) @ v`` with no multiplication after QKᵀ — the pattern TensorRT fuses into its fused
multi-head attention — exactly the op order the lowering emits.
Module paths are the canonical names (``blocks.3.attn.q``, ``blocks.3.mlp.fc2``, ``patch_embed``, ``head``).

A block with ``heads == 0`` has no attention branch and one with ``mlp == 0`` no MLP branch (DC-ViT style
module removal); every dimension comes from the :class:`~vitrt.compiler.spec.ViTSpec`.
"""

from __future__ import annotations

import torch
from torch import nn

from vitrt.compiler.spec import BlockSpec, ViTSpec


class CanonicalAttention(nn.Module):
    """Multi-head attention whose ``q`` projection already carries the attention scale (Q·s): the logits are
    ``q @ kᵀ``; the block's :attr:`~vitrt.compiler.spec.BlockSpec.scale` only records the value folded in."""

    def __init__(self, emb: int, heads: int, qk: int, v: int):
        super().__init__()
        self.heads, self.qk_dim, self.v_dim = heads, qk, v
        self.q = nn.Linear(emb, heads * qk)
        self.k = nn.Linear(emb, heads * qk)
        self.v = nn.Linear(emb, heads * v)
        self.proj = nn.Linear(heads * v, emb)

    def split_heads(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.heads, dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, N, emb] -> [B, N, emb]. ``attn_bias`` ([B, 1, 1, N]) is added to the logits q·kᵀ (already scaled)."""
        batch, tokens, _ = x.shape
        q = self.split_heads(self.q(x), self.qk_dim)
        k = self.split_heads(self.k(x), self.qk_dim)
        v = self.split_heads(self.v(x), self.v_dim)
        logits = q @ k.transpose(-2, -1)
        if attn_bias is not None:
            logits = logits + attn_bias
        out = self.attention_probs(logits).to(v.dtype) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.v_dim))

    def attention_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over keys; subclasses change its precision (the fp16 twin keeps it in fp32)."""
        return logits.softmax(dim=-1)


class CanonicalMlp(nn.Module):
    def __init__(self, emb: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(emb, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CanonicalBlock(nn.Module):
    def __init__(self, emb: int, block: BlockSpec, eps: float):
        super().__init__()
        self.spec = block
        self.norm1 = nn.LayerNorm(emb, eps=eps) if block.heads else None
        self.attn = CanonicalAttention(emb, block.heads, block.qk, block.v) if block.heads else None
        self.norm2 = nn.LayerNorm(emb, eps=eps) if block.mlp else None
        self.mlp = CanonicalMlp(emb, block.mlp) if block.mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class CanonicalViT(nn.Module):
    """The canonical twin of a timm VisionTransformer (class token, optional distillation token)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        emb = spec.emb
        self.patch_embed = nn.Conv2d(spec.in_chans, emb, kernel_size=spec.patch, stride=spec.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, emb))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, emb)) if spec.distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.tokens, emb))
        self.blocks = nn.ModuleList(CanonicalBlock(emb, b, spec.norm_eps) for b in spec.blocks)
        self.norm = nn.LayerNorm(emb, eps=spec.norm_eps)
        self.head = nn.Linear(emb, spec.num_classes)
        self.head_dist = nn.Linear(emb, spec.num_classes) if spec.distilled else None

    def prefix(self) -> torch.Tensor:
        tokens = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        return torch.cat(tokens, dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> tokens [B, prefix + patches, emb] with position embedding added."""
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)
        prefix = self.prefix().expand(patches.shape[0], -1, -1)
        return torch.cat([prefix, patches], dim=1) + self.pos_embed

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x[:, 0])
        if self.head_dist is not None:
            logits = (logits + self.head_dist(x[:, 1])) / 2
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits plus the distillation feature maps: patch embedding, every block's output, and the final
        projection's input (the normalised prefix tokens) — GPUSQ-ViT's critical layers, one block per stage."""
        x = self.embed(images)
        features = [x]
        for block in self.blocks:
            x = block(x)
            features.append(x)
        x = self.norm(x)
        features.append(x[:, : self.spec.prefix_tokens])
        return self.forward_head(x), features
