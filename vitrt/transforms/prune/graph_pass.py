"""Structural pruning: slice every initializer a PruningPlan touches, so the graph computes the pruned ViT.

Per block (kept indices come from the plan; qk/v columns are head-major, ``h * dim + d``)::

    norm1[emb] ─► q/k W[emb, H·qk] ──► Reshape [-1, T, H, qk]      ─► ... ─► MatMul(attn.qk) ─► Softmax
                  v   W[emb, H·v]  ──► Reshape [-1, T, H, v]  ─► ... ─► merge_heads [-1, T, H·v]
                  proj W[H·v, emb] ──► Add(residual1)
    norm2[emb] ─► fc1 W[emb, mlp] ─► GELU ─► fc2 W[mlp, emb] ─► Add(residual2)

becomes the same subgraph with every ``emb``, ``H``, ``qk``, ``v`` and ``mlp`` axis cut to the kept indices,
the reshape constants rewritten, and the attention scale left at the original 1/sqrt(qk) (it lives in q's
weight and bias, uniformly, so slicing q's columns keeps it). A block whose
plan keeps no head loses its whole attention branch (``residual1``'s consumers read the block input
directly); one that keeps no MLP channel loses its MLP branch the same way. EMB slicing touches the stem
(patch embedding weight/bias, ``patch_embed.flatten.shape``, prefix tokens, position embedding), every
norm, every projection's input or output side, and the head(s).

The torch twin undergoes the same change (:func:`vitrt.transforms.prune.twin.apply_plan`); a fine-tuned
plan's weights are written into both.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from vitrt.compiler.errors import SpecError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, Pass, PassContext, PassResult
from vitrt.compiler.twin import CanonicalViT
from vitrt.compiler.weights import write_state
from vitrt.transforms.prune.plan import PruningPlan, alignment_violations
from vitrt.transforms.prune.twin import apply_plan


class PrunePass(Pass):
    name = "prune"
    requires = frozenset({CANONICAL})
    ensures = frozenset({CANONICAL})
    preserves = frozenset({CANONICAL})
    changes_function = True

    def __init__(self, plan: PruningPlan):
        self.plan = plan.validate()

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        new_spec = self.plan.pruned_spec(view.spec)
        modified = self.plan != PruningPlan.keep_all(view.spec) or bool(self.plan.weights)
        prune_graph(view, self.plan)
        view = GraphView(view.graph, new_spec)  # validates every weight shape against the new spec
        if self.plan.weights:
            write_state(view.graph, self.plan.weights)
        stats = {"emb": new_spec.emb, "alignment_violations": len(alignment_violations(self.plan)),
                 "attention_removed": sum(1 for b in new_spec.blocks if not b.heads),
                 "mlp_removed": sum(1 for b in new_spec.blocks if not b.mlp)}
        return PassResult(view, modified=modified, stats=stats)

    def apply_to_twin(self, twin: CanonicalViT) -> CanonicalViT:
        return apply_plan(twin, self.plan)


# --- ONNX ---------------------------------------------------------------------------------------------
def _const(view: GraphView, name: str) -> gs.Constant:
    tensors = view.graph.tensors()
    tensor = tensors.get(name)
    if not isinstance(tensor, gs.Constant):
        raise SpecError(f"graph has no initializer '{name}': not a canonical vitrt graph")
    return tensor


def _take_linear(view, name: str, rows, cols) -> None:
    """Keep input channels ``rows`` (axis 0 of B[K, N]) and output channels ``cols`` of a linear + its bias."""
    _take(view, f"{name}.weight", 0, rows)
    _take(view, f"{name}.weight", 1, cols)
    _take(view, f"{name}.bias", 0, cols)


def _take_norm(view, name: str, channels) -> None:
    _take(view, f"{name}.weight", 0, channels)
    _take(view, f"{name}.bias", 0, channels)


def _take(view: GraphView, name: str, axis: int, index) -> None:
    const = _const(view, name)
    const.values = np.ascontiguousarray(np.take(const.values, np.asarray(index, dtype=np.int64), axis=axis))


def _set_shape(view: GraphView, name: str, values) -> None:
    const = _const(view, name)
    const.values = np.asarray(values, dtype=np.int64)


def _bypass(view: GraphView, residual: str) -> None:
    """Remove ``residual`` = Add(x, branch): its consumers read x; the dead branch goes at cleanup."""
    node = view.node(residual)
    x, out = node.inputs[0], node.outputs[0]
    for consumer in list(out.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is out:
                consumer.inputs[i] = x
    if out in view.graph.outputs:
        raise SpecError(f"'{residual}' produces a graph output and cannot be bypassed")
    node.inputs.clear()
    node.outputs.clear()
    view.graph.cleanup()
    view.refresh()


def prune_graph(view: GraphView, plan: PruningPlan) -> None:
    """Slice ``view``'s graph in place to ``plan`` (the spec object is replaced by the caller)."""
    spec = view.spec
    plan.check_matches(spec)
    emb = list(plan.emb)
    for index, (block, bplan) in enumerate(zip(spec.blocks, plan.blocks)):
        p = f"blocks.{index}"
        if block.heads:
            if not bplan.heads:
                _bypass(view, f"{p}.residual1")
            else:
                qk_cols, v_cols = bplan.qk_columns(block.qk), bplan.v_columns(block.v)
                _take_norm(view, f"{p}.norm1", emb)
                for name, cols in (("q", qk_cols), ("k", qk_cols), ("v", v_cols)):
                    _take_linear(view, f"{p}.attn.{name}", emb, cols)
                _take_linear(view, f"{p}.attn.proj", v_cols, emb)
                heads, qk, v = len(bplan.heads), len(bplan.qk), len(bplan.v)
                for name, dim in (("q", qk), ("k", qk), ("v", v)):
                    shape = _const(view, f"{p}.attn.{name}.shape").values
                    _set_shape(view, f"{p}.attn.{name}.shape", [shape[0], shape[1], heads, dim])
                shape = _const(view, f"{p}.attn.merge_heads.shape").values
                _set_shape(view, f"{p}.attn.merge_heads.shape", [shape[0], shape[1], heads * v])
        if block.mlp:
            if not bplan.mlp:
                _bypass(view, f"{p}.residual2")
            else:
                mlp = list(bplan.mlp)
                _take_norm(view, f"{p}.norm2", emb)
                _take_linear(view, f"{p}.mlp.fc1", emb, mlp)
                _take_linear(view, f"{p}.mlp.fc2", mlp, emb)
    # Stem and head: everything on the residual stream's channel axis.
    _take(view, "patch_embed.weight", 0, emb)
    _take(view, "patch_embed.bias", 0, emb)
    shape = _const(view, "patch_embed.flatten.shape").values
    _set_shape(view, "patch_embed.flatten.shape", [shape[0], len(emb), shape[2]])
    _take(view, "prefix_tokens.weight", 2, emb)
    _take(view, "pos_embed.weight", 2, emb)
    _take_norm(view, "norm", emb)
    for head in ("head", "head_dist") if spec.distilled else ("head",):
        _take(view, f"{head}.weight", 0, emb)
    # Shapes recorded on intermediate tensors are stale now; drop them so export re-infers them.
    for tensor in view.graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in view.graph.inputs and tensor not in view.graph.outputs:
            tensor.shape = None
    view.refresh()
