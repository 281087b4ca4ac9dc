"""The shared trainer's pieces on known inputs: each loss term against its formula, the learning-rate schedule, the
digits shift augmentation, and the timing statistics every benchmark reports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitrt.calib.digits import augment
from vitrt.calib.losses import FeatureMimic, HardLabel, Objective, SoftLogits
from vitrt.calib.trainer import cosine_schedule
from vitrt.compiler.timing import Interleaved, typical_ms


class Fixed(torch.nn.Module):
    """Returns given logits and features whatever the images (the objective's arithmetic alone)."""

    def __init__(self, logits, features=()):
        super().__init__()
        self.logits, self.features = logits, list(features)

    def forward(self, images):
        return self.logits

    def forward_with_features(self, images):
        return self.logits, self.features


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
