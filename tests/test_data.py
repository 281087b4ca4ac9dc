"""Data sources: the fixed digits split, synthetic inputs, and ImageFolder trees streamed from disk (defect 9)."""

import numpy as np
import pytest
import torch

from vitrt.calib.data import ImageFolderSet, load_data, take_images
from vitrt.calib.digits import digits_split
from vitrt.compiler.errors import VitrtError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A real ImageFolder: 24 digits test images as PNG files in one directory per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    _, test = digits_split(32)
    for i in range(24):
        label = int(test.labels[i])
        (root / str(label)).mkdir(exist_ok=True)
        pixels = ((test.images[i, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(root / str(label) / f"{i}.png")
    return root


def test_image_folder_is_streamed_in_bounded_batches(folder):
    data = load_data(str(folder), 32, limit=20, seed=1)
    assert isinstance(data, ImageFolderSet) and data.labelled and len(data) == 20
    assert not hasattr(data, "images")  # nothing is held in memory but the file list
    sizes, labels = [], []
    for images, batch_labels in data.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        sizes.append(len(images))
        labels += batch_labels.tolist()
    assert sizes == [8, 8, 4] and set(labels) <= set(range(10))
    assert sum(len(b) for b in take_images(data, 10, batch_size=4)) == 10


def test_the_subset_is_seeded_and_the_order_reproducible(folder):
    first = [b.tolist() for _, b in load_data(str(folder), 32, limit=12, seed=3).batches(12)]
    again = [b.tolist() for _, b in load_data(str(folder), 32, limit=12, seed=3).batches(12)]
    other = [b.tolist() for _, b in load_data(str(folder), 32, limit=12, seed=4).batches(12)]
    assert first == again and first != other


def test_fine_tuning_runs_on_a_streamed_folder(folder):
    """The shared trainer takes any Dataset: one epoch of fine-tuning straight from the files."""
    from vitrt.calib.losses import HardLabel, Objective
    from vitrt.calib.trainer import TrainConfig, train
    from vitrt.compiler.models import canonicalize

    from conftest import tiny_vit

    model = canonicalize(tiny_vit())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, load_data(str(folder), 32, limit=16), Objective(HardLabel()),
                   TrainConfig(epochs=1, lr=1e-3, batch_size=8))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["total"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_path_that_is_no_folder_is_one_line(tmp_path):
    with pytest.raises(VitrtError, match="neither 'digits', 'synthetic' nor an ImageFolder"):
        load_data(str(tmp_path / "missing"), 32)


def test_labels_are_used_only_from_a_folder_with_the_models_classes(folder, tmp_path, capsys):
    """ImageFolder labels its sub-folders 0, 1, ... in sorted order: a tree of two digit classes would be
    scored as classes 0 and 1 (top-1 0.00 % for the review's 3 and 7). Where labels count it is refused;
    calibration still takes it."""
    import shutil

    from vitrt.cli import main

    two = tmp_path / "two"
    for label in sorted(p.name for p in folder.iterdir())[:2]:  # two of the fixture's classes
        shutil.copytree(folder / label, two / label)
    with pytest.raises(VitrtError, match=r"has 2 class folder\(s\), the model 10 classes"):
        load_data(str(two), 32, num_classes=10)
    assert len(load_data(str(two), 32)) == sum(1 for _ in two.rglob("*.png"))  # unlabelled use: fine
    assert main(["compile", "digits", "-o", str(tmp_path / "out"), "--eval-data", str(two), "--quiet"]) == 2
    assert "has 2 class folder(s), the model 10 classes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_subset_of_a_limited_folder_reads_its_own_images(folder):
    """subset(i) indexes the (seeded, limited) set it is taken from — what a DDP rank's share reads."""
    data = load_data(str(folder), 32, limit=5, seed=1)
    part = data.subset([0, 2])
    assert part.indices == [data.indices[0], data.indices[2]]
    whole = torch.cat([images for images, _ in data.batches(8)])
    assert torch.equal(torch.cat([images for images, _ in part.batches(8)]), whole[[0, 2]])


def test_int8_calibrates_on_a_streamed_folder(folder, tmp_path):
    """``--calib-data PATH`` (an ImageFolder, as ``imagenet/train`` in the README): calibration streams it; the
    twins' accuracy report is the digits test split's only (it crashed on every folder: a streamed set holds no
    labels array), a folder's real accuracy being --eval-data's."""
    import json

    import vitrt

    vitrt.compile("digits", tmp_path / "out", precision="int8", calib_data=str(folder), calib_images=8, batch=1,
                  quiet=True)
    quant = json.loads((tmp_path / "out" / "manifest.json").read_text())["quantization"]
    assert quant["calib_data"] == str(folder) and "accuracy" not in quant


def test_data_the_model_cannot_take_is_refused_in_one_line(tmp_path):
    """A model with one input channel calibrates on synthetic images of one channel, and refuses 3-channel digits;
    a model with fewer classes than digits' ten refuses them wherever labels are used (it crashed deep in torch or
    ONNX Runtime: "expected input[64, 3, 32, 32]", "Target 9 is out of bounds")."""
    import vitrt
    from vitrt.compiler.errors import DataError

    from conftest import tiny_vit

    assert load_data("synthetic", 32, limit=4, in_chans=1).images.shape == (4, 1, 32, 32)
    gray = tiny_vit(in_chans=1)
    vitrt.compile(gray, tmp_path / "int8", precision="int8", calib_images=8, quiet=True)  # synthetic calibration
    with pytest.raises(DataError, match="'digits' holds 3-channel images but the model takes 1"):
        vitrt.compile(gray, tmp_path / "eval", eval_data="digits", quiet=True)
    with pytest.raises(DataError, match="digits has 10 classes but the model has 5"):
        vitrt.compile(tiny_vit(num_classes=5), tmp_path / "five", eval_data="digits", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]
