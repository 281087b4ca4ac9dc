"""Tests added by a mutation audit of vitrt.calib.trainer, vitrt.calib.losses and vitrt.calib.evaluate: each pins a
behaviour (a docstring's contract or the arithmetic) that a one-line mutation could change without the existing tests
noticing. Scalar or one-layer models and a handful of images: well under a second each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import Fixed
from vitrt.calib.digits import ImageSet, augment
from vitrt.calib.evaluate import cross_entropy, torch_logits
from vitrt.calib.losses import (FeatureMimic, HardLabel, Objective, SoftLogits, feature_weight_factors,
                                per_feature_mse)
from vitrt.calib.trainer import TrainConfig, cosine_schedule, train


class Scalar(torch.nn.Module):
    def __init__(self, value: float = 0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([value]))


LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.5, 0.3]])
IMAGES = torch.zeros(2, 3, 4, 4)


def _pixels(*values) -> ImageSet:
    return ImageSet(torch.tensor(values).reshape(-1, 1, 1, 1), None)


def _lrs(lr, total, warmup):
    factor = cosine_schedule(total, warmup)
    return [lr * factor(t) for t in range(total)]


# --- trainer -------------------------------------------------------------------------------------------------------

def test_a_partial_last_batch_is_a_step_and_warm_up_is_counted_in_epochs():
    """3 images in batches of 2: 2 steps an epoch (ceil), warm-up_epochs = 1 is 2 steps; with a zero gradient only the
    decoupled decay moves w, so w follows the schedule exactly."""
    model = Scalar(3.0)
    config = TrainConfig(epochs=2, lr=0.1, batch_size=2, weight_decay=0.5, warmup_epochs=1)
    train(model, _pixels(0.0, 0.0, 0.0), lambda m, images, labels: (0.0 * m.w.sum(), {}), config)
    expected = 3.0 * math.prod(1 - lr * 0.5 for lr in _lrs(0.1, 4, 2))
    assert model.w.item() == pytest.approx(expected, rel=1e-6)


def test_gradients_do_not_accumulate_across_steps():
    """Two equal gradients: each Adam step is exactly lr_t (m̂ / √v̂ = 1); accumulated, the second would be 2g."""
    model = Scalar(0.0)
    config = TrainConfig(epochs=1, lr=0.01, batch_size=1, weight_decay=0.0)
    train(model, _pixels(1.0, 1.0), lambda m, images, labels: ((images.sum() * m.w).sum(), {}), config)
    assert model.w.item() == pytest.approx(-sum(_lrs(0.01, 2, 0)), rel=1e-5)


def test_gradients_are_clipped_to_the_configured_norm():
    """Gradients 1.5 and 100 clipped to norm 1 are both 1 (every step exactly lr_t); clipped to 2 they would differ."""
    for order in range(2):
        model = Scalar(0.0)
        config = TrainConfig(epochs=1, lr=0.01, batch_size=1, weight_decay=0.0, grad_clip=1.0, seed=order)
        train(model, _pixels(1.5, 100.0), lambda m, images, labels: ((images.sum() * m.w).sum(), {}), config)
        assert model.w.item() == pytest.approx(-sum(_lrs(0.01, 2, 0)), rel=1e-5)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 4)


MASK = torch.tensor([[True, False, True, False]] * 4)


def _masked_objective(m, images, labels):
    return ((m.fc(images.reshape(len(images), -1)) - 1.0) ** 2).mean(), {}


def test_masked_weights_are_zero_their_gradients_are_zero_and_the_rest_train():
    model = Linear()
    before = model.fc.weight.detach().clone()
    data = ImageSet(torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0)), None)
    train(model, data, _masked_objective, TrainConfig(epochs=2, lr=0.05, batch_size=2, grad_clip=0.5),
          masks={"fc": MASK})
    weight, grad = model.fc.weight.detach(), model.fc.weight.grad
    assert torch.all(weight[~MASK] == 0) and not torch.any(torch.signbit(weight[~MASK]))  # +0, never -0
    assert torch.all(grad[~MASK] == 0) and torch.all(grad[MASK] != 0)  # pruned gradients zeroed, the rest kept
    assert torch.all(weight[MASK] != before[MASK])


def test_masks_apply_even_without_an_epoch():
    model = Linear()
    train(model, _pixels(1.0), _masked_objective, TrainConfig(epochs=0, lr=0.05), masks={"fc": MASK})
    assert torch.all(model.fc.weight[~MASK] == 0) and torch.all(model.fc.weight[MASK] != 0)


def _seen(config, data):
    seen = []

    def objective(m, images, labels):
        seen.append(images.clone())
        return 0.0 * m.w.sum(), {}

    train(Scalar(), data, objective, config)
    return seen


@pytest.mark.parametrize("augmented", [False, True])
def test_one_generator_seeded_with_the_seed_draws_the_shuffle_then_the_augmentation(augmented):
    data = ImageSet(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)), None)
    config = TrainConfig(epochs=2, lr=0.1, batch_size=3, augment=augmented, seed=5)
    generator, want = torch.Generator().manual_seed(5), []
    for _ in range(2):
        for images, _ in data.batches(3, shuffle=True, generator=generator):
            want.append(augment(images, generator) if augmented else images)
    seen = _seen(config, data)
    assert len(seen) == len(want) == 6 and all(torch.equal(a, b) for a, b in zip(seen, want))
    assert not torch.equal(torch.cat(seen[:3]), data.images)  # shuffled


def test_history_is_the_per_epoch_mean_of_the_total_and_of_each_part_and_per_feature_is_the_mean_vector():
    def objective(m, images, labels):
        x = float(images.sum())
        return 2.0 * x + 0.0 * m.w.sum(), {"part": x, "per_feature": torch.tensor([x, 2 * x])}

    result = train(Scalar(), _pixels(1.0, 2.0, 4.0), objective, TrainConfig(epochs=1, lr=0.1, batch_size=1))
    assert result.history == [{"total": pytest.approx(14 / 3, abs=1e-5), "part": pytest.approx(7 / 3, abs=1e-5)}]
    assert result.per_feature == pytest.approx([7 / 3, 14 / 3])


def test_the_model_trains_in_train_mode_and_is_left_in_eval_mode():
    modes = []
    model = Scalar().eval()

    def objective(m, images, labels):
        modes.append(m.training)
        return 0.0 * m.w.sum(), {}

    train(model, _pixels(1.0, 2.0), objective, TrainConfig(epochs=1, lr=0.1, batch_size=1))
    assert modes == [True, True] and not model.training


def test_the_documented_defaults():
    """The recipes in vitrt pass these explicitly; the defaults are what the docstrings name."""
    config = TrainConfig(epochs=1, lr=1.0)
    assert (config.batch_size, config.weight_decay, config.warmup_epochs, config.grad_clip, config.augment,
            config.seed) == (32, 0.05, 0, None, False, 0)
    assert SoftLogits().temperature == 4.0 and HardLabel().label_smoothing == 0.0


# --- losses --------------------------------------------------------------------------------------------------------

def test_per_feature_mse_refuses_feature_lists_of_different_lengths():
    with pytest.raises(ValueError, match="teacher has 2 features, student 1"):
        per_feature_mse([torch.zeros(2), torch.zeros(2)], [torch.zeros(2)])


def test_per_feature_mse_never_sends_a_gradient_to_the_teacher():
    teacher = torch.ones(2, 3, requires_grad=True)
    student = torch.zeros(2, 3, requires_grad=True)
    per_feature_mse([teacher], [student]).sum().backward()
    assert teacher.grad is None and student.grad is not None


def test_feature_weight_factors_are_the_normalised_losses_and_uniform_when_all_are_zero():
    assert feature_weight_factors(torch.tensor([1.0, 3.0])).tolist() == [0.25, 0.75]
    assert feature_weight_factors(torch.zeros(4)).tolist() == [0.25] * 4


def test_soft_logits_without_a_teacher_are_refused_when_the_objective_is_built():
    with pytest.raises(ValueError, match="need a teacher"):
        Objective(SoftLogits())


def test_the_teacher_is_put_in_eval_mode():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(48, 3)).train()
    Objective(SoftLogits(), teacher=teacher)
    assert not teacher.training


def test_a_hard_label_loss_on_labelled_data_needs_no_teacher_and_unlabelled_data_without_one_is_refused():
    labels = torch.tensor([1, 2])
    loss, parts = Objective(HardLabel(weight=3.0, label_smoothing=0.1))(Fixed(LOGITS), IMAGES, labels)
    want = float(F.cross_entropy(LOGITS, labels, label_smoothing=0.1))
    assert parts["hard"] == pytest.approx(want) and float(loss) == pytest.approx(3 * want)  # parts are unweighted
    assert want != pytest.approx(float(F.cross_entropy(LOGITS, labels)))
    with pytest.raises(ValueError, match="needs a teacher"):
        Objective(HardLabel())(Fixed(LOGITS), IMAGES, None)


def test_per_feature_losses_are_detached_but_the_total_carries_the_gradient():
    student = [torch.ones(2, 3, requires_grad=True)]
    objective = Objective(FeatureMimic(), teacher=Fixed(LOGITS, [torch.zeros(2, 3)]))
    loss, parts = objective(Fixed(LOGITS, student), IMAGES, None)
    assert loss.requires_grad and not parts["per_feature"].requires_grad


# --- evaluate ------------------------------------------------------------------------------------------------------

def test_torch_logits_evaluate_in_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(4, 3)).train()
    data = ImageSet(torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(5).long())
    got = torch_logits(model, data)
    np.testing.assert_array_equal(got, model(data.images).detach().numpy())  # now in eval mode: deterministic


def test_cross_entropy_is_the_mean_negative_log_likelihood():
    assert cross_entropy(np.zeros((3, 4), np.float32), torch.tensor([0, 1, 3])) == pytest.approx(math.log(4))


# Defects the audit found, fixed with these tests (each failed before its fix)

class _OnDevice(torch.nn.Module):
    """Logits and two features on ``device`` (meta here: it behaves like CUDA for device checks, no GPU needed)."""

    def __init__(self, device):
        super().__init__()
        self.device = device

    def forward(self, images):
        return torch.zeros(2, 3, device=self.device)

    def forward_with_features(self, images):
        return self.forward(images), [torch.ones(2, 3, device=self.device), torch.ones(2, 3, device=self.device)]


def _failure(term) -> str:
    model = _OnDevice("meta")
    try:
        Objective(term, teacher=model)(model, IMAGES, None)
    except RuntimeError as error:
        return str(error)
    return ""


def test_feature_weights_follow_the_features_device():
    """QAT always passes W_j (FeatureMimic(γ, feature_weights)); they are built on the CPU, so on a CUDA model the
    weighted sum fails with a device mismatch where the unweighted term runs. On the meta device both should get as
    far as reading the value back (.item()), the weighted one fails earlier today."""
    assert _failure(FeatureMimic(feature_weights=(0.5, 0.5))) == _failure(FeatureMimic())
