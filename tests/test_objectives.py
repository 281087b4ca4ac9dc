"""The shared trainer's pieces on known inputs: each loss term against its formula, the learning-rate schedule,
AdamW's decoupled weight decay, gradient clipping, the digits shift augmentation, and the timing statistics every
benchmark reports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import Fixed
from vitrt.calib.digits import augment
from vitrt.calib.losses import FeatureMimic, HardLabel, Objective, SoftLogits
from vitrt.calib.trainer import cosine_schedule
from vitrt.compiler.timing import Interleaved, typical_ms


LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.5, 0.3]])
TEACHER = torch.tensor([[1.0, 1.0, 0.0], [3.0, -1.0, 0.0]])
IMAGES = torch.zeros(2, 3, 4, 4)


def test_soft_logits_are_t_squared_times_the_kl_at_temperature_t():
    t = 4.0
    want = t * t * F.kl_div(F.log_softmax(LOGITS / t, 1), F.softmax(TEACHER / t, 1), reduction="batchmean")
    loss, parts = Objective(SoftLogits(temperature=t), teacher=Fixed(TEACHER))(Fixed(LOGITS), IMAGES, None)
    assert float(loss) == pytest.approx(float(want), rel=1e-6) and parts["soft"] == pytest.approx(float(want), rel=1e-6)


def test_the_hard_label_is_the_label_when_there_is_one_and_the_teachers_argmax_otherwise():
    labels = torch.tensor([1, 2])  # not the teacher's argmax (0, 0)
    objective = Objective(HardLabel(), SoftLogits(weight=0.0), teacher=Fixed(TEACHER))
    assert float(objective(Fixed(LOGITS), IMAGES, labels)[0]) == pytest.approx(float(F.cross_entropy(LOGITS, labels)))
    assert float(objective(Fixed(LOGITS), IMAGES, None)[0]) == \
        pytest.approx(float(F.cross_entropy(LOGITS, TEACHER.argmax(1))))


def test_feature_mimicking_weights_each_feature_by_its_w():
    teacher = [torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)]
    student = [torch.full((2, 3), 1.0), torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)]  # MSE 1, 4, 9
    objective = Objective(FeatureMimic(feature_weights=(0.0, 1.0, 0.5)), teacher=Fixed(TEACHER, teacher))
    loss, parts = objective(Fixed(LOGITS, student), IMAGES, None)
    assert float(loss) == pytest.approx(4.0 + 4.5) and parts["per_feature"].tolist() == [1.0, 4.0, 9.0]


def test_the_schedule_warms_up_linearly_then_decays_by_a_cosine_to_zero():
    factor = cosine_schedule(10, 2)
    assert [factor(0), factor(1), factor(2)] == [0.5, 1.0, 1.0]
    assert factor(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8))) and factor(10) == pytest.approx(0.0)


def test_the_shift_augmentation_reaches_every_shift_up_to_its_bound():
    images = torch.full((400, 1, 8, 8), 1.0)
    shifted = augment(images, torch.Generator().manual_seed(0), max_shift=3)
    # a vertical shift leaves padding (-1) above or below the image: every amount 0..3, both ways, appears
    def padding(column):
        pad = (column == -1.0).tolist()
        return pad.index(False), pad[::-1].index(False)  # (rows above, rows below)

    seen = {padding(img[0, :, 4]) for img in shifted}
    assert seen == {(3, 0), (2, 0), (1, 0), (0, 0), (0, 1), (0, 2), (0, 3)}


def test_typical_time_is_the_median_of_wall_times_and_the_least_cpu_time():
    assert typical_ms([3.0, 1.0, 2.0], "wall") == 2.0 and typical_ms([3.0, 1.0, 2.0], "cpu") == 1.0


def test_a_speedup_is_the_median_of_the_per_round_ratios():
    """Not the ratio of the medians: a busy round changes one ratio, not the answer."""
    timed = Interleaved({"a": [[1.0], [4.0], [4.0]], "b": [[2.0], [1.0], [8.0]]}, "wall")
    assert timed.speedup("a", "b") == 0.5  # ratios 0.5, 4, 0.5; the ratio of the medians would be 4 / 2 = 2
    assert timed.typical("a") == 4.0


class Scalar(torch.nn.Module):
    """One weight w; the loss its objective builds from it decides the gradient exactly."""

    def __init__(self, value: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([value]))


def _steps_lr(config, steps: int) -> list[float]:
    factor = cosine_schedule(config.epochs * steps, config.warmup_epochs * steps)
    return [config.lr * factor(t) for t in range(config.epochs * steps)]


def test_weight_decay_is_decoupled_and_follows_the_schedule():
    """With a zero gradient Adam's update is 0, so only AdamW's decoupled decay moves w: w ← w·(1 − lr_t·wd)."""
    from vitrt.calib.digits import ImageSet
    from vitrt.calib.trainer import TrainConfig, train

    model = Scalar(3.0)
    config = TrainConfig(epochs=2, lr=0.1, batch_size=1, weight_decay=0.5)
    train(model, ImageSet(torch.zeros(3, 1, 2, 2), None), lambda m, images, labels: (0.0 * m.w.sum(), {}), config)
    expected = 3.0 * math.prod(1 - lr * 0.5 for lr in _steps_lr(config, 3))
    assert model.w.item() == pytest.approx(expected, rel=1e-6) and expected < 2.9


def test_gradient_clipping_bounds_each_steps_gradient_norm():
    """Gradients of 10 and 100 clipped to norm 1 are the same gradient, so every Adam step is exactly lr_t (the
    ratio m̂ / √v̂ is 1); unclipped, the second step is not."""
    from vitrt.calib.digits import ImageSet
    from vitrt.calib.trainer import TrainConfig, train

    data = ImageSet(torch.tensor([10.0, 100.0]).reshape(2, 1, 1, 1), None)
    objective = lambda m, images, labels: ((images.sum() * m.w).sum(), {})  # noqa: E731 (gradient = the pixel)
    results = {}
    for clip in (1.0, None):
        model = Scalar(0.0)
        config = TrainConfig(epochs=1, lr=0.01, batch_size=1, weight_decay=0.0, grad_clip=clip)
        train(model, data, objective, config)
        results[clip] = model.w.item()
    assert results[1.0] == pytest.approx(-sum(_steps_lr(config, 2)), rel=1e-5)
    assert results[None] != pytest.approx(results[1.0], rel=1e-3)
