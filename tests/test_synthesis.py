"""Synthetic metric sets (vitrt.calib.synthesis, ``vitrt synth``, ``synth:SET``) and the compile's accuracy section
(``--metric-set`` / ``--eval-data``): tiny random ViTs and a few inversion steps, so every test runs in seconds."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_vit
from vitrt.calib.data import load_data
from vitrt.calib.digits import ImageSet
from vitrt.calib.synthesis import (Inversion, MetricSet, SynthesisConfig, balanced_labels, block_statistics,
                                   load_metric_set, metric_loss, pixel_bounds, reference_statistics, synthesize,
                                   total_variation)
from vitrt.cli import main
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import canonicalize

SMALL = SynthesisConfig(images=6, iterations=40, batch_size=4, lr=0.1)


@pytest.fixture(scope="module")
def twin():
    return canonicalize(tiny_vit(depth=2))


@pytest.fixture(scope="module")
def made_set(tmp_path_factory, twin):
    out = tmp_path_factory.mktemp("synth") / "set"
    meta = synthesize(twin, out, SMALL, mean=0.5, std=0.5, model="tiny")
    return out, meta


def test_the_inversion_lowers_the_loss_it_optimises(digits_reference):
    """From N(0, 1) noise towards the assigned labels, through the trained digits reference: its cross entropy
    on the images drops far below that of the starting noise."""
    reference = canonicalize(digits_reference[0])
    labels = torch.tensor([0, 3, 7, 9])
    inversion = Inversion(reference, SMALL, pixel_bounds(0.5, 0.5, 3))
    images, history = inversion.invert(labels, seed=0)
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(reference(noise), labels))
        after = float(torch.nn.functional.cross_entropy(reference(images), labels))
    assert after < 0.25 * before
    assert images.min() >= -1 and images.max() <= 1  # clamped to the pixel range of mean = std = 0.5
    assert [h["iteration"] for h in history][-1] == SMALL.iterations and {"ce", "tv", "l2"} <= set(history[-1])


def test_priors_and_labels():
    flat = torch.zeros(1, 3, 8, 8)
    assert float(total_variation(flat)) == 0.0
    stripes = flat.clone()
    stripes[..., ::2] = 1.0  # every horizontal and diagonal neighbour differs by 1, vertical ones not at all
    assert float(total_variation(stripes)) == pytest.approx(3.0)
    diagonal = torch.eye(8).reshape(1, 1, 8, 8)  # the two diagonal directions differ here: both must be counted
    want = 0.0
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pairs = [(float(diagonal[0, 0, y + dy, x + dx] - diagonal[0, 0, y, x])) ** 2
                 for y in range(8 - dy) for x in range(max(0, -dx), 8 - max(0, dx))]
        want += sum(pairs) / len(pairs)
    assert float(total_variation(diagonal)) == pytest.approx(want)
    labels = balanced_labels(23, 10, seed=1)
    assert sorted(np.bincount(labels.numpy()).tolist()) == [2] * 7 + [3] * 3
    assert not torch.equal(labels, balanced_labels(23, 10, seed=2))


def test_feature_statistics_pool_over_batches(twin):
    """The feature term's targets equal the statistics of the whole reference set, however it is batched."""
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    pooled = reference_statistics(twin, images, batch_size=3)
    with torch.no_grad():
        whole = block_statistics(twin.forward_with_features(images)[1])
    for (m, v), (wm, wv) in zip(pooled, whole):
        assert torch.allclose(m, wm, atol=1e-5) and torch.allclose(v, wv, atol=1e-4)
    inversion = Inversion(twin, SynthesisConfig(iterations=2), None, pooled)
    _, parts = inversion.loss(images[:2].clone().requires_grad_(True), torch.tensor([1, 2]), torch.Generator())
    assert parts["feature"] > 0


