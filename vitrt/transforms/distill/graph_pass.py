"""Distillation: the graph's initializers become the plan's fine-tuned parameters (structure unchanged).

    MatMul(x, W) ─► ...   becomes   MatMul(x, W') ─► ...      for every parameter the plan carries
"""

from __future__ import annotations

import copy

from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, SHAPES_INFERRED, TOPOSORTED, Pass, PassContext, PassResult
from vitrt.compiler.weights import load_parameter_state, write_state
from vitrt.transforms.distill.plan import DistillPlan


class DistillPass(Pass):
    name = "distill"
    requires = frozenset({CANONICAL})
    preserves = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})
    changes_function = True
    run_after = ("prune", "token_merge")

    def __init__(self, plan: DistillPlan):
        self.plan = plan

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        written = write_state(view.graph, self.plan.weights)
        return PassResult(view, True, {"initializers_written": written})

    def apply_to_twin(self, twin):
        model = copy.deepcopy(twin).eval()
        load_parameter_state(model, self.plan.weights)
        return model
