"""Static token merging: insert ToMe's bipartite soft matching between attention and MLP of every merging block.

Per merging block ``i`` (``N`` tokens in, ``p`` prefix tokens, ``W`` windows of ``n`` tokens, ``r`` merges per
window, ``na = ceil(n/2)``, ``nb = n // 2``)::

    blocks.i.attn.k.bias_add ─► Reshape[B, N, H, qk] ─► ReduceSum(heads) ─► Slice[p:] (Gather: window order)
        ─► Reshape[B·W, n, qk] ─► x/‖x‖ ─► A = [0::2], B = [1::2] ─► MatMul(A, Bᵀ) ─► TopK(k=2)
        ─► GatherND the 2 B candidates ─► ‖a - b‖² ─► ArgMin: best B per A and its distance
        ─► TopK(k=r, smallest): merged A ─► one-hot (Equal, Cast) ─► TopK(k=na-r): kept A, in order
    blocks.i.residual1 ─► x ─┬─ Slice[:p] ─────────────────────────────────────────────────────────┐
                             └─ Slice[p:] (Gather) ─► Reshape[B·W, n, C] ─┬─ GatherND(kept A) ──┐   │
          merged A ─► GatherND ─► ·size ─► MatMul(one-hot[nb, r], ·) ─────┴─► + B·size, ÷ size ─┤   │
                                   Concat(kept, B) ─► Reshape[B, W·(n-r), C] ◄──────────────────┘   │
                                   Concat(prefix, ·) ◄──────────────────────────────────────────────┘
                                        └─► blocks.i.norm2 / residual2

Every shape is static; no Scatter op: the size-weighted sums are one-hot MatMuls, the moves GatherND. Sizes ([B, N-p, 1]) flow
to the later blocks, whose attention logits get ``log(size)`` added right after ``attn.qk`` (proportional
attention; q carries the attention scale, so the score path stays MatMul(Q·s, Kᵀ) ─► Add(log size) ─► Softmax,
the pattern TensorRT fuses), and whose reshape constants are rewritten for their smaller token counts. The window-order Gather
sits in the first block that merges inside windows. The subgraph is emitted in float32 (its ``Cast(to=FLOAT)`` and
``ConstantOfShape`` included); the precision pass retypes it with the rest of the graph.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from vitrt.compiler.cost import vit_flops
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import GraphEmitter, finalize
from vitrt.compiler.pass_manager import CANONICAL, SHAPES_INFERRED, TOPOSORTED, Pass, PassContext, PassResult
from vitrt.transforms.tome.schedule import BlockMerge, MergePlan, quadtree_order
from vitrt.transforms.tome.twin import apply_plan

F32 = np.float32


class _Emitter(GraphEmitter):
    """GraphEmitter with a name counter so constants never collide."""

    def c(self, name: str, value, dtype=F32) -> gs.Constant:
        return self.const(name, np.asarray(value, dtype=dtype))


def emit_merge(e: _Emitter, x, keys, sizes, m: BlockMerge, *, prefix: int, emb: int, heads: int, qk: int, order):
    """Emit block ``m.index``'s merge; returns (merged tokens [B, N', C], sizes [B, N'-p, 1])."""
    name = f"blocks.{m.index}.tome"
    N, p, W, r = m.tokens, prefix, m.windows, m.per_window
    n = (N - p) // W
    na, nb, n_out = (n + 1) // 2, n // 2, n - r
    ints = e.ints

    def body(t, label):
        if m.permute:
            return e.node("Gather", f"{name}.{label}.window_order", [t, ints(f"{name}.{label}.order", [p + j for j in order])],
                          {"axis": 1})
        return e.node("Slice", f"{name}.{label}.body", [t, ints(f"{name}.{label}.b0", [p]), ints(f"{name}.{label}.b1", [N]),
                                                          ints(f"{name}.{label}.b2", [1])])

    def windows(t, label, channels):
        return e.node("Reshape", f"{name}.{label}.windows", [t, ints(f"{name}.{label}.wshape", [-1, n, channels])])

    def half(t, label, start):
        return e.node("Slice", f"{name}.{label}", [t, ints(f"{name}.{label}.s", [start]), ints(f"{name}.{label}.e", [n]),
                                                   ints(f"{name}.{label}.a", [1]), ints(f"{name}.{label}.st", [2])])

    # Similarity: keys averaged over heads (summed: a cosine ignores the 1/heads), L2-normalised.
    metric = e.node("Reshape", f"{name}.keys.heads", [keys, ints(f"{name}.keys.hshape", [-1, N, heads, qk])])
    metric = e.node("ReduceSum", f"{name}.keys.head_sum", [metric, ints(f"{name}.keys.haxes", [2])], {"keepdims": 0})
    metric = windows(body(metric, "keys"), "keys", qk)
    square = e.node("Mul", f"{name}.metric.sq", [metric, metric])
    norm = e.node("Sqrt", f"{name}.metric.norm", [e.node("ReduceSum", f"{name}.metric.sum", [square, ints(f"{name}.metric.axes", [-1])],
                                                         {"keepdims": 1})])
    metric = e.node("Div", f"{name}.metric.unit", [metric, norm])
    ma, mb = half(metric, "metric.a", 0), half(metric, "metric.b", 1)
    scores = e.node("MatMul", f"{name}.scores", [ma, e.node("Transpose", f"{name}.metric.bt", [mb], {"perm": [0, 2, 1]})])
    # Best B per A: the two most similar by cosine (TopK), then the closer by ‖a - b‖² (= 2 - 2 cos) computed
    # from the difference, which also ranks the edges: robust for near-duplicate tokens (see twin.bipartite_merge).
    k = min(2, nb)
    best = gs.Variable(f"{name}.best.values", dtype=F32)
    top = gs.Variable(f"{name}.best.indices", dtype=np.int64)
    e.graph.nodes.append(gs.Node("TopK", f"{name}.best", {"axis": -1, "largest": 1, "sorted": 1},
                                 [scores, ints(f"{name}.best.k", [k])], [best, top]))
    top_rows = e.node("Reshape", f"{name}.best.rows", [top, ints(f"{name}.best.rshape", [-1, na * k, 1])], dtype=np.int64)
    candidates = e.node("GatherND", f"{name}.best.b", [mb, top_rows], {"batch_dims": 1})
    candidates = e.node("Reshape", f"{name}.best.b4", [candidates, ints(f"{name}.best.b4shape", [-1, na, k, qk])])
    ma4 = e.node("Reshape", f"{name}.best.a4", [ma, ints(f"{name}.best.a4shape", [-1, na, 1, qk])])
    diff = e.node("Sub", f"{name}.best.diff", [ma4, candidates])
    distances = e.node("ReduceSum", f"{name}.best.distances", [e.node("Mul", f"{name}.best.sq", [diff, diff]),
                                                                ints(f"{name}.best.axes", [-1])], {"keepdims": 0})
    choice = e.node("ArgMin", f"{name}.best.choice", [distances], {"axis": -1, "keepdims": 1, "select_last_index": 0},
                    dtype=np.int64)
    best_idx = e.node("GatherElements", f"{name}.best.index", [top, choice], {"axis": -1}, dtype=np.int64)
    distance = e.node("GatherElements", f"{name}.best.distance", [distances, choice], {"axis": -1})
    distance = e.node("Reshape", f"{name}.best.flat", [distance, ints(f"{name}.best.shape", [-1, na])])
    best_idx = e.node("Reshape", f"{name}.dst.flat", [best_idx, ints(f"{name}.dst.shape", [-1, na])], dtype=np.int64)

    def topk(values, k, label, largest=1):
        out_v = gs.Variable(f"{name}.{label}.values", dtype=F32)
        out_i = gs.Variable(f"{name}.{label}.indices", dtype=np.int64)
        e.graph.nodes.append(gs.Node("TopK", f"{name}.{label}", {"axis": -1, "largest": largest, "sorted": 1},
                                     [values, ints(f"{name}.{label}.k", [k])], [out_v, out_i]))
        return out_i

    # The r best edges (ties: lower index first, ONNX TopK's rule), then the kept A tokens in order.
    src = topk(distance, r, "edges", largest=0)  # [BW, r]
    onehot = e.node("Equal", f"{name}.edges.onehot", [e.node("Reshape", f"{name}.edges.col", [src, ints(f"{name}.edges.colshape", [-1, r, 1])],
                                                             dtype=np.int64), ints(f"{name}.iota_a", np.arange(na))], dtype=np.bool_)
    merged = e.node("ReduceSum", f"{name}.merged", [e.node("Cast", f"{name}.edges.onehot_f", [onehot], {"to": 1}),
                                                   ints(f"{name}.merged.axes", [1])], {"keepdims": 0})
    keep = e.node("Sub", f"{name}.keep", [e.c(f"{name}.one", 1.0), merged])
    kept = na - r  # A tokens left unmerged (0 when a window of even size merges half its tokens)
    if kept:
        kept_key = e.node("Mul", f"{name}.kept_key", [keep, e.c(f"{name}.countdown", na - np.arange(na))])
        unm = topk(kept_key, kept, "kept")  # [BW, na - r], ascending
    dst = e.node("GatherElements", f"{name}.dst", [best_idx, src], {"axis": 1}, dtype=np.int64)  # [BW, r]
    onehot = e.node("Equal", f"{name}.assign.eq", [e.node("Reshape", f"{name}.dst.row", [dst, ints(f"{name}.dst.rowshape", [-1, 1, r])],
                                                          dtype=np.int64), ints(f"{name}.iota_b", np.arange(nb).reshape(nb, 1))],
                    dtype=np.bool_)
    onehot = e.node("Cast", f"{name}.assign", [onehot], {"to": 1})  # [BW, nb, r]: merged A -> its B

    # Rows 2·index of the window tensors are the A tokens: GatherND with batch_dims=1.
    two = ints(f"{name}.two", 2)
    src_rows = e.node("Reshape", f"{name}.src.rows", [e.node("Mul", f"{name}.src.x2", [src, two], dtype=np.int64),
                                                      ints(f"{name}.src.rshape", [-1, r, 1])], dtype=np.int64)
    if kept:
        unm_rows = e.node("Reshape", f"{name}.kept.rows", [e.node("Mul", f"{name}.kept.x2", [unm, two], dtype=np.int64),
                                                           ints(f"{name}.kept.rshape", [-1, kept, 1])], dtype=np.int64)

    def gather(t, rows, label):
        return e.node("GatherND", f"{name}.{label}", [t, rows], {"batch_dims": 1})

    tokens = windows(body(x, "x"), "x", emb)
    tokens_b = half(tokens, "x.b", 1)
    src_x = gather(tokens, src_rows, "src.x")
    if sizes is not None:
        sw = windows(sizes, "sizes", 1)
        sizes_b = half(sw, "sizes.b_half", 1)
        src_s = gather(sw, src_rows, "src.s")
        kept_s = gather(sw, unm_rows, "kept.s") if kept else None
        new_sb = e.node("Add", f"{name}.sizes.b", [sizes_b, e.node("MatMul", f"{name}.sizes.merged", [onehot, src_s])])
        num = e.node("Add", f"{name}.sum", [e.node("Mul", f"{name}.weighted.b", [tokens_b, sizes_b]),
                                           e.node("MatMul", f"{name}.sum.merged", [onehot, e.node("Mul", f"{name}.weighted.src", [src_x, src_s])])])
    else:  # first merge: every size is 1 (x·1 = x exactly, so the products are skipped)
        kept_s = None
        if kept:
            kept_s = e.node("ConstantOfShape", f"{name}.kept.s", [e.node("Shape", f"{name}.kept.rshape_of", [unm_rows], dtype=np.int64)],
                            {"value": gs.Constant(f"{name}.one_t", np.ones(1, dtype=F32))})
        new_sb = e.node("Add", f"{name}.sizes.b", [e.node("ReduceSum", f"{name}.sizes.merged", [onehot, ints(f"{name}.sizes.axes", [2])],
                                                          {"keepdims": 1}), e.c(f"{name}.one_b", 1.0)])
        num = e.node("Add", f"{name}.sum", [tokens_b, e.node("MatMul", f"{name}.sum.merged", [onehot, src_x])])
    dst_x = e.node("Div", f"{name}.average", [num, new_sb])
    merged_x, new_sizes = dst_x, new_sb
    if kept:
        merged_x = e.node("Concat", f"{name}.tokens", [gather(tokens, unm_rows, "kept.x"), dst_x], {"axis": 1})
        new_sizes = e.node("Concat", f"{name}.sizes.cat", [kept_s, new_sb], {"axis": 1})
    merged_x = e.node("Reshape", f"{name}.join", [merged_x, ints(f"{name}.join.shape", [-1, W * n_out, emb])])
    new_sizes = e.node("Reshape", f"{name}.sizes", [new_sizes, ints(f"{name}.sizes.shape", [-1, W * n_out, 1])])
    prefix_x = e.node("Slice", f"{name}.prefix", [x, ints(f"{name}.prefix.s", [0]), ints(f"{name}.prefix.e", [p]),
                                                  ints(f"{name}.prefix.a", [1])])
    out = e.node("Concat", f"{name}.out", [prefix_x, merged_x], {"axis": 1})
    return out, new_sizes


def _replace_uses(graph: gs.Graph, old: gs.Variable, new: gs.Variable, skip: set) -> None:
    for node in list(old.outputs):
        if node.name in skip:
            continue
        for k, t in enumerate(node.inputs):
            if t is old:
                node.inputs[k] = new
    for k, t in enumerate(graph.outputs):
        if t is old:
            graph.outputs[k] = new


def _set_tokens(view: GraphView, index: int, tokens: int) -> None:
    """Rewrite block ``index``'s per-head reshape constants for ``tokens`` tokens."""
    block = view.block(index)
    if not block.spec.heads:
        return
    for local in ("attn.q.split_heads", "attn.k.split_heads", "attn.v.split_heads", "attn.merge_heads"):
        node = block.node(local)
        shape = node.inputs[1]
        values = np.array(shape.values, dtype=np.int64)
        values[1] = tokens
        node.inputs[1] = gs.Constant(f"{shape.name}.tome", values)


def rewrite(view: GraphView, plan: MergePlan) -> GraphView:
    """Apply ``plan`` to the canonical graph in ``view``; returns a new, shape-inferred view with the new spec.

    ``view``'s graph is edited in place (a plan made for another model is refused first, one line)."""
    spec = view.spec
    plan.check_matches(spec)
    graph = view.graph
    e = _Emitter(graph)
    first = next(b.index for b in plan.blocks if b.merges)
    order = quadtree_order(plan.grid, plan.schedule.window) if any(b.permute for b in plan.blocks) else None
    sizes = None
    log_bias = None
    for m in plan.blocks[first:]:
        i = m.index
        block = view.block(i)
        bspec = spec.blocks[i]
        _set_tokens(view, i, m.tokens)
        if log_bias is not None and bspec.heads:
            logits = block.node("attn.qk").outputs[0]
            biased = e.node("Add", f"blocks.{i}.attn.size_bias", [logits, log_bias])
            _replace_uses(graph, logits, biased, skip={f"blocks.{i}.attn.size_bias"})
        if not m.merges:
            continue
        residual = block.node("residual1").outputs[0]
        keys = block.linear("attn.k").bias_add.outputs[0]
        out, sizes = emit_merge(e, residual, keys, sizes, m, prefix=plan.prefix, emb=spec.emb, heads=bspec.heads,
                                qk=bspec.qk, order=order)
        _replace_uses(graph, residual, out, skip={n.name for n in graph.nodes if n.name.startswith(f"blocks.{i}.tome.")})
        # log(size) per key, prefix keys (size 1) padded with 0: [B, 1, 1, N'] for the next blocks' logits.
        n_body = m.tokens_out - plan.prefix
        log_sizes = e.node("Log", f"blocks.{i}.tome.log_sizes", [sizes])
        log_sizes = e.node("Reshape", f"blocks.{i}.tome.log_sizes.row",
                           [log_sizes, e.ints(f"blocks.{i}.tome.log_sizes.shape", [-1, 1, 1, n_body])])
        log_bias = e.node("Pad", f"blocks.{i}.tome.log_bias",
                          [log_sizes, e.ints(f"blocks.{i}.tome.log_bias.pads", [0, 0, 0, plan.prefix, 0, 0, 0, 0])])
    new_spec = plan.apply_to_spec(spec)
    boundary = {t.name for t in list(graph.inputs) + list(graph.outputs)}
    for tensor in graph.tensors().values():  # token counts changed: let shape inference recompute every shape
        if isinstance(tensor, gs.Variable) and tensor.name not in boundary:
            tensor.shape = None

    return GraphView.from_onnx(finalize(graph, new_spec))


class TokenMergePass(Pass):
    """Static token merging (ToMe / DFE / LGTM) as a graph pass; the twin gets :func:`vitrt.transforms.tome.twin.apply_plan`."""

    name = "token_merge"
    requires = frozenset({CANONICAL})
    ensures = frozenset({SHAPES_INFERRED, TOPOSORTED})
    preserves = frozenset({CANONICAL})
    changes_function = True

    def __init__(self, plan: MergePlan):
        self.plan = plan

    def run(self, view: GraphView, ctx: PassContext) -> PassResult:
        if not self.plan.merges_anything:
            return PassResult(view, False, {"merged_tokens": 0})
        new_view = rewrite(view, self.plan)
        stats = {"merged_tokens": sum(self.plan.r), "tokens_out_last": self.plan.blocks[-1].tokens_out,
                 "flops_fraction": round(vit_flops(new_view.spec) / vit_flops(view.spec), 4)}
        return PassResult(new_view, True, stats)

    def apply_to_twin(self, twin):
        return apply_plan(twin, self.plan)
