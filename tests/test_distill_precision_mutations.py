"""Tests added by a mutation audit of vitrt.transforms.distill (config, plan, planner, graph pass, stage) and
vitrt.transforms.precision (plan, graph pass, stage, typed twin): each pins a behaviour that a one-line mutation
could change without the existing tests noticing. Tiny models and data sets: seconds each."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conftest import tiny_vit
from vitrt.calib.digits import ImageSet
from vitrt.calib.losses import HardLabel, Objective, SoftLogits
from vitrt.calib.trainer import TrainConfig, train
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import PassManager
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.weights import parameter_state
from vitrt.transforms.base import PlanContext
from vitrt.transforms.distill import planner
from vitrt.transforms.distill.config import DistillConfig
from vitrt.transforms.distill.graph_pass import DistillPass
from vitrt.transforms.distill.plan import DistillPlan
from vitrt.transforms.distill.stage import TRANSFORM as DISTILL
from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
from vitrt.transforms.precision.plan import PrecisionPlan, plan_for
from vitrt.transforms.precision.stage import TRANSFORM as PRECISION

IMAGES = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(40) % 10


@dataclass(frozen=True)
class FixedData(PlanContext):
    """The planners' data source: 40 fixed images (labelled or not); records what the planner asked for."""

    labels: torch.Tensor | None = None
    asked: list = None

    def data(self, source, split="train", limit=None, labelled=False):
        self.asked.append((source, limit))
        return ImageSet(IMAGES, self.labels)


@pytest.fixture(scope="module")
def student():
    return canonicalize(tiny_vit(depth=1))


@pytest.fixture(scope="module")
def teacher():
    """A dense teacher that is not the student (another initialisation): the soft term has something to teach."""
    return canonicalize(tiny_vit(depth=1, qkv_bias=False)).eval()


# --- vitrt.transforms.distill ----------------------------------------------------------------------------------

def test_distillation_is_off_by_default_and_on_from_one_epoch():
    assert DistillConfig().epochs == 0 and not DistillConfig().enabled
    assert DistillConfig(epochs=1).enabled and DistillConfig(epochs=0).validate().epochs == 0
    assert not DISTILL.enabled(DistillConfig(), TargetConfig())
    assert DISTILL.enabled(DistillConfig(epochs=1), TargetConfig())


@pytest.mark.parametrize("labels", [None, LABELS], ids=["unlabelled", "labelled"])
def test_the_distilled_weights_are_the_recipe_trained_from_the_dense_teacher(student, teacher, labels):
    """The plan's weights are the student after --distill-epochs epochs of eq. 4 (CE + KL at τ = 2, each weight 1)
    against ctx.teacher, lr 2e-4, batch 32, weight decay 0.05, the context's seed; shifts (augment) only where the
    data has labels; the record has one loss per epoch and names the data."""
    asked = []
    ctx = FixedData(target=TargetConfig(batch=2), teacher=teacher, seed=3, labels=labels, asked=asked)
    plan = planner.plan(student, ctx, DistillConfig(epochs=2, data="some/folder"))
    assert asked == [("some/folder", None)]
    expected = copy.deepcopy(student).train().requires_grad_(True)
    history = train(expected, ImageSet(IMAGES, labels),
                    Objective(HardLabel(1.0), SoftLogits(1.0, temperature=2.0), teacher=teacher),
                    TrainConfig(epochs=2, lr=2e-4, batch_size=32, weight_decay=0.05, augment=labels is not None,
                                seed=3)).history
    want = parameter_state(expected)
    assert set(plan.weights) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(plan.weights[name], value, rtol=0, atol=1e-6, err_msg=name)
    assert plan.record["epochs"] == 2 and plan.record["data"] == "some/folder" and plan.record["lr"] == 2e-4
    assert plan.record["loss_per_epoch"] == pytest.approx([h["total"] for h in history])


