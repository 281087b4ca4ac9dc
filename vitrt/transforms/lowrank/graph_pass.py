"""Low rank: every factored linear layer becomes two MatMuls of rank r; the second keeps the canonical name.

    x ─► MatMul(L, W[K, N]) ─► Add(L.bias_add) ─►        becomes
    x ─► MatMul(L.u, U[K, r]) ─► MatMul(L, V[r, N]) ─► Add(L.bias_add) ─►

with U = uᵀ and V = weightᵀ of the plan's factors (initializers ``L.u.weight`` and ``L.weight``; the bias is the
plan's, which fine-tuning may have changed). The spec records the ranks (``extra['lowrank']``), and the graph view
validates both factors against it, so the graph stays canonical: ``view.linear(L)`` is the second MatMul (its
bias Add is where it was — token merging still reads the keys at ``attn.k.bias_add``).

Which passes can follow: token merging reads only the bias Adds and the block structure, and cleanup is generic;
2:4 sparsity, Q/DQ and precision typing address every linear as one K x N weight and are refused in the same
compile (``--lowrank`` needs ``--precision fp32`` and no ``--sparsity``) — factors are not masked, quantized or
typed yet.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from vitrt.compiler.errors import SpecError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, SHAPES_INFERRED, TOPOSORTED, Pass, PassContext, PassResult
from vitrt.compiler.weights import write_state
from vitrt.transforms.lowrank.plan import LowRankPlan
from vitrt.transforms.lowrank.twin import factor_twin


def factor_graph(view: GraphView, plan: LowRankPlan) -> dict:
    """Factor the plan's layers in ``view``'s graph, in place (the caller attaches the new spec); returns stats."""
    if plan.weights:  # fine-tuning changed the other parameters too
        write_state(view.graph, plan.weights)
    params_saved = 0
    for layer in plan.factored():
        ref = view.linear(layer.name)
        if (ref.in_features, ref.out_features) != (layer.k, layer.n):
            raise SpecError(f"low rank: {layer.name} is [{ref.in_features}, {ref.out_features}], planned [{layer.k}, {layer.n}]")
        x = ref.matmul.inputs[0]
        shape = None if x.shape is None else (*x.shape[:-1], layer.rank)
        hidden = gs.Variable(f"{layer.name}.u.out", dtype=np.float32, shape=shape)
        u = gs.Constant(f"{layer.name}.u.weight", np.ascontiguousarray(plan.factors[f"{layer.name}.u"].T, np.float32))
        view.graph.nodes.append(gs.Node("MatMul", f"{layer.name}.u", inputs=[x, u], outputs=[hidden]))
        ref.matmul.inputs[0] = hidden
        ref.weight.values = np.ascontiguousarray(plan.factors[f"{layer.name}.weight"].T, dtype=np.float32)
        if ref.bias is not None:
            ref.bias.values = np.ascontiguousarray(plan.factors[f"{layer.name}.bias"], dtype=np.float32)
        params_saved += layer.params_before - layer.params_after
    view.graph.toposort()
    view.refresh()
    return {"factored": len(plan.factored()), "ranks": plan.ranks, "params_saved": params_saved}


class LowRankPass(Pass):
    """Truncated-SVD factorisation of linear layers (plan: ranks and factors); the twin gets LowRankLinear."""

    name = "lowrank"
    requires = frozenset({CANONICAL})
    preserves = frozenset({CANONICAL, SHAPES_INFERRED, TOPOSORTED})
    changes_function = True
    run_after = ("prune", "token_merge")

    def __init__(self, plan: LowRankPlan):
        self.plan = plan

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        new_spec = self.plan.apply_to_spec(view.spec)
        if not self.plan.factored() and not self.plan.weights:
            return PassResult(view, False, {"factored": 0})
        stats = factor_graph(view, self.plan)
        return PassResult(GraphView(view.graph, new_spec), True, stats)  # validates both factors against the spec

    def apply_to_twin(self, twin):
        return factor_twin(twin, self.plan)
