"""The fp16 twin transform: a half-precision copy of the twin with the kept ops (LayerNorm, Softmax) in fp32,
fp32 in and out — what the fp16-typed graph computes."""

from __future__ import annotations

import copy

from torch import nn

from vitrt.compiler.twin import CanonicalAttention
from vitrt.transforms.precision.plan import DEFAULT_KEEP_FP32


class _Fp32LayerNorm(nn.Module):
    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm.float()

    def forward(self, x):
        return self.norm(x.float()).to(x.dtype)


class _MixedAttention(CanonicalAttention):
    """CanonicalAttention with the softmax computed in fp32 (the kept op), everything else in the input dtype."""

    def attention_probs(self, logits):
        return logits.float().softmax(dim=-1) if self.softmax_fp32 else logits.softmax(dim=-1)


class Fp16Twin(nn.Module):
    """The twin in fp16 with the kept ops in fp32; fp32 in, fp32 out (like the typed graph)."""

    def __init__(self, twin, keep_fp32=DEFAULT_KEEP_FP32):
        super().__init__()
        model = copy.deepcopy(twin).eval().half()
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.LayerNorm) and "LayerNormalization" in keep_fp32:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, _Fp32LayerNorm(module))
            if isinstance(module, CanonicalAttention):
                module.__class__ = _MixedAttention
                module.softmax_fp32 = "Softmax" in keep_fp32
        self.model, self.spec = model, twin.spec

    def forward(self, images):
        return self.model(images.half()).float()


def fp16_twin(twin, keep_fp32=DEFAULT_KEEP_FP32) -> Fp16Twin:
    """A new fp16 twin; ``twin`` is unchanged (it is deep-copied before the cast)."""
    return Fp16Twin(twin, keep_fp32)
