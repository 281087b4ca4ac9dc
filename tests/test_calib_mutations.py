"""Tests added by a mutation audit of vitrt.calib.data and vitrt.calib.synthesis(_config): each pins a behaviour
that a one-line mutation could change without the existing tests noticing. Tiny models and sets: seconds each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_vit
from vitrt.calib.data import load_data, synthetic
from vitrt.compiler.models import canonicalize


@pytest.fixture(scope="module")
def twin():
    return canonicalize(tiny_vit(depth=1))


def test_synthetic_images_follow_the_seed():
    a, again, other = synthetic(8, 4, seed=1), synthetic(8, 4, seed=1), synthetic(8, 4, seed=2)
    assert torch.equal(a.images, again.images) and not torch.equal(a.images, other.images)
    assert torch.equal(load_data("synthetic", 8, limit=4, seed=1).images, a.images)
    assert not torch.equal(load_data("synthetic", 8, limit=4, seed=2).images, a.images)


def test_a_limited_digits_split_keeps_each_label_with_its_image():
    from vitrt.calib.digits import digits_split

    _, test = digits_split(16)
    limited = load_data("digits", 16, split="test", limit=7)
    assert torch.equal(limited.images, test.images[:7]) and torch.equal(limited.labels, test.labels[:7])


def test_digits_are_refused_for_a_model_with_nine_classes():
    from vitrt.compiler.errors import DataError

    with pytest.raises(DataError, match="digits has 10 classes but the model has 9"):
        load_data("digits", 16, num_classes=9)
    assert len(load_data("digits", 16, limit=3, num_classes=10)) == 3


def _png_folder(root, classes: int, per_class: int = 1):
    from PIL import Image

    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(root / f"c{c:02d}" / f"{i}.png")
    return root


def test_a_folder_with_more_class_folders_than_the_model_is_refused(tmp_path):
    from vitrt.compiler.errors import DataError

    root = _png_folder(tmp_path / "eleven", 11)
    with pytest.raises(DataError, match=r"has 11 class folder\(s\), the model 10 classes"):
        load_data(str(root), 8, num_classes=10)
    assert len(load_data(str(root), 8, num_classes=11)) == 11


def test_data_with_fewer_channels_than_the_model_is_refused():
    from vitrt.compiler.errors import DataError

    with pytest.raises(DataError, match="'digits' holds 3-channel images but the model takes 4"):
        load_data("digits", 16, in_chans=4)


def test_a_shuffled_folder_follows_its_generator(tmp_path):
    root = _png_folder(tmp_path / "f", 4, per_class=4)
    data = load_data(str(root), 8)
    data.workers = 0

    def order(seed):
        return [int(v) for _, labels in data.batches(16, shuffle=True, generator=torch.Generator().manual_seed(seed))
                for v in labels]

    assert order(5) == order(5) and order(5) != order(6)


TINY = dict(images=3, iterations=2, batch_size=2, lr=0.1)


@pytest.fixture(scope="module")
def odd_set(tmp_path_factory, twin):
    """A finished set of 3 images in batches of 2, normalised with mean 0.2 / std 0.25 (not digits' 0.5 / 0.5)."""
    from vitrt.calib.synthesis import SynthesisConfig, synthesize

    out = tmp_path_factory.mktemp("odd") / "set"
    return out, synthesize(twin, out, SynthesisConfig(**TINY), mean=0.2, std=0.25, model="tiny")


def test_the_metadata_counts_the_images_of_a_short_last_batch(odd_set):
    _, meta = odd_set
    assert [meta["batches"][b]["images"] for b in ("0", "1")] == [2, 1]


def test_the_png_export_undoes_the_sets_own_normalisation(odd_set):
    from PIL import Image

    from vitrt.calib.synthesis import load_metric_set

    out, meta = odd_set
    images = load_metric_set(out).images
    label = meta["labels"][0]
    png = np.asarray(Image.open(out / "images" / f"{label}" / "000000.png"))  # 10 classes: one-digit folders
    expected = ((images[0] * 0.25 + 0.2).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(png, expected)


def test_force_starts_a_set_made_otherwise_over(tmp_path, twin):
    from vitrt.calib.synthesis import SynthesisConfig, synthesize

    out = tmp_path / "set"
    synthesize(twin, out, SynthesisConfig(**TINY), mean=0.5, std=0.5)
    meta = synthesize(twin, out, SynthesisConfig(**{**TINY, "iterations": 3}), mean=0.5, std=0.5, force=True)
    assert meta["config"]["iterations"] == 3
    assert json.loads((out / "metadata.json").read_text())["batches"]["0"]["final"]["iteration"] == 3


def test_an_incomplete_set_is_not_loaded(tmp_path, odd_set):
    import shutil

    from vitrt.calib.synthesis import load_metric_set
    from vitrt.compiler.errors import DataError

    out = tmp_path / "set"
    shutil.copytree(odd_set[0], out)
    meta = json.loads((out / "metadata.json").read_text())
    meta["complete"] = False
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="is incomplete"):
        load_metric_set(out)
    with pytest.raises(DataError, match="is incomplete"):
        load_data(f"synth:{out}", 32)


def test_the_default_jitter_is_the_papers_rounded_to_the_image_size():
    from vitrt.calib.synthesis_config import SynthesisConfig

    assert [SynthesisConfig().jitter_for(size) for size in (224, 52, 4)] == [30, 7, 1]
    assert SynthesisConfig(jitter=0).jitter_for(224) == 0


def test_a_set_made_with_another_seed_is_not_resumed(tmp_path, twin):
    from vitrt.calib.synthesis import SynthesisConfig, synthesize
    from vitrt.compiler.errors import OutputError

    out = tmp_path / "set"
    synthesize(twin, out, SynthesisConfig(**TINY), mean=0.5, std=0.5)
    with pytest.raises(OutputError, match=r"--seed 0 \(now 1\)"):
        synthesize(twin, out, SynthesisConfig(**TINY, seed=1), mean=0.5, std=0.5)


def test_the_feature_term_adds_both_distances_with_its_own_weight(twin):
    from vitrt.calib.synthesis import Inversion, SynthesisConfig, block_statistics, reference_statistics

    reference = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = reference_statistics(twin, reference)
    config = SynthesisConfig(jitter=0, no_flip=True, tv=0.3, l2=0.2, feature_weight=0.7)
    inversion = Inversion(twin, config, feature_targets=targets)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    total, parts = inversion.loss(x, torch.tensor([1, 2]), torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, features = inversion.twin.forward_with_features(x)
    expected = sum(float(torch.linalg.vector_norm(m - tm)) + float(torch.linalg.vector_norm(v - tv))
                   for (m, v), (tm, tv) in zip(block_statistics(features), targets))
    assert parts["feature"] == pytest.approx(expected, rel=1e-5)
    assert float(total) == pytest.approx(parts["ce"] + 0.3 * parts["tv"] + 0.2 * parts["l2"] + 0.7 * expected,
                                         rel=1e-5)


def test_the_cost_record_says_whether_the_pixels_were_clamped(twin):
    from vitrt.calib.synthesis import SynthesisConfig, invert_images, pixel_bounds

    config = SynthesisConfig(images=2, iterations=1, batch_size=2)
    _, free = invert_images(twin, config)
    images, clamped = invert_images(twin, config, bounds=pixel_bounds(0.5, 0.5, 3))
    assert free["clamped"] is False and clamped["clamped"] is True
    assert float(images.images.min()) >= -1 and float(images.images.max()) <= 1


@pytest.mark.parametrize("field", ["tv", "l2", "feature_weight"])
def test_a_negative_prior_weight_is_refused(field):
    from vitrt.calib.synthesis_config import SynthesisConfig
    from vitrt.compiler.errors import OptionError

    with pytest.raises(OptionError, match="--tv, --l2, --feature-weight >= 0"):
        SynthesisConfig(**{field: -0.5}).validate()
    SynthesisConfig(**{field: 0.0}).validate()


def test_take_images_stops_at_the_count():
    from vitrt.calib.data import take_images

    data = synthetic(8, 10, seed=0)
    assert [len(b) for b in take_images(data, 4, batch_size=2)] == [2, 2]
    assert [len(b) for b in take_images(data, 5, batch_size=2)] == [2, 2, 1]


def test_in_memory_inversion_is_the_same_as_the_sets(tmp_path, twin):
    from vitrt.calib.synthesis import SynthesisConfig, invert_images, load_metric_set, pixel_bounds, synthesize

    config = SynthesisConfig(images=4, iterations=2, batch_size=2, lr=0.1)
    synthesize(twin, tmp_path / "set", config, mean=0.5, std=0.5)
    in_memory, _ = invert_images(twin, config, bounds=pixel_bounds(0.5, 0.5, 3))
    on_disk = load_metric_set(tmp_path / "set")
    assert torch.equal(in_memory.labels, on_disk.labels)
    assert torch.allclose(in_memory.images, on_disk.images, atol=1e-6)


def test_an_empty_feature_reference_is_refused_before_anything_is_written(tmp_path, twin):
    """No reference images for the feature term: one-line VitrtError, no set started (it was a TypeError after the
    metadata was written)."""
    from vitrt.calib.synthesis import synthesize
    from vitrt.calib.synthesis_config import SynthesisConfig
    from vitrt.compiler.errors import VitrtError

    with pytest.raises(VitrtError, match="feature_reference holds no images"):
        synthesize(twin, tmp_path / "set", SynthesisConfig(images=2, iterations=1, batch_size=2), mean=0.5, std=0.5,
                   feature_reference=torch.zeros(0, 3, 32, 32))
    assert not (tmp_path / "set").exists()


def test_a_grayscale_model_grows_a_set(tmp_path):
    """synth() of a 1-channel ViT: timm's RGB mean/std become one grey channel (it stopped in a numpy error)."""
    from vitrt.calib.synthesis import synth

    meta = synth(tiny_vit(depth=1, in_chans=1), tmp_path / "set", images=2, iterations=1, batch_size=2, quiet=True)
    assert len(meta["normalization"]["mean"]) == 1 and len(meta["normalization"]["std"]) == 1
    assert (tmp_path / "set" / "metadata.json").is_file()