def test_a_set_on_disk(made_set, twin):
    out, meta = made_set
    assert meta["complete"] and len(meta["labels"]) == 6 and len(meta["batches"]) == 2
    assert meta["model_metric"]["images"] == 6
    pngs = sorted(p.relative_to(out / "images") for p in (out / "images").rglob("*.png"))
    assert len(pngs) == 6 and all(p.parent.name == str(meta["labels"][int(p.stem)]) for p in pngs)
    data = load_data(f"synth:{out}", 32)
    assert data.labelled and data.labels.tolist() == meta["labels"] and data.images.shape == (6, 3, 32, 32)
    assert MetricSet.of(data, twin).evaluate(twin) == meta["model_metric"] and meta["model_metric"]["loss"] == 0
    assert len(load_data(f"synth:{out}", 32, limit=4)) == 4
    assert load_data(f"synth:{out}", 16).images.shape[-1] == 16  # resized for another input size
    # the exported ImageFolder holds the same pictures (8-bit): read back through the model's preprocessing
    # (mean = std = 0.5, no crop) it gives the exact images to within the 8-bit rounding
    digits_like = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0, "interpolation": "bilinear"}
    folder = load_data(str(out / "images"), 32, preprocessing=digits_like)
    exact = load_metric_set(out).images
    assert len(folder) == 6
    for position, (path, _) in enumerate(folder.dataset.samples):
        image = folder.dataset[position][0]
        assert (image - exact[int(Path(path).stem)]).abs().max() <= 1.01 / 255 / 0.5
    # without the model's preprocessing timm's ImageNet defaults would be used: not the images the model saw
    imagenet = next(load_data(str(out / "images"), 32).batches(6))[0]
    assert (imagenet.abs().max() > 1.5)
    with pytest.raises(VitrtError, match=f"synthetic metric set, not an ImageFolder: name it synth:{out}"):
        load_data(str(out), 32)


