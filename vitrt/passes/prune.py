"""Structural pruning: slice every initializer a PruningPlan touches, so the graph computes the pruned ViT.

Per block (kept indices come from the plan; qk/v columns are head-major, ``h * dim + d``)::

    norm1[emb] ─► q/k W[emb, H·qk] ──► Reshape [-1, T, H, qk]      ─► ... ─► Mul(scale_c, unchanged)
                  v   W[emb, H·v]  ──► Reshape [-1, T, H, v]  ─► ... ─► merge_heads [-1, T, H·v]
                  proj W[H·v, emb] ──► Add(residual1)
    norm2[emb] ─► fc1 W[emb, mlp] ─► GELU ─► fc2 W[mlp, emb] ─► Add(residual2)

becomes the same subgraph with every ``emb``, ``H``, ``qk``, ``v`` and ``mlp`` axis cut to the kept indices,
the reshape constants rewritten, and the attention scale left at the original 1/sqrt(qk). A block whose
plan keeps no head loses its whole attention branch (``residual1``'s consumers read the block input
directly); one that keeps no MLP channel loses its MLP branch the same way. EMB slicing touches the stem
(patch embedding weight/bias, ``patch_embed.flatten.shape``, prefix tokens, position embedding), every
norm, every projection's input or output side, and the head(s).

The torch twin undergoes the same change (:func:`prune_twin`); an optional replacement twin (the pruned
model after fine-tuning) supplies the weights the graph finally carries.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import torch

from vitrt.calib.prune_plan import PruningPlan, alignment_violations
from vitrt.compiler.errors import SpecError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.pass_manager import CANONICAL, Pass, PassContext, PassResult
from vitrt.compiler.twin import CanonicalViT


class PrunePass(Pass):
    name = "prune"
    requires = frozenset({CANONICAL})
    ensures = frozenset({CANONICAL})
    preserves = frozenset({CANONICAL})
    changes_function = True

    def __init__(self, plan: PruningPlan, weights_from: CanonicalViT | None = None, report: dict | None = None,
                 files: dict | None = None):
        """``weights_from``: a twin with the pruned spec whose weights replace the sliced ones (fine-tuning);
        ``report`` / ``files``: manifest fields and OUT files to hand to the compile through the context."""
        self.plan, self.weights_from = plan.validate(), weights_from
        self.report, self.files = report or {}, files or {}

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        new_spec = self.plan.pruned_spec(view.spec)
        modified = self.plan != PruningPlan.keep_all(view.spec)
        prune_graph(view, self.plan)
        view = GraphView(view.graph, new_spec)  # validates every weight shape against the new spec
        if self.weights_from is not None:
            load_twin_weights(view, self.weights_from)
        ctx.manifest.setdefault("pruning", {}).update(self.report)
        ctx.files.update(self.files)
        stats = {"emb": new_spec.emb, "alignment_violations": len(alignment_violations(self.plan)),
                 "attention_removed": sum(1 for b in new_spec.blocks if not b.heads),
                 "mlp_removed": sum(1 for b in new_spec.blocks if not b.mlp)}
        return PassResult(view, modified=modified or self.weights_from is not None, stats=stats)

    def apply_to_twin(self, twin: CanonicalViT, ctx: PassContext) -> CanonicalViT:
        if self.weights_from is not None:
            return self.weights_from
        return prune_twin(twin, self.plan)


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


def load_twin_weights(view: GraphView, twin: CanonicalViT) -> None:
    """Overwrite the graph's initializers with ``twin``'s weights (same spec), by canonical name.

    The twin is lowered once and its initializers are copied by name, so the layout rules (B[K, N],
    prefix-token concatenation) stay defined in exactly one place: the lowering.
    """
    from vitrt.compiler.lower import lower

    if twin.spec != view.spec:
        raise SpecError("the fine-tuned twin's spec differs from the pruned graph's spec")
    source = gs.import_onnx(lower(twin, batch=None)).tensors()
    for name, tensor in view.graph.tensors().items():
        if isinstance(tensor, gs.Constant) and name.endswith((".weight", ".bias")):
            src = source.get(name)
            if src is None or tuple(src.shape) != tuple(tensor.shape):
                raise SpecError(f"fine-tuned twin has no matching initializer '{name}'")
            tensor.values = np.ascontiguousarray(src.values)


# --- torch twin ----------------------------------------------------------------------------------------
@torch.no_grad()
def prune_twin(twin: CanonicalViT, plan: PruningPlan) -> CanonicalViT:
    """A new CanonicalViT with the pruned spec and ``twin``'s weights sliced to ``plan``."""
    spec = twin.spec
    new = CanonicalViT(plan.pruned_spec(spec))
    emb = torch.tensor(plan.emb, dtype=torch.long)
    new.patch_embed.weight.copy_(twin.patch_embed.weight[emb])
    new.patch_embed.bias.copy_(twin.patch_embed.bias[emb])
    new.cls_token.copy_(twin.cls_token[..., emb])
    if spec.distilled:
        new.dist_token.copy_(twin.dist_token[..., emb])
    new.pos_embed.copy_(twin.pos_embed[..., emb])
    for block, old, bplan, bspec in zip(new.blocks, twin.blocks, plan.blocks, spec.blocks):
        if block.attn is not None:
            qk = torch.tensor(bplan.qk_columns(bspec.qk), dtype=torch.long)
            v = torch.tensor(bplan.v_columns(bspec.v), dtype=torch.long)
            _copy_norm(block.norm1, old.norm1, emb)
            for name, cols in (("q", qk), ("k", qk), ("v", v)):
                _copy_linear(getattr(block.attn, name), getattr(old.attn, name), cols, emb)
            _copy_linear(block.attn.proj, old.attn.proj, emb, v)
        if block.mlp is not None:
            mlp = torch.tensor(bplan.mlp, dtype=torch.long)
            _copy_norm(block.norm2, old.norm2, emb)
            _copy_linear(block.mlp.fc1, old.mlp.fc1, mlp, emb)
            _copy_linear(block.mlp.fc2, old.mlp.fc2, emb, mlp)
    _copy_norm(new.norm, twin.norm, emb)
    all_classes = torch.arange(spec.num_classes)
    _copy_linear(new.head, twin.head, all_classes, emb)
    if spec.distilled:
        _copy_linear(new.head_dist, twin.head_dist, all_classes, emb)
    return new.eval()


def _copy_norm(dst, src, emb) -> None:
    dst.weight.copy_(src.weight[emb])
    dst.bias.copy_(src.bias[emb])


def _copy_linear(dst, src, rows, cols) -> None:
    """torch Linear weight is [out, in]: ``rows`` index outputs, ``cols`` inputs."""
    dst.weight.copy_(src.weight[rows][:, cols])
    dst.bias.copy_(src.bias[rows])
