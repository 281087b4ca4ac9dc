"""Top-1 accuracy (and the cross-entropy) of a torch model or of a compiled artifact through its backend runner."""

from __future__ import annotations

import numpy as np
import torch

from vitrt.calib.digits import ImageSet


@torch.no_grad()
def torch_logits(model: torch.nn.Module, data: ImageSet, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate([model(images).float().numpy() for images, _ in data.batches(batch_size)])


def runner_logits(runner, data: ImageSet) -> np.ndarray:
    """Logits from a backend runner; a static batch is filled by padding the last chunk with zeros."""
    batch = runner.batch or 64
    images = data.images.numpy()
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        valid = len(chunk)
        if runner.batch is not None and valid < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - valid, *chunk.shape[1:]), dtype=chunk.dtype)])
        out.append(runner.infer(chunk)[:valid])
    return np.concatenate(out)


def top1(logits: np.ndarray, labels: torch.Tensor) -> float:
    return float((logits.argmax(axis=1) == labels.numpy()).mean())


def cross_entropy(logits: np.ndarray, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels (nats): finer than top-1 where top-1 ties."""
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), labels.long()))


def accuracy(model: torch.nn.Module, data: ImageSet) -> float:
    return top1(torch_logits(model, data), data.labels)


def runner_accuracy(runner, data: ImageSet) -> float:
    return top1(runner_logits(runner, data), data.labels)
