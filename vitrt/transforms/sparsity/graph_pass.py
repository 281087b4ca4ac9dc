"""2:4 sparsity: every eligible weight becomes its 2:4-masked value (graph shape unchanged).

    MatMul(x, B[K, N])            ──►  MatMul(x, B ⊙ M)        M: in every 4 consecutive rows k of a column n,
    Conv(images, W[M, C, R, S])   ──►  Conv(images, W ⊙ M)        ≤ 2 kept (K = axis 0, TensorRT's check)
                                                                 Conv: ≤ 2 of every 4 input channels C
                                                                 at each output channel and kernel position

The plan (:mod:`vitrt.transforms.sparsity.plan`) carries the masks and, when the planner permuted channels or
fine-tuned, the twin parameters they apply to; the pass writes those first, then zeroes what the masks drop
(+0, never −0) and checks every eligible initializer is 2:4 along the axis TensorRT checks.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, SHAPES_INFERRED, TOPOSORTED, Pass, PassContext, PassResult
from vitrt.compiler.weights import write_state
from vitrt.kernels import sparse24
from vitrt.transforms.sparsity.plan import SparsityPlan, onnx_mask
from vitrt.transforms.sparsity.twin import apply_plan


class SparsityPass(Pass):
    name = "sparsity_2to4"
    requires = frozenset({CANONICAL})
    ensures = frozenset()
    preserves = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})
    changes_function = True

    def __init__(self, plan: SparsityPlan):
        self.plan = plan

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        written = write_state(view.graph, self.plan.weights) if self.plan.weights else 0
        constants = {t.name: t for t in view.graph.tensors().values() if isinstance(t, gs.Constant)}
        eligible = self.plan.eligible
        for d in eligible:
            tensor = constants.get(d.initializer)
            if tensor is None or tuple(tensor.shape) != d.shape:
                raise VitrtError(f"sparsity: the graph's '{d.initializer}' is not the {d.shape} weight the plan was "
                                 "made for (a pass before it changed the structure the planner saw)")
            masked = np.where(onnx_mask(d, self.plan.masks[d.name]), tensor.values, np.float32(0))  # +0, never -0
            if not sparse24.is_2to4(masked, d.axis):
                raise VitrtError(f"sparsity: '{d.initializer}' is not 2:4 along axis {d.axis} after masking")
            tensor.values = np.ascontiguousarray(masked, dtype=np.float32)
        stats = {"eligible": len(eligible), "skipped": len(self.plan.decisions) - len(eligible),
                 "initializers_written": written}
        return PassResult(view, bool(eligible) or written > 0, stats,
                          build_hints={"sparse_weights": True} if eligible else {})

    def apply_to_twin(self, twin):
        return apply_plan(twin, self.plan)
