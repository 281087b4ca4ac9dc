"""The pass framework: schedule checks, graph-property checks, instruments, twin verification, and the cleanup pass."""

import copy

import numpy as np
import onnx_graphsurgeon as gs
import pytest
import torch

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.cleanup import CleanupPass
from vitrt.compiler.pass_manager import (CANONICAL, SHAPES_INFERRED, TOPOSORTED, OpCountInstrument, Pass,
                                         PassContext, PassManager, PassResult, check_properties)
from vitrt.compiler.verify import VerifyInstrument, verification_inputs

from conftest import tiny_vit


class NoOp(Pass):
    name = "noop"

    def run(self, view, ctx):
        return PassResult(view, False)


class NeedsShapes(NoOp):
    name = "needs_shapes"
    requires = frozenset({CANONICAL, SHAPES_INFERRED})


class AfterCleanup(NoOp):
    name = "after_cleanup"
    run_after = ("cleanup",)


class ScaleFc2(Pass):
    """Doubles one weight in ONNX; with ``twin`` it does the same to the torch twin (an honest pass)."""

    name = "scale_fc2"
    changes_function = True

    def __init__(self, twin: bool):
        self.twin = twin

    def run(self, view, ctx):
        weight = view.block(0).linear("mlp.fc2").weight
        weight.values = weight.values * 2
        return PassResult(view, True, {"scaled": 1})

    def apply_to_twin(self, twin):
        if not self.twin:
            return twin
        twin = copy.deepcopy(twin)
        twin.blocks[0].mlp.fc2.weight.data *= 2
        return twin


@pytest.fixture
def setup():
    twin = canonicalize(tiny_vit())
    return GraphView.from_onnx(lower(twin, batch=2)), twin


def test_schedule_ordering_is_enforced():
    with pytest.raises(VitrtError, match="'after_cleanup' must run after 'cleanup'"):
        PassManager([AfterCleanup(), CleanupPass()])
    PassManager([CleanupPass(), AfterCleanup()])


def test_requirements_dropped_by_a_modifying_pass_fail_the_schedule():
    PassManager([NeedsShapes()])  # shapes hold right after lowering
    with pytest.raises(VitrtError, match=r"'needs_shapes' requires \['shapes_inferred'\]"):
        PassManager([ScaleFc2(True), NeedsShapes()])
    PassManager([ScaleFc2(True), CleanupPass(), NeedsShapes()])
    with pytest.raises(VitrtError, match="scheduled twice"):
        PassManager([NoOp(), NoOp()])


def test_verify_instrument_accepts_an_honest_pass_and_names_a_broken_one(setup):
    view, twin = setup
    images = verification_inputs(view.spec, batch=2)
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    result = PassManager([ScaleFc2(True)], [VerifyInstrument(images, 2)]).run(view, PassContext(), twin=twin)
    record = result.records[0]
    assert record.stats["verify_max_abs_err"] <= 1e-4 and record.changes_function
    assert result.twin is not twin and all(torch.equal(before[k], v) for k, v in twin.state_dict().items())
    with pytest.raises(VitrtError, match="pass 'scale_fc2' broke numerical equivalence"):
        PassManager([ScaleFc2(False)], [VerifyInstrument(images, 2)]).run(view, PassContext(), twin=twin)


def test_cleanup_folds_constants_removes_dead_nodes_and_infers_shapes(setup):
    view, twin = setup
    view = CleanupPass().run(view, PassContext()).view  # folds what lowering left (the static-batch Expand)
    graph = view.graph
    # A constant subgraph scaling the attention logits (2 * 0.5 = 1: same function) and a dead node.
    scale = view.block(0).node("attn.qk")
    product = gs.Variable("const_product", dtype=np.float32)
    graph.nodes.append(gs.Node("Mul", "foldable", inputs=[gs.Constant("two", np.array(2.0, np.float32)),
                                                             gs.Constant("half", np.array(0.5, np.float32))],
                               outputs=[product]))
    out = gs.Variable("rescaled", dtype=np.float32)
    graph.nodes.append(gs.Node("Mul", "rescale", inputs=[scale.outputs[0], product], outputs=[out]))
    softmax = view.block(0).node("attn.softmax")
    softmax.inputs[0] = out
    graph.nodes.append(gs.Node("Relu", "dead", inputs=[scale.outputs[0]], outputs=[gs.Variable("dead_out", dtype=np.float32)]))
    view.refresh()
    images = verification_inputs(view.spec, batch=2)
    counter = OpCountInstrument()
    result = PassManager([CleanupPass()], [counter, VerifyInstrument(images, 2)]).run(view, twin=twin)
    result_view, records = result.view, result.records
    stats = records[0].stats
    assert records[0].modified and stats["nodes_removed"] == 2  # the folded Mul and the dead Relu
    assert stats["op_delta"] == {"Mul": -1, "Relu": -1}
    assert stats["tensors_without_static_shape"] == 0
    assert all(t.shape is not None for t in result_view.graph.tensors().values())
    assert stats["verify_max_abs_err"] <= 1e-4
    # a dynamic batch is the one symbolic dimension allowed: it is no tensor "without a static shape"
    dynamic = GraphView.from_onnx(lower(twin, batch=None))
    assert CleanupPass().run(dynamic, PassContext()).stats["tensors_without_static_shape"] == 0


class ClaimsShapes(Pass):
    """Says it ensures inferred shapes but leaves a tensor without one (a dishonest pass)."""

    name = "claims_shapes"
    ensures = frozenset({SHAPES_INFERRED})

    def run(self, view, ctx):
        view.block(0).node("attn.softmax").outputs[0].shape = None
        return PassResult(view, True)


