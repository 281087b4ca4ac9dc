"""The typed twin transform: a half-precision (fp16 or bf16) copy of the twin with the kept ops (LayerNorm,
Softmax; for bf16 at opsets without it the patch-embedding Conv) in fp32, fp32 in and out — what the typed graph
computes. Token merging's kept TopK / ConstantOfShape need nothing here: ranking bf16 values in fp32 and a
constant 1 are exact in either type."""

from __future__ import annotations

import copy

import torch
from torch import nn

from vitrt.compiler.twin import CanonicalAttention
from vitrt.transforms.precision.plan import DEFAULT_KEEP_FP32

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class _Fp32(nn.Module):
    """A kept op: ``module`` in fp32 with its own parameters in fp32, its input and output in the twin's type."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.float()

    def forward(self, x):
        return self.module(x.float()).to(x.dtype)


# Kept ONNX op -> the twin's module type that computes it (Softmax is a function: _MixedAttention).
KEPT_MODULES = {"LayerNormalization": nn.LayerNorm, "Conv": nn.Conv2d}


class _MixedAttention(CanonicalAttention):
    """CanonicalAttention with the softmax computed in fp32 (the kept op), everything else in the input dtype."""

    def attention_probs(self, logits):
        return logits.float().softmax(dim=-1) if self.softmax_fp32 else logits.softmax(dim=-1)


class TypedTwin(nn.Module):
    """The twin in ``dtype`` (fp16 | bf16) with the kept ops in fp32; fp32 in, fp32 out (like the typed graph)."""

    def __init__(self, twin, dtype: str = "fp16", keep_fp32=DEFAULT_KEEP_FP32):
        super().__init__()
        self.dtype = TORCH_DTYPES[dtype]
        model = copy.deepcopy(twin).eval().to(self.dtype)
        kept = tuple(KEPT_MODULES[op] for op in keep_fp32 if op in KEPT_MODULES)
        for name, module in list(model.named_modules()):
            if kept and isinstance(module, kept):
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, _Fp32(module))
            if type(module) is CanonicalAttention:  # a subclass (QuantAttention) keeps its own forward
                module.__class__ = _MixedAttention
                module.softmax_fp32 = "Softmax" in keep_fp32
        self.model, self.spec = model, twin.spec

    def forward(self, images):
        return self.model(images.to(self.dtype)).float()


def typed_twin(twin, dtype: str = "fp16", keep_fp32=DEFAULT_KEEP_FP32) -> TypedTwin:
    """A new twin typed ``dtype``; ``twin`` is unchanged (it is deep-copied before the cast)."""
    return TypedTwin(twin, dtype, keep_fp32)
