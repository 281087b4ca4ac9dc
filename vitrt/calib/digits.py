"""scikit-learn's digits (1,797 real 8x8 handwritten digits) as small RGB images with a fixed split.

The images are upsampled to ``size``x``size`` (bilinear), replicated to 3 channels and normalised to
[-1, 1]; the 25 % test split is stratified with a fixed seed, so every run sees the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_IMG_SIZE = 32
DIGITS_CLASSES = 10
TEST_FRACTION = 0.25
SPLIT_SEED = 0
DIGITS_NORMALIZATION = (0.5, 0.5)  # (mean, std): the digits pipeline maps pixels 0..1 to -1..1


@dataclass(frozen=True)
class ImageSet:
    """Images [N, 3, H, W] float32 and integer labels [N] (labels may be None for unlabeled data)."""

    images: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def subset(self, indices: list[int]) -> "ImageSet":
        """The images at ``indices`` (a rank's share under DistributedDataParallel)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index] if self.labels is not None else None)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            index = order[start:start + batch_size]
            yield self.images[index], (self.labels[index] if self.labels is not None else None)


def digits_split(size: int = DIGITS_IMG_SIZE) -> tuple[ImageSet, ImageSet]:
    """(train, test) ImageSets of the digits data at ``size`` pixels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    raw = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = DIGITS_NORMALIZATION
    images = (images - mean) / std
    labels = torch.from_numpy(data.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                           stratify=data.target)
    return (ImageSet(images[train_idx], labels[train_idx]), ImageSet(images[test_idx], labels[test_idx]))


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero-padded in normalised black, -1)."""
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    size = images.shape[-1]
    out = torch.empty_like(images)
    shifts = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, dy:dy + size, dx:dx + size]
    return out
