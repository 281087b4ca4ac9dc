"""Tests added by a mutation audit of vitrt.calib.synthesis(_config): each pins a behaviour that a one-line mutation
could change without the existing tests noticing. Tiny models and sets: seconds each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_vit
from vitrt.calib.synthesis import balanced_labels
from vitrt.compiler.models import canonicalize


@pytest.fixture(scope="module")
def twin():
    return canonicalize(tiny_vit(depth=1))


def test_total_variation_squares_the_differences():
    """Σ_d mean((Δ_d x)²): stripes of height 0.5 give 3 · 0.25 (an absolute difference would give 1.5)."""
    from vitrt.calib.synthesis import total_variation

    stripes = torch.zeros(1, 3, 8, 8)
    stripes[..., ::2] = 0.5
    assert float(total_variation(stripes)) == pytest.approx(0.75)


def test_clamping_keeps_the_whole_pixel_range(twin):
    """After clamp_ values beyond the range sit exactly on pixel 0 and pixel 1 (per channel), those inside stay."""
    from vitrt.calib.synthesis import Inversion, SynthesisConfig, pixel_bounds

    bounds = pixel_bounds((0.2, 0.5, 0.7), (0.25, 0.5, 0.3), 3)
    inversion = Inversion(twin, SynthesisConfig(), bounds)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 10
    inside = (x >= bounds[0]) & (x <= bounds[1])
    original = x.clone()
    inversion.clamp_(x)
    low, high = bounds[0].expand_as(x), bounds[1].expand_as(x)
    assert torch.equal(x[original > high], high[original > high])
    assert torch.equal(x[original < low], low[original < low])
    assert torch.equal(x[inside], original[inside])


@pytest.fixture(scope="module")
def seeded_set(tmp_path_factory, twin):
    """A finished set of 3 images in batches of 2, seed 1, default jitter (32 px: round(30 · 32 / 224) = 4)."""
    from vitrt.calib.synthesis import SynthesisConfig, synthesize

    out = tmp_path_factory.mktemp("seeded") / "set"
    config = SynthesisConfig(images=3, iterations=10, batch_size=2, lr=0.1, seed=1)
    return out, config, synthesize(twin, out, config, mean=0.5, std=0.5, model="tiny")


def test_a_seeded_set_on_disk_is_the_in_memory_inversion(seeded_set, twin):
    """synthesize and invert_images seed each batch's noise alike for every --seed, not only for 0."""
    from vitrt.calib.synthesis import invert_images, load_metric_set, pixel_bounds

    out, config, _ = seeded_set
    in_memory, _ = invert_images(twin, config, bounds=pixel_bounds(0.5, 0.5, 3))
    on_disk = load_metric_set(out)
    assert torch.equal(in_memory.labels, on_disk.labels)
    assert torch.allclose(in_memory.images, on_disk.images, atol=1e-6)


def test_the_metadata_records_the_jitter_used_and_the_times(seeded_set):
    _, config, meta = seeded_set
    assert meta["jitter_pixels"] == 4 == config.jitter_for(32)
    batches = meta["batches"].values()
    assert meta["seconds"] == pytest.approx(sum(b["seconds"] for b in batches), abs=0.011)
    for b in batches:
        assert b["seconds_per_iteration"] * config.iterations == pytest.approx(b["seconds"], abs=0.006)
        assert b["seconds_per_iteration"] < b["seconds"] or b["seconds"] == 0


def test_a_set_recorded_under_another_model_name_is_not_resumed(seeded_set, twin):
    from vitrt.calib.synthesis import synthesize
    from vitrt.compiler.errors import OutputError

    out, config, _ = seeded_set
    with pytest.raises(OutputError, match=r"other settings \(the model\)"):
        synthesize(twin, out, config, mean=0.5, std=0.5, model="another")


def test_an_existing_empty_directory_takes_a_new_set(tmp_path, twin):
    from vitrt.calib.synthesis import SynthesisConfig, synthesize

    (tmp_path / "set").mkdir()
    meta = synthesize(twin, tmp_path / "set", SynthesisConfig(images=2, iterations=1, batch_size=2), mean=0.5, std=0.5)
    assert meta["complete"] and (tmp_path / "set" / "metadata.json").is_file()


def test_a_set_read_at_another_size_is_resized_bilinearly(seeded_set):
    import torch.nn.functional as F

    from vitrt.calib.synthesis import load_metric_set

    out, _, _ = seeded_set
    exact = load_metric_set(out).images
    resized = load_metric_set(out, img_size=20).images
    assert torch.allclose(resized, F.interpolate(exact, size=(20, 20), mode="bilinear", align_corners=False))


def test_the_shipped_digits_model_refuses_another_input_size():
    from vitrt.calib.synthesis import model_for_synthesis
    from vitrt.compiler.errors import OptionError

    with pytest.raises(OptionError, match="is the shipped model: it takes no checkpoint, pretrained weights or image "
                                          "size$"):
        model_for_synthesis("digits-reference", img_size=64)


@pytest.mark.parametrize("field", ["images", "iterations", "batch_size"])
def test_a_count_of_zero_is_refused(field):
    from vitrt.calib.synthesis_config import SynthesisConfig
    from vitrt.compiler.errors import OptionError

    with pytest.raises(OptionError, match="--images, --iters and --batch must be >= 1"):
        SynthesisConfig(**{field: 0}).validate()
    SynthesisConfig(**{field: 1}).validate()


def test_the_default_jitter_is_at_least_one_pixel_on_tiny_images():
    from vitrt.calib.synthesis_config import SynthesisConfig

    assert SynthesisConfig().jitter_for(2) == 1


def test_a_set_made_with_another_prior_weight_is_not_resumed(seeded_set, twin):
    from dataclasses import replace

    from vitrt.calib.synthesis import synthesize
    from vitrt.compiler.errors import OutputError

    out, config, _ = seeded_set
    with pytest.raises(OutputError, match=r"--l2 0.01 \(now 0.02\)"):
        synthesize(twin, out, replace(config, l2=0.02), mean=0.5, std=0.5, model="tiny")


# --- a defect found by this audit (fixed with these tests) -------------------------------------------------------

def test_fewer_images_than_classes_draw_their_classes_by_the_seed():
    draws = {tuple(sorted(balanced_labels(5, 1000, seed).tolist())) for seed in range(4)}
    assert len(draws) > 1, f"every seed assigned the classes {sorted(draws)[0]}"
    assert all(len(set(classes)) == 5 for classes in draws)  # still one image per class where it can be


def test_labels_stay_balanced_when_images_outnumber_classes():
    """Pins the part of the contract that the fix must keep (passes today)."""
    for seed in range(3):
        counts = np.bincount(balanced_labels(23, 10, seed).numpy(), minlength=10)
        assert counts.max() - counts.min() <= 1 and counts.sum() == 23


def test_a_whole_number_of_rounds_keeps_the_labels_sets_were_recorded_with():
    """100 or 250 images of 10 classes (the recorded digits sets): the same labels as before the fix, so a recorded
    `vitrt synth` command still makes the same set."""
    for count, seed in ((100, 0), (250, 3)):
        before = (torch.arange(count) % 10)[torch.randperm(count, generator=torch.Generator().manual_seed(seed))]
        assert torch.equal(balanced_labels(count, 10, seed), before)