def test_resuming_an_interrupted_set_repeats_no_finished_batch(tmp_path, twin, made_set, monkeypatch):
    calls = []
    real = Inversion.invert

    def interrupted(self, labels, seed, on_step=None):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, labels, seed, on_step)

    monkeypatch.setattr(Inversion, "invert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(twin, tmp_path / "set", SMALL, mean=0.5, std=0.5, model="tiny")
    with pytest.raises(VitrtError, match="incomplete .1 batch"):
        load_metric_set(tmp_path / "set")
    calls.clear()
    meta = synthesize(twin, tmp_path / "set", SMALL, mean=0.5, std=0.5, model="tiny")
    assert len(calls) == 1 and meta["complete"]  # only the unfinished batch ran again
    resumed, fresh = load_metric_set(tmp_path / "set"), load_metric_set(made_set[0])
    assert torch.equal(resumed.images, fresh.images) and torch.equal(resumed.labels, fresh.labels)


def test_refusals(tmp_path, twin, made_set):
    out = made_set[0]
    with pytest.raises(VitrtError, match=r"made with other settings \(--iters 40 \(now 41\)\)"):
        synthesize(twin, out, replace(SMALL, iterations=41), mean=0.5, std=0.5, model="tiny")
    with pytest.raises(VitrtError, match=r"other settings \(the model fingerprint\)"):
        synthesize(canonicalize(tiny_vit(depth=1)), out, SMALL, mean=0.5, std=0.5, model="tiny")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a set")
    for force in (False, True):  # --force starts over a synthetic set, never a directory of something else
        with pytest.raises(VitrtError, match="holds no synthetic metric set"):
            synthesize(twin, tmp_path / "other", SMALL, mean=0.5, std=0.5, force=force)
        assert (tmp_path / "other" / "x.txt").exists()
    with pytest.raises(VitrtError, match="not a synthetic metric set"):
        load_data(f"synth:{tmp_path / 'other'}", 32)
    with pytest.raises(VitrtError, match="--images, --iters and --batch"):
        SynthesisConfig(images=0).validate()
    with pytest.raises(VitrtError, match="--lr must be > 0"):
        SynthesisConfig(lr=0).validate()
    with pytest.raises(VitrtError, match="--jitter must be >= 0, got -1"):
        SynthesisConfig(jitter=-1).validate()
    assert SynthesisConfig(jitter=0).validate().jitter_for(224) == 0  # no jitter at all is a setting
    for bad in ({"lr": float("nan")}, {"tv": float("inf")}):
        with pytest.raises(VitrtError, match="must be a finite number"):
            replace(SMALL, **bad).validate()
    (tmp_path / "file").write_text("")
    with pytest.raises(VitrtError, match="cannot create the set's directory"):
        synthesize(twin, tmp_path / "file" / "set", SMALL, mean=0.5, std=0.5)
    # a set from another model: its labels do not fit this one (refused in one line, not an IndexError)
    five_classes = canonicalize(tiny_vit(depth=1, num_classes=5))
    with pytest.raises(VitrtError, match="labels go up to 9 but the model has 5 classes"):
        MetricSet.of(ImageSet(torch.zeros(2, 3, 32, 32), torch.tensor([1, 9])), five_classes)
    with pytest.raises(VitrtError, match="labels go up to 5 but the model has 5 classes"):  # classes are 0..4
        MetricSet.of(ImageSet(torch.zeros(2, 3, 32, 32), torch.tensor([1, 5])), five_classes)
    with pytest.raises(VitrtError, match="the metric set has 1-channel images but the model takes 3"):
        MetricSet.of(ImageSet(torch.zeros(2, 1, 32, 32), torch.tensor([1, 2])), five_classes)


def test_a_damaged_batch_is_grown_again(tmp_path, twin, made_set, monkeypatch):
    """A truncated batch file (a full disk, a killed copy) is not trusted on resume: that batch alone runs again."""
    out = tmp_path / "set"
    shutil.copytree(made_set[0], out)
    damaged = out / "batches" / "b00001.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(VitrtError, match="unreadable"):
        load_metric_set(out)
    calls = []
    real = Inversion.invert
    monkeypatch.setattr(Inversion, "invert", lambda self, labels, seed, on_step=None: calls.append(seed) or
                        real(self, labels, seed, on_step))
    synthesize(twin, out, SMALL, mean=0.5, std=0.5, model="tiny")
    assert calls == [SMALL.seed * 100_003 + 1]
    assert torch.equal(load_metric_set(out).images, load_metric_set(made_set[0]).images)


def test_metric_loss():
    """KL(dense ‖ model) of the softmax outputs (DC-ViT's metric loss), CE against the labels, top-1."""
    logits = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    dense = np.array([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]])  # the last image: the dense model is undecided
    result = metric_loss(logits, [0, 1, 1], dense)
    ce = float(np.mean([np.log1p(np.exp(-4)), np.log1p(np.exp(-4)), np.log1p(np.exp(4))]))
    p = 1 / (1 + np.exp(-4))  # the model's probability of class 0 on the last image
    kl = (0.5 * np.log(0.5 / p) + 0.5 * np.log(0.5 / (1 - p))) / 3
    assert result["loss"] == pytest.approx(kl, abs=1e-6) and result["ce"] == pytest.approx(ce, abs=1e-5)
    assert result["top1"] == pytest.approx(2 / 3, abs=1e-5) and metric_loss(dense, [0, 1, 1], dense)["loss"] == 0


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "set"
    argv = ["synth", "vit_tiny_patch16_224", "--img-size", "32", "-o", str(out), "--images", "3", "--iters", "2",
            "--batch", "2", "--quiet"]
    assert main(argv) == 0  # random weights: timm's initialisation under a fixed seed, the same model every run
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["complete"] and meta["model"] == "vit_tiny_patch16_224" and meta["config"]["iterations"] == 2
    assert f"synth:{out}" in capsys.readouterr().out
    assert main(argv) == 0  # a finished set made with the same model and settings: nothing to redo
    import timm

    other = timm.create_model("vit_tiny_patch16_224", img_size=32).state_dict()  # unseeded: other weights
    torch.save(other, tmp_path / "other.pt")
    assert main([*argv, "--checkpoint", str(tmp_path / "other.pt")]) == 2  # other weights: refused without --force
    assert "other settings (the model fingerprint)" in capsys.readouterr().err
    assert main(["synth", "vit_tiny_patch16_224", "--images", "3"]) == 2  # no -o: one line, exit 2
    assert "pass -o SET" in capsys.readouterr().err


