"""Data sources for the data-driven steps: the digits set, a user's ImageFolder, or synthetic inputs.

Every source is a :class:`Dataset`: a length, whether it has labels, and ``batches(...)`` yielding
``(images [B, C, H, W] float32, labels [B] int64 or None)``. In-memory sets (digits, synthetic) are
:class:`ImageSet`; an ImageFolder is streamed from disk by a torch DataLoader with worker processes
(:class:`ImageFolderSet`), so fine-tuning, sparse fine-tuning and QAT on ImageNet-sized folders hold only a
few batches in memory.

``load_data("digits" | "synthetic" | "synth:SET" | PATH, ...)`` picks the source; ImageFolder images go through
timm's evaluation transform for the model (resize, centre crop, the model's mean / std); ``synth:SET`` is a
synthetic metric set made by ``vitrt synth`` (:mod:`vitrt.calib.synthesis`: its exact images and assigned labels,
the same for every split).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping, Protocol

import torch

from vitrt.calib.digits import ImageSet, digits_split
from vitrt.calib.synthesis_config import SET_METADATA, SYNTH_PREFIX
from vitrt.compiler.errors import DataError

DIGIT_CLASSES = 10  # scikit-learn's handwritten digits: labels 0..9

Batch = tuple[torch.Tensor, "torch.Tensor | None"]
TIMM_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")  # what a data config sets besides the size


class Dataset(Protocol):
    labelled: bool

    def __len__(self) -> int: ...

    def subset(self, indices: list[int]) -> "Dataset": ...

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]: ...


def synthetic(img_size: int, count: int, seed: int = 0, in_chans: int = 3) -> ImageSet:
    """N(0, 1) images without labels (for label-free steps: distillation from the dense model, calibration)."""
    generator = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randn(count, in_chans, img_size, img_size, generator=generator), None)


class ImageFolderSet:
    """An ImageFolder tree ``PATH/<class>/<image>`` (or a seeded subset of it), streamed in batches."""

    labelled = True

    def __init__(self, dataset, indices: list[int], workers: int | None = None):
        self.dataset, self.indices = dataset, indices
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, indices: list[int]) -> "ImageFolderSet":
        """The images at positions ``indices`` of this set (a rank's share under DistributedDataParallel)."""
        return ImageFolderSet(self.dataset, [self.indices[i] for i in indices], self.workers)

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        order = self.indices
        if shuffle:
            perm = torch.randperm(len(order), generator=generator).tolist()
            order = [order[i] for i in perm]
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.dataset, order), batch_size=batch_size,
                                             shuffle=False, num_workers=self.workers,
                                             persistent_workers=False)
        for images, labels in loader:
            yield images, labels


def image_folder(path: str | Path, img_size: int, limit: int | None = None, preprocessing: Mapping | None = None,
                 seed: int = 0, num_classes: int | None = None) -> ImageFolderSet:
    """Up to ``limit`` images (a seeded random subset) of an ImageFolder tree, streamed from disk.

    ``preprocessing``: the model's input pipeline as the manifest records it (timm's data config: mean, std,
    interpolation, crop_pct, crop_mode); without one, timm's defaults (ImageNet mean / std, crop 0.875), which
    are wrong for a model trained otherwise. ``num_classes`` (where the labels are used): the model's classes,
    which the tree must have as sub-folders — ImageFolder labels the sub-folders 0, 1, … in sorted order, so a
    tree with fewer would be scored against the wrong classes."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"data '{path}' is neither 'digits', 'synthetic' nor an ImageFolder directory (a synthetic "
                        "metric set is named synth:SET)")
    if (path / SET_METADATA).is_file():
        raise DataError(f"'{path}' is a synthetic metric set, not an ImageFolder: name it {SYNTH_PREFIX}{path}")
    data_config = resolve_data_config({"input_size": (3, img_size, img_size)},
                                      pretrained_cfg={k: v for k, v in (preprocessing or {}).items() if k in TIMM_KEYS})
    try:
        dataset = ImageFolder(str(path), transform=create_transform(**data_config, is_training=False))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"'{path}' is not a usable ImageFolder (expected PATH/<class>/<image files>): {exc}") from None
    if num_classes is not None and len(dataset.classes) != num_classes:
        raise DataError(f"'{path}' has {len(dataset.classes)} class folder(s), the model {num_classes} classes: "
                        "ImageFolder labels the folders in sorted order, so its labels would not be the model's; "
                        "give one sub-folder per class of the model")
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return ImageFolderSet(dataset, indices[:limit] if limit else indices)


def take_images(data: Dataset, count: int, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """The first ``count`` images of ``data`` in batches of at most ``batch_size`` (labels dropped)."""
    seen = 0
    for images, _ in data.batches(batch_size):
        if seen >= count:
            break
        images = images[: count - seen]
        seen += len(images)
        yield images


def in_memory(data: Dataset, what: str = "data") -> ImageSet:
    """Every image of ``data`` (and its labels where every batch has them) as one in-memory ImageSet: for small
    sets that are read many times (few-shot fine-tuning, metric sets, test splits run through a backend)."""
    if isinstance(data, ImageSet):
        return data
    images, labels = [], []
    for batch, batch_labels in data.batches(256):
        images.append(batch)
        labels.append(batch_labels)
    if not images:
        raise DataError(f"the {what} holds no images")
    return ImageSet(torch.cat(images), None if any(x is None for x in labels) else torch.cat(labels))


def load_data(source: str, img_size: int, *, split: str = "train", limit: int | None = None, seed: int = 0,
              preprocessing: Mapping | None = None, num_classes: int | None = None, in_chans: int = 3) -> Dataset:
    """The named data source at ``img_size``; ``split`` selects the digits train or test split; ``preprocessing``
    (the manifest's section: the model's timm data config) prepares ImageFolder images; ``num_classes``: given
    where the labels are used, the source's labels must be the model's classes; ``in_chans``: the model's input
    channels (synthetic images are drawn with them; a source with other channels is refused in one line)."""
    if source == "synthetic":
        return synthetic(img_size, limit or 256, seed, in_chans)
    if source == "digits":
        train, test = digits_split(img_size)
        data = train if split == "train" else test
        data = ImageSet(data.images[:limit], data.labels[:limit]) if limit else data
        if num_classes is not None and num_classes < DIGIT_CLASSES:
            raise DataError(f"digits has {DIGIT_CLASSES} classes but the model has {num_classes}: use data with "
                            "the model's classes")
    elif source.startswith(SYNTH_PREFIX):
        from vitrt.calib.synthesis import load_metric_set

        data = load_metric_set(source[len(SYNTH_PREFIX):], img_size, limit)
    else:
        data = image_folder(source, img_size, limit, preprocessing, seed, num_classes)
    channels = data.images.shape[1] if hasattr(data, "images") else 3  # an ImageFolder is read as RGB
    if channels != in_chans:
        raise DataError(f"'{source}' holds {channels}-channel images but the model takes {in_chans} (in_chans): use "
                        "data with the model's channels (synthetic images follow the model)")
    return data
