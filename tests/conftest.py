"""Shared fixtures: tiny timm ViTs for fast structural tests, and the digits reference model."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def tiny_vit(distilled: bool = False, depth: int = 2, **kwargs):
    """A small random timm ViT (img 32, patch 8: 16 patches) — same code path as the real models."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=depth, num_heads=2, num_classes=10)
    args.update(kwargs)
    return cls(**args).eval()


@pytest.fixture
def tiny_model():
    return tiny_vit()


@pytest.fixture(scope="session")
def digits_reference():
    """(timm model, info) of the cached digits reference (trained on first use, a few minutes on CPU)."""
    from vitrt.calib.reference import load_reference

    return load_reference()


@pytest.fixture(scope="session")
def digits_test():
    from vitrt.calib.digits import digits_split

    return digits_split()[1]


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def score_path(graph, block: int) -> list[str]:
    """Op types from ``blocks.{block}.attn.qk`` to the Softmax of an ONNX graph, following each output's single
    consumer (TensorRT fuses MatMul -> optional Add -> Softmax -> MatMul; a Mul in between defeats it)."""
    consumers = {name: n for n in graph.node for name in n.input}
    node = next(n for n in graph.node if n.name == f"blocks.{block}.attn.qk")
    path = [node.op_type]
    while node.op_type != "Softmax":
        node = consumers[node.output[0]]
        path.append(node.op_type)
    return path