def test_the_plan_keeps_its_record_and_refuses_what_is_not_a_plan():
    weights = {"head.weight": np.ones((10, 64), np.float32)}
    plan = DistillPlan(weights, {"epochs": 3, "data": "digits"})
    assert plan.to_dict()["record"] == {"epochs": 3, "data": "digits"}
    arrays = {**plan.arrays(), "other/head.bias": np.zeros(10, np.float32)}  # not a weight: ignored
    again = DistillPlan.from_dict(plan.to_dict(), arrays)
    assert set(again.weights) == {"head.weight"} and again.record == plan.record
    with pytest.raises(VitrtError, match="format None is not supported"):
        DistillPlan.from_dict({"record": {}}, plan.arrays())  # no format: not a plan of this version
    with pytest.raises(VitrtError, match="format None is not supported"):
        DistillPlan.from_dict(["format", 1], plan.arrays())


def test_the_distill_report_is_the_training_record():
    plan = DistillPlan({"head.weight": np.ones((10, 64), np.float32)}, {"epochs": 1, "loss_per_epoch": [0.5]})
    assert DISTILL.report(plan, None).manifest == {"epochs": 1, "loss_per_epoch": [0.5]}


def test_distillation_is_refused_before_pruning_or_token_merging(student):
    from vitrt.transforms.prune.graph_pass import PrunePass
    from vitrt.transforms.prune.plan import PruningPlan
    from vitrt.transforms.tome.graph_pass import TokenMergePass
    from vitrt.transforms.tome.schedule import TomeSchedule, resolve

    distill = DistillPass(DistillPlan(parameter_state(student)))
    merge = TokenMergePass(resolve(TomeSchedule(r=2, skip=0), student.spec))
    prune = PrunePass(PruningPlan.keep_all(student.spec))
    for before in (merge, prune):
        with pytest.raises(VitrtError, match=f"'distill' must run after '{before.name}'"):
            PassManager([distill, before])
        PassManager([before, distill])


# --- vitrt.transforms.precision --------------------------------------------------------------------------------

def test_the_typing_pass_is_verified_at_its_dtypes_tolerance():
    assert PrecisionTypingPass(plan_for("bf16", 17)).tolerance() == 0.25
    assert PrecisionTypingPass(PrecisionPlan("fp16")).tolerance() == 5e-2


def test_the_precision_section_names_the_typed_weights_and_the_fp32_interface():
    plan = plan_for("bf16", 17)
    assert PRECISION.report(plan, None).manifest == {
        "activations": "bf16", "float_weights": "bf16", "graph_io": "fp32",
        "kept_fp32": ["LayerNormalization", "Conv", "TopK", "ConstantOfShape"]}


def test_the_stage_plans_at_the_targets_opset():
    """At opset 21 ConstantOfShape has bf16 (from 20): the plan keeps only Conv and TopK besides LayerNorm."""
    target = TargetConfig(backend="trt", precision="bf16", opset=21).validate()
    plan = PRECISION.plan(None, PlanContext(target=target, teacher=None), None)
    assert plan == plan_for("bf16", 21) and plan.keep_fp32 == ("LayerNormalization", "Conv", "TopK")


def test_typing_is_refused_before_qdq(student):
    from vitrt.transforms.quant.fakequant import quantize_twin
    from vitrt.transforms.quant.graph_pass import QDQPass
    from vitrt.transforms.quant.plan import QuantPlan

    _, table = quantize_twin(student, "int4w")
    qdq, typing = QDQPass(QuantPlan("int4w", table)), PrecisionTypingPass(PrecisionPlan("fp16"))
    with pytest.raises(VitrtError, match="'precision_typing' must run after 'qdq'"):
        PassManager([typing, qdq])
    PassManager([qdq, typing])


