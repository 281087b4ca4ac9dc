"""Knowledge-distillation fine-tuning (vitrt.transforms.distill): the common recipe — tiny model, structure unchanged,
ONNX Runtime vs the fine-tuned twin at the fp32 tolerance, ONNX checker, the plan's round trip, a stateless pass and a
twin transform that never mutates its input — plus: a compile runs the stage after token merging, verifies and
reports it (slow)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch

from conftest import max_abs, tiny_vit
from vitrt.calib.digits import ImageSet
from vitrt.compiler.cleanup import CleanupPass
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import FP32_TOLERANCE, PassManager
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.verify import VerifyInstrument, run_onnx, run_torch, verification_inputs
from vitrt.transforms.base import PlanContext
from vitrt.transforms.distill import planner
from vitrt.transforms.distill.config import DistillConfig
from vitrt.transforms.distill.graph_pass import DistillPass
from vitrt.transforms.distill.plan import DistillPlan

BATCH = 2


@dataclass(frozen=True)
class SmallData(PlanContext):
    """The planners' data source, 64 random images (the stage's own 1024 synthetic images take minutes here)."""

    def data(self, source, split="train", limit=None, labelled=False):
        return ImageSet(torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)), None)


@pytest.fixture(scope="module")
def distilled():
    """(dense twin, plan): one epoch of distillation of the dense twin on random images."""
    twin = canonicalize(tiny_vit())
    ctx = SmallData(target=TargetConfig(batch=BATCH), teacher=copy.deepcopy(twin).eval())
    return twin, planner.plan(twin, ctx, DistillConfig(epochs=1).validate())


def test_graph_matches_the_distilled_twin(distilled):
    twin, plan = distilled
    view = GraphView.from_onnx(lower(twin, batch=BATCH))
    images = verification_inputs(view.spec, BATCH, count=2)
    result = PassManager([DistillPass(plan), CleanupPass()], [VerifyInstrument(images, BATCH)],
                         check_properties=True).run(view, twin=twin)
    model = result.view.to_onnx()
    onnx.checker.check_model(model)
    student = DistillPass(plan).apply_to_twin(twin)
    assert max_abs(run_onnx(model, images, BATCH), run_torch(student, images)) <= FP32_TOLERANCE
    assert result.records[0].stats["verify_max_abs_err"] <= FP32_TOLERANCE
    assert result.view.op_counts() == view.op_counts()  # weights change, structure does not
    assert max_abs(run_torch(student, images), run_torch(twin, images)) > 0  # training changed the function
    assert plan.record["epochs"] == 1 and len(plan.record["loss_per_epoch"]) == 1


def test_plan_round_trips_and_is_validated(distilled):
    _, plan = distilled
    again = DistillPlan.from_dict(plan.to_dict(), plan.arrays())
    assert again.to_dict() == plan.to_dict() and set(again.weights) == set(plan.weights)
    for key, value in plan.weights.items():
        np.testing.assert_array_equal(again.weights[key], value)
    with pytest.raises(VitrtError, match="format"):
        DistillPlan.from_dict({"format": 99}, plan.arrays())
    with pytest.raises(VitrtError, match="no weights"):
        DistillPlan.from_dict(plan.to_dict(), {})


def test_pass_is_stateless_and_the_twin_transform_never_mutates_its_input(distilled):
    twin, plan = distilled
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    graph_pass = DistillPass(plan)
    first = graph_pass.apply_to_twin(twin)
    second = graph_pass.apply_to_twin(twin)
    assert all(torch.equal(before[k], v) for k, v in twin.state_dict().items())
    assert all(torch.equal(first.state_dict()[k], v) for k, v in second.state_dict().items())


@pytest.mark.slow  # 1024 synthetic images per epoch: minutes on a loaded 2-core machine
def test_compile_runs_distillation_after_merging_and_verifies(tmp_path):
    from vitrt.pipeline.driver import compile

    result = compile(tiny_vit(depth=2, img_size=64), tmp_path / "out", tome="4", distill_epochs=1, verify=True,
                     batch=BATCH, quiet=True)
    manifest = result.manifest
    assert manifest["distillation"]["epochs"] == 1
    assert [p["name"] for p in manifest["passes"] if p["name"] in ("token_merge", "distill")] == \
        ["token_merge", "distill"]
    assert manifest["verify"]["ok"]
    with pytest.raises(VitrtError, match="distill-epochs"):
        compile(tiny_vit(), tmp_path / "bad", distill_epochs=-1, quiet=True)
    assert not (tmp_path / "bad").exists()


def test_the_recipe_distils_at_temperature_two_on_1024_synthetic_images():
    """Without --distill-data the planner asks for 1024 synthetic images, and the soft-logit term runs at τ = 2
    (the recipe's eq. 4); negative epochs are refused."""
    from vitrt.compiler.errors import OptionError
    from vitrt.compiler.target import TargetConfig
    from vitrt.transforms.base import PlanContext
    from vitrt.transforms.distill import planner
    from vitrt.transforms.distill.config import DistillConfig

    asked = []

    @dataclass(frozen=True)
    class Recording(PlanContext):
        def data(self, source, split="train", limit=None, labelled=False):
            asked.append((source, limit))
            return ImageSet(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), None)

    twin = canonicalize(tiny_vit())
    plan = planner.plan(twin, Recording(target=TargetConfig(batch=2), teacher=twin), DistillConfig(epochs=1))
    assert asked == [("synthetic", 1024)] and plan.record["temperature"] == 2.0
    with pytest.raises(OptionError):
        DistillConfig(epochs=-1).validate()
