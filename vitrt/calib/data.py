"""Data sources for the data-driven steps: the digits set, a user's ImageFolder, or synthetic inputs.

``load_data("digits" | "synthetic" | PATH, ...)`` returns an :class:`ImageSet`. ImageFolder images go
through timm's evaluation transform for the model (resize, centre crop, the model's mean / std).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..compiler.errors import VitrtError
from .digits import ImageSet, digits_split


def synthetic(img_size: int, count: int, seed: int = 0, in_chans: int = 3) -> ImageSet:
    """N(0, 1) images without labels (for label-free steps: distillation from the dense model, calibration)."""
    generator = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randn(count, in_chans, img_size, img_size, generator=generator), None)


def image_folder(path: str | Path, img_size: int, limit: int | None = None, model: torch.nn.Module | None = None,
                 seed: int = 0) -> ImageSet:
    """Up to ``limit`` images (a seeded random subset) from an ImageFolder tree ``path/<class>/<image>``."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    path = Path(path)
    if not path.is_dir():
        raise VitrtError(f"data '{path}' is neither 'digits', 'synthetic' nor an ImageFolder directory")
    data_config = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    try:
        dataset = ImageFolder(str(path), transform=create_transform(**data_config, is_training=False))
    except (FileNotFoundError, RuntimeError) as exc:
        raise VitrtError(f"'{path}' is not a usable ImageFolder (expected PATH/<class>/<image files>): {exc}") from None
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    indices = indices[:limit] if limit else indices
    images, labels = zip(*(dataset[i] for i in indices))
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def load_data(source: str, img_size: int, *, split: str = "train", limit: int | None = None, seed: int = 0,
              model: torch.nn.Module | None = None) -> ImageSet:
    """The named data source at ``img_size``; ``split`` selects the digits train or test split."""
    if source == "digits":
        train, test = digits_split(img_size)
        data = train if split == "train" else test
        return ImageSet(data.images[:limit], data.labels[:limit]) if limit else data
    if source == "synthetic":
        return synthetic(img_size, limit or 256, seed)
    return image_folder(source, img_size, limit, model, seed)
