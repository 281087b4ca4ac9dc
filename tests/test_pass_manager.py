"""The pass framework: schedule checks, instruments, twin verification, and the cleanup pass."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import (CANONICAL, SHAPES_INFERRED, OpCountInstrument, Pass, PassContext,
                                         PassManager, PassResult)
from vitrt.compiler.verify import VerifyInstrument, verification_inputs
from vitrt.compiler.cleanup import CleanupPass

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

    def apply_to_twin(self, twin, ctx):
        if self.twin:
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
    ctx = PassContext(twin=twin)
    _, records = PassManager([ScaleFc2(True)], [VerifyInstrument(images, 2)]).run(view, ctx)
    assert records[0].stats["verify_max_abs_err"] <= 1e-4 and records[0].changes_function
    with pytest.raises(VitrtError, match="pass 'scale_fc2' broke numerical equivalence"):
        PassManager([ScaleFc2(False)], [VerifyInstrument(images, 2)]).run(view, ctx)


def test_cleanup_folds_constants_removes_dead_nodes_and_infers_shapes(setup):
    view, twin = setup
    view = CleanupPass().run(view, PassContext()).view  # folds what lowering left (the static-batch Expand)
    graph = view.graph
    # A constant subgraph feeding the scale (2 * 0.5 = 1: same function) and a dead node.
    scale = view.block(0).node("attn.scale")
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
    result_view, records = PassManager([CleanupPass()], [counter, VerifyInstrument(images, 2)]).run(view, PassContext(twin=twin))
    stats = records[0].stats
    assert records[0].modified and stats["nodes_removed"] == 2  # the folded Mul and the dead Relu
    assert stats["op_delta"] == {"Mul": -1, "Relu": -1}
    assert stats["tensors_without_static_shape"] == 0
    assert all(t.shape is not None for t in result_view.graph.tensors().values())
    assert stats["verify_max_abs_err"] <= 1e-4