class Unsorts(Pass):
    """Moves the last node to the front: the graph is no longer topologically sorted."""

    name = "unsorts"
    preserves = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})

    def run(self, view, ctx):
        view.graph.nodes.insert(0, view.graph.nodes.pop())
        return PassResult(view, True)


def test_properties_are_checked_against_the_graph_under_verify(setup):
    view, _ = setup
    assert check_properties(view, {CANONICAL, SHAPES_INFERRED, TOPOSORTED}) == []
    PassManager([ClaimsShapes()]).run(view)  # the schedule alone cannot see it
    with pytest.raises(VitrtError, match="after pass 'claims_shapes'.*shapes_inferred: tensor 'blocks.0.attn.softmax.out'"):
        PassManager([ClaimsShapes()], check_properties=True).run(setup[0])


class HonestUnsorts(Unsorts):
    """Unsorts the graph and says so: it does not preserve TOPOSORTED."""

    name = "honest_unsorts"
    preserves = frozenset({CANONICAL, SHAPES_INFERRED})


class KeepsAll(NoOp):
    name = "keeps_all"
    preserves = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})


def test_the_final_check_names_the_reference_it_compared_with(tmp_path):
    """--verify compares the compiled graph with the timm model where no pass changed the function (the twin's
    error reported beside it), with the twin where one did, and a compiled CanonicalViT with itself: the twin."""
    from vitrt.pipeline.driver import compile

    model = tiny_vit()
    plain = compile(model, tmp_path / "plain", verify=True, batch=2, quiet=True).manifest["verify"]
    assert plain["reference"] == "timm model" and 0 <= plain["max_abs_err_twin"] <= plain["tolerance"]
    merged = compile(model, tmp_path / "tome", tome="2", verify=True, batch=2, quiet=True).manifest["verify"]
    assert merged["reference"] == "torch twin" and "max_abs_err_twin" not in merged
    twin = compile(canonicalize(model), tmp_path / "twin", verify=True, batch=2, quiet=True).manifest["verify"]
    assert twin["reference"] == "torch twin" and "max_abs_err_twin" not in twin


def test_a_property_a_modifying_pass_gave_up_is_not_expected_afterwards(tiny_model):
    """After a pass that modified the graph and did not preserve TOPOSORTED, a later pass that preserves
    everything is not held to TOPOSORTED; a pass that did not modify the graph keeps every property."""
    view = GraphView.from_onnx(lower(canonicalize(tiny_model), batch=2))
    PassManager([HonestUnsorts(), KeepsAll()], check_properties=True).run(view)
    fresh = GraphView.from_onnx(lower(canonicalize(tiny_model), batch=2))
    with pytest.raises(VitrtError, match="after pass 'unsorts'"):  # not modified -> nothing given up
        PassManager([NoOp(), Unsorts()], check_properties=True).run(fresh)


def test_only_the_batch_dimension_may_be_symbolic():
    """A dynamic-batch graph has shapes inferred (its batch is the one symbolic dimension); a tensor symbolic in
    any other dimension has not."""
    dynamic = GraphView.from_onnx(lower(canonicalize(tiny_vit()), batch=None))
    assert check_properties(dynamic, {SHAPES_INFERRED}) == []
    tensor = next(t for t in dynamic.graph.tensors().values() if isinstance(t, gs.Variable) and t.shape
                  and len(t.shape) == 3)
    tensor.shape = [tensor.shape[0], "tokens", tensor.shape[2]]
    assert "has a non-static shape" in check_properties(dynamic, {SHAPES_INFERRED})[0]


def test_a_pass_that_breaks_a_preserved_property_is_named(tiny_model):
    view = GraphView.from_onnx(lower(canonicalize(tiny_model), batch=2))
    with pytest.raises(VitrtError, match="after pass 'unsorts'.*toposorted: node"):
        PassManager([Unsorts()], check_properties=True).run(view)


def test_ordering_is_checked_across_every_stage_of_the_compile():
    """One schedule over all stages: a pass that must follow another stage's pass is refused before it."""
    from vitrt.pipeline.stages import FINAL_PASSES, STAGES

    passes = {stage.name: stage.graph_pass for stage in STAGES}
    PassManager([s.graph_pass for s in STAGES] + list(FINAL_PASSES))  # the STAGES order holds
    with pytest.raises(VitrtError, match="'qdq' must run after 'sparsity_2to4'"):
        PassManager([passes["quant"], passes["sparsity"]])
    with pytest.raises(VitrtError, match="'precision_typing' must run after 'qdq'"):
        PassManager([passes["precision"], passes["quant"]])


def test_tolerances_are_declared_on_the_passes():
    """Every stage's pass declares the tolerance its graph is verified with; exact passes keep fp32's."""
    from vitrt.compiler.pass_manager import FP32_TOLERANCE
    from vitrt.transforms.precision.plan import BF16_TOLERANCE, FP16_TOLERANCE, PrecisionPlan
    from vitrt.transforms.precision.graph_pass import PrecisionTypingPass

    assert CleanupPass().tolerance() == FP32_TOLERANCE
    assert PrecisionTypingPass(PrecisionPlan()).tolerance() == FP16_TOLERANCE > FP32_TOLERANCE
    assert PrecisionTypingPass(PrecisionPlan("bf16")).tolerance() == BF16_TOLERANCE > FP16_TOLERANCE