def test_compile_reports_the_data_free_estimate_beside_real_accuracy(tmp_path, made_set):
    import vitrt

    model = tiny_vit(depth=2)
    dense = vitrt.compile(model, tmp_path / "dense", quiet=True, metric_set=f"synth:{made_set[0]}",
                          eval_data="digits")
    accuracy = dense.manifest["accuracy"]
    assert accuracy["metric"]["images"] == 6 and accuracy["real"]["images"] == 450
    assert accuracy["metric"]["compiled"]["loss"] == pytest.approx(accuracy["metric"]["dense"]["loss"], abs=1e-4)
    assert accuracy["real"]["top1_compiled"] == pytest.approx(accuracy["real"]["top1_dense"], abs=1e-9)
    # the dense artifact is the dense model: its KL to it on the real test split is ~0, its cross entropy the same
    assert accuracy["real"]["kl_to_dense"] == pytest.approx(0.0, abs=1e-4)
    assert accuracy["real"]["ce_compiled"] == pytest.approx(accuracy["real"]["ce_dense"], abs=1e-3)
    merged = vitrt.compile(model, tmp_path / "tome", quiet=True, tome="4", dfe_skip=0,
                           metric_set=f"synth:{made_set[0]}")
    assert merged.manifest["accuracy"]["metric"]["compiled"]["loss"] != accuracy["metric"]["compiled"]["loss"]
    assert "real" not in merged.manifest["accuracy"]
    # the set was grown from this model (its fingerprint); another model's set is measured, and said to be another's
    assert accuracy["metric"]["grown_from_this_model"] is True
    other = vitrt.compile(tiny_vit(depth=3), tmp_path / "other", quiet=True, metric_set=f"synth:{made_set[0]}")
    assert other.manifest["accuracy"]["metric"]["grown_from_this_model"] is False
    with pytest.raises(VitrtError, match="no engine to measure"):
        vitrt.compile(model, tmp_path / "nobuild", quiet=True, backend="trt", no_build=True,
                      metric_set=f"synth:{made_set[0]}")
    assert not (tmp_path / "nobuild").exists()


def test_the_dense_figures_of_real_accuracy_are_the_dense_models(tmp_path, digits_reference, digits_test):
    """top1_dense and ce_dense are the untransformed twin's on the test split, not the artifact's: an int8 artifact
    of the digits reference classifies fewer test images correctly than the dense model does."""
    import vitrt
    from vitrt.calib.evaluate import cross_entropy, top1, torch_logits

    result = vitrt.compile("digits", tmp_path / "int8", precision="int8", calib_data="synthetic", calib_images=16,
                           eval_data="digits", quiet=True)
    real = result.manifest["accuracy"]["real"]
    dense = torch_logits(canonicalize(digits_reference[0]), digits_test)
    assert real["images"] == len(digits_test) == 450
    assert real["top1_dense"] == pytest.approx(top1(dense, digits_test.labels), abs=1e-6)
    assert real["ce_dense"] == pytest.approx(cross_entropy(dense, digits_test.labels), abs=1e-5)
    assert real["top1_compiled"] != real["top1_dense"] and real["ce_compiled"] != real["ce_dense"]  # they can differ


def test_the_inversion_loss_is_cross_entropy_plus_its_image_priors(twin):
    """total = CE + tv · TV(x) + l2 · mean(x²) (no feature term here), on the un-augmented image's priors; a
    horizontal flip is what the augmentation mirrors."""
    config = SynthesisConfig(images=2, iterations=1, batch_size=2, tv=0.3, l2=0.7)
    inversion = Inversion(twin, replace(config, no_flip=True))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    total, parts = inversion.loss(x, torch.tensor([1, 2]), torch.Generator().manual_seed(0))
    assert float(total) == pytest.approx(parts["ce"] + 0.3 * parts["tv"] + 0.7 * parts["l2"], rel=1e-5)
    assert parts["l2"] == pytest.approx(float(x.pow(2).mean())) and parts["tv"] == pytest.approx(
        float(total_variation(x)))
    flipping = Inversion(twin, replace(config, jitter=0, no_flip=False))
    flips = [flipping.augment(x, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(3)) for f in flips)
    assert any(torch.equal(f, x.flip(3)) for f in flips)