def test_the_typing_stats_count_the_retyped_constants(student):
    """constants_fp16 is the number of fp32 initializers the pass retyped: the fp16 initializers of the typed graph
    (before cleanup); the kept LayerNorms' own scale and bias stay fp32."""
    import onnx

    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.lower import lower

    view = GraphView.from_onnx(lower(student, batch=2))
    result = PassManager([PrecisionTypingPass(PrecisionPlan("fp16"))]).run(view)
    model, records = result.view.to_onnx(), result.records
    f16 = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert records[0].stats["constants_fp16"] == len(f16) > 0
    norms = {n.input[i] for n in model.graph.node if n.op_type == "LayerNormalization" for i in (1, 2)}
    assert {t.data_type for t in model.graph.initializer if t.name in norms} == {onnx.TensorProto.FLOAT}


# Defects the audit found, fixed with these tests (each failed before its fix)

def eleven_class_folder(root):
    """An ImageFolder with 11 classes (one 8x8 image each): labels up to 10, one more than a 10-class model has."""
    from PIL import Image

    for c in range(11):
        (root / f"c{c:02d}").mkdir()
        Image.fromarray(np.full((8, 8, 3), 20 * c, np.uint8)).save(root / f"c{c:02d}" / "0.png")
    return str(root)


def test_distillation_data_whose_labels_are_not_the_models_classes_is_refused_in_one_line(tmp_path, student):
    """The distillation loss uses the data's labels (CE with the labels, eq. 4), so the planner must ask for labelled
    data (PlanContext.data(labelled=True)), as pruning's fine-tuning and QAT do: an ImageFolder with 11 class folders
    for a 10-class model is a DataError in one line, not an IndexError from inside torch's cross entropy."""
    from vitrt.compiler.errors import DataError

    ctx = PlanContext(target=TargetConfig(batch=2), teacher=copy.deepcopy(student).eval())
    with pytest.raises(DataError, match=r"has 11 class folder\(s\), the model 10 classes"):
        planner.plan(student, ctx, DistillConfig(epochs=1, data=eleven_class_folder(tmp_path)))


def test_low_rank_fine_tuning_data_whose_labels_are_not_the_models_classes_is_refused_in_one_line(tmp_path, student):
    """Low-rank fine-tuning trains with the hard label too (NViT's objective): the same omission, the same refusal."""
    from vitrt.compiler.errors import DataError
    from vitrt.transforms.lowrank.config import LowRankConfig
    from vitrt.transforms.lowrank.planner import finetune

    ctx = PlanContext(target=TargetConfig(batch=2), teacher=copy.deepcopy(student).eval())
    options = LowRankConfig(finetune_epochs=1, data=eleven_class_folder(tmp_path))
    with pytest.raises(DataError, match=r"has 11 class folder\(s\), the model 10 classes"):
        finetune(copy.deepcopy(student).train(), ctx, options)


def test_the_typed_twin_of_a_twin_with_quantized_attention_still_quantizes_it(student):
    """int8 with --quantize-attention for TensorRT types the Q/DQ graph fp16, and its attention Q/DQ stay in the graph;
    typed_twin must keep QuantAttention's quantizers too (it replaced every CanonicalAttention subclass by
    _MixedAttention, whose forward is CanonicalAttention's, so the typed twin --verify compares with had none)."""
    from vitrt.calib.data import synthetic
    from vitrt.compiler.verify import run_torch, verification_inputs
    from vitrt.transforms.precision.twin import typed_twin
    from vitrt.transforms.quant.fakequant import ATTENTION_QUANTIZERS, quantize_twin

    qtwin, _ = quantize_twin(student, "int8", synthetic(32, 16, seed=3), quantize_attention=True)
    typed = typed_twin(qtwin, "fp16")
    images = verification_inputs(student.spec, 2, count=1)
    with_quantizers = run_torch(typed, images)
    for block in typed.model.blocks:
        for attr in ATTENTION_QUANTIZERS:
            getattr(block.attn, attr).disable()
    assert float(np.abs(with_quantizers - run_torch(typed, images)).max()) > 1e-4
