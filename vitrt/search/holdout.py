"""The search's data: a fixed, stratified split of the training data into a *fit* part (what planners calibrate and
fine-tune on) and a *held-out* part (what the search's accuracy estimates are measured on), so no estimate is
taken on data a recipe was trained on. The test split stays untouched until the chosen engines are measured.

Planners read data through their PlanContext; :class:`HoldoutContext` answers the search's data source with the
fit part, so the planners themselves are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitrt.calib.digits import ImageSet
from vitrt.compiler.errors import DataError
from vitrt.transforms.base import PlanContext

HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0


def split_holdout(data: ImageSet, fraction: float = HOLDOUT_FRACTION, seed: int = SPLIT_SEED
                  ) -> tuple[ImageSet, ImageSet]:
    """(fit, held out): ``fraction`` of every class held out (stratified), by a fixed seed."""
    if data.labels is None:
        raise DataError("the search needs labelled data (digits or an ImageFolder): accuracy is its constraint")
    rng = np.random.default_rng(seed)
    labels = data.labels.numpy()
    held = []
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        held += list(rng.permutation(index)[: max(1, round(fraction * len(index)))])
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    fit, out = torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))
    return ImageSet(data.images[fit], data.labels[fit]), ImageSet(data.images[out], data.labels[out])


def in_memory(data) -> ImageSet:
    """A streamed dataset (an ImageFolder) read into memory once, so splits and repeated estimates are cheap."""
    if isinstance(data, ImageSet):
        return data
    images, labels = [], []
    for x, y in data.batches(64):
        images.append(x)
        labels.append(y)
    return ImageSet(torch.cat(images), torch.cat(labels) if labels and labels[0] is not None else None)


@dataclass(frozen=True)
class SearchData:
    source: str  # the data source the recipes name (digits or an ImageFolder path)
    fit: ImageSet
    holdout: ImageSet
    test: ImageSet | None  # the labelled test split when the source has one (digits)
    preprocessing: dict | None = None  # the model's input pipeline, for ImageFolder data (the planners' too)


def search_data(source: str, img_size: int, seed: int = 0, limit: int | None = None,
                preprocessing: dict | None = None, num_classes: int | None = None) -> SearchData:
    from vitrt.calib.data import load_data

    train = in_memory(load_data(source, img_size, split="train", limit=limit, seed=seed, preprocessing=preprocessing,
                                num_classes=num_classes))
    fit, holdout = split_holdout(train)
    test = in_memory(load_data(source, img_size, split="test", seed=seed)) if source == "digits" else None
    return SearchData(source, fit, holdout, test, preprocessing)


@dataclass(frozen=True)
class HoldoutContext(PlanContext):
    """A PlanContext whose training data for the search's source is the fit split (the held-out part is never
    trained or calibrated on)."""

    search: SearchData | None = None

    def data(self, source: str, split: str = "train", limit: int | None = None, labelled: bool = False):
        """The search's fit split for its own source's train split (labelled: its labels are the model's classes,
        checked when the split was made); anything else as :meth:`PlanContext.data` gives it."""
        if self.search is not None and source == self.search.source and split == "train":
            fit = self.search.fit
            return ImageSet(fit.images[:limit], fit.labels[:limit]) if limit else fit
        return super().data(source, split, limit, labelled=labelled)