def test_the_python_api_checks_options_as_the_cli_does(tmp_path, twin):
    """vitrt.synth takes the fields' names and the flags' (iterations= or iters=); a wrong type, an unknown name or
    a name-only option with a module is one line worded for Python, and nothing is written."""
    import vitrt

    for options, message in ((dict(iters=0), "^images, iters and batch must be >= 1"),
                             (dict(iterations="2"), "iters takes an int, got '2'"),
                             (dict(batch=4.5), "batch takes an int"), (dict(bogus=1), "unknown option 'bogus'")):
        with pytest.raises(VitrtError, match=message):
            vitrt.synth("digits", tmp_path / "set", **options)
    with pytest.raises(VitrtError, match="build a model from its name"):
        vitrt.synth(tiny_vit(), tmp_path / "set", img_size=64)
    assert not (tmp_path / "set").exists()
    # a refusal after the options (the output directory) is worded for Python too
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(VitrtError, match="choose another out") as info:
        vitrt.synth("digits", tmp_path / "mine", images=2, iters=1, quiet=True)
    assert " -o" not in str(info.value) and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_the_python_api_shows_progress_unless_quiet(tmp_path, capsys):
    """vitrt.synth shows its progress on stderr by default, as vitrt.compile does (it was silent for minutes)."""
    import vitrt

    vitrt.synth("digits", tmp_path / "loud", images=2, iters=1, batch=2)
    assert "synth" in capsys.readouterr().err.lower()
    vitrt.synth("digits", tmp_path / "quiet", images=2, iters=1, batch=2, quiet=True)
    assert capsys.readouterr().err == ""


def test_a_limited_metric_set_keeps_its_labels_in_step_with_its_images(made_set):
    from vitrt.calib.synthesis import load_metric_set

    out, meta = made_set
    limited = load_metric_set(out, limit=3)
    assert len(limited.images) == len(limited.labels) == 3 and limited.labels.tolist() == meta["labels"][:3]


def test_resuming_with_another_normalisation_or_feature_reference_is_refused(tmp_path, twin, made_set):
    """The pixel range (mean / std) and the feature term's reference images shape the images as much as the flags:
    a set made with others is not resumed (the same number of other reference images included)."""
    with pytest.raises(VitrtError, match=r"other settings \(the normalization\)"):
        synthesize(twin, made_set[0], SMALL, mean=0.5, std=0.25, model="tiny")
    tiny = SynthesisConfig(images=2, iterations=2, batch_size=2)
    references = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    synthesize(twin, tmp_path / "set", tiny, mean=0.5, std=0.5, model="tiny", feature_reference=references[0])
    with pytest.raises(VitrtError, match=r"other settings \(the feature reference digest\)"):
        synthesize(twin, tmp_path / "set", tiny, mean=0.5, std=0.5, model="tiny", feature_reference=references[1])


def test_the_jitter_rolls_both_ways(twin):
    """DeepInversion's jitter is a roll by -J..J pixels in each direction, not only towards larger indices."""
    inversion = Inversion(twin, SynthesisConfig(jitter=3, no_flip=True))
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 16, 16] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifts = set()
    for _ in range(200):
        y, x_ = (int(i) for i in inversion.augment(x, generator)[0, 0].nonzero()[0])
        shifts.add((y - 16, x_ - 16))
    rows, columns = {dy for dy, _ in shifts}, {dx for _, dx in shifts}
    assert rows == columns == set(range(-3, 4))


def test_the_last_iteration_is_in_the_history(tmp_path, twin):
    """Losses are recorded every 10 % of the steps and at the last one, also when 10 % does not divide them: the
    metadata's 'final' is the loss of the images saved."""
    config = SynthesisConfig(images=2, iterations=25, batch_size=2)
    meta = synthesize(twin, tmp_path / "set", config, mean=0.5, std=0.5, model="tiny")
    history = meta["batches"]["0"]["history"]
    assert [h["iteration"] for h in history] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]
    assert meta["batches"]["0"]["final"] == history[-1]


def test_a_set_without_its_image_folder_is_finished_again(tmp_path, twin, made_set, monkeypatch):
    """A complete set whose images/ folder was deleted is not complete: rerunning writes the folder again from the
    saved batches, without growing any batch again."""
    out = tmp_path / "set"
    shutil.copytree(made_set[0], out)
    shutil.rmtree(out / "images")
    monkeypatch.setattr(Inversion, "invert", lambda *args, **kwargs: pytest.fail("a finished batch was grown again"))
    meta = synthesize(twin, out, SMALL, mean=0.5, std=0.5, model="tiny")
    assert meta["complete"] and len(list((out / "images").rglob("*.png"))) == 6
