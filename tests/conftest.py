"""Shared fixtures: tiny timm ViTs for fast structural tests, and the digits reference model."""

from __future__ import annotations

import os

# Under pytest-xdist every worker would start as many OpenMP threads as there are cores: with -n 2 on 2 cores
# that is 4 busy threads, and OpenMP's spinning barriers then wait for descheduled threads (training steps were
# seen 30x slower). Each worker, and the vitrt processes tests start, gets its share of the cores instead.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402  (after the thread count: torch reads it on import)
import pytest  # noqa: E402
import torch  # noqa: E402

# the recorded latency table of the digits reference (ort, batch 8): what pruning and searching on digits use
DIGITS_LUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "lut_ort_digits_b8_cpu.json"


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


def run_cli(*argv) -> int:
    """``vitrt ARGV...`` in this process (each argument as its string); the exit code."""
    from vitrt.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="session")
def lowered():
    """(canonical twin, a factory of fresh GraphViews of it): the real lowering of a one-block tiny ViT, batch 2."""
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.lower import lower
    from vitrt.compiler.models import canonicalize

    twin = canonicalize(tiny_vit(depth=1))
    model = lower(twin, batch=2)
    return twin, lambda: GraphView.from_onnx(model)


@pytest.fixture(scope="session")
def tiny_outs(tmp_path_factory):
    """Compiled ONNX Runtime OUTs of tiny ViTs: (2 blocks, 1 block, 1 block with a dynamic batch), batch 1, 1, 2."""
    from vitrt.pipeline.driver import compile

    root = tmp_path_factory.mktemp("tiny_outs")
    dense = compile(tiny_vit(depth=2), root / "dense", quiet=True).out
    small = compile(tiny_vit(depth=1), root / "small", quiet=True).out
    dynamic = compile(tiny_vit(depth=1), root / "dynamic", batch=2, dynamic_batch=True, quiet=True).out
    return dense, small, dynamic


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


class Fixed(torch.nn.Module):
    """Returns given logits and features whatever the images (the objective's arithmetic alone)."""

    def __init__(self, logits, features=()):
        super().__init__()
        self.logits, self.features = logits, list(features)

    def forward(self, images):
        return self.logits

    def forward_with_features(self, images):
        return self.logits, self.features


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
