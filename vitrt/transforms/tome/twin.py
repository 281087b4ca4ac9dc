"""Token merging on the torch twin: ToMe's bipartite soft matching with static windows, the reference for the pass.

The merge is written with the same one-hot algebra the ONNX pass emits (no scatter), so both compute the same
thing op for op and break ties the same way:

* metric: the block's keys averaged over heads (summed: the 1/heads factor does not change a cosine),
  L2-normalised (cosine similarity);
* tokens of a window alternate A, B, A, B …; each A token's best B (first index on ties, like ArgMax / TopK);
* A tokens ranked by that similarity (as the distance ‖a - b‖², which float32 resolves for near-duplicates),
  ties by lower index (a stable sort = ONNX TopK's rule); the first ``r`` merge into their B token by size-weighted average, the others stay, in their original order;
* output of a window: [kept A tokens, B tokens]; sizes are summed; prefix tokens stay first, never merged;
* proportional attention: blocks after the first merge add ``log(size)`` of every key to the attention logits.

Sizes travel between blocks as one extra channel appended to the tokens (``[B, N, C + 1]``) from the first
merging block to the last block, which drops it: every block stays a plain ``x -> x`` module and no state
lives outside the tensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from vitrt.transforms.tome.schedule import BlockMerge, MergePlan, quadtree_order


@dataclass
class ForcedDecisions:
    """Merge decisions to use instead of computing them (the graph's, during verification): ``src`` [W, r] the
    merged A tokens, ``dst`` [W, r] their B tokens. The merge sets ``disagree`` [W]: the rows whose computed
    decisions differ."""

    src: torch.Tensor
    dst: torch.Tensor
    disagree: torch.Tensor | None = None


def decision_tensors(block_index: int) -> tuple[str, str]:
    """The graph tensors holding block ``block_index``'s merge decisions (src, dst), as the pass names them."""
    return f"blocks.{block_index}.tome.edges.indices", f"blocks.{block_index}.tome.dst.out"


def bipartite_merge(x: torch.Tensor, metric: torch.Tensor, sizes: torch.Tensor, r: int,
                    extras: tuple[torch.Tensor, ...] = (), forced: ForcedDecisions | None = None):
    """Merge ``r`` tokens in every row of a batch of windows.

    x [W, n, C], metric [W, n, d] (unnormalised), sizes [W, n, 1] -> (x [W, n - r, C], sizes [W, n - r, 1],
    extras summed the same way, e.g. a source map [W, n, P] for visualisation). Output rows: the kept A tokens
    in their original order, then the B tokens (each the size-weighted average of itself and its merged A's).
    ``forced``: merge as its decisions say instead of the computed ones (and record where they differ).
    """
    n = x.shape[1]
    na, nb = (n + 1) // 2, n // 2
    metric = metric / metric.pow(2).sum(-1, keepdim=True).sqrt()
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)  # [W, na, nb] cosine
    # Each A token's best B: the two most similar by cosine (ties: lower index, as TopK), then the closer of the
    # two by ‖a - b‖² computed from the difference (first on ties, as ArgMin). The distance also ranks the edges:
    # near-duplicate tokens (cos ≈ 1) keep their order in float32 instead of drowning in the rounding of the
    # dot product, so the torch twin and the ONNX graph make the same choices.
    k = min(2, nb)
    top = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]  # [W, na, k]
    d = metric.shape[-1]
    candidates = metric[:, 1::2].gather(1, top.reshape(top.shape[0], -1, 1).expand(-1, -1, d)).reshape(*top.shape, d)
    distances = (metric[:, 0::2, None] - candidates).pow(2).sum(-1)  # [W, na, k]
    choice = distances.argmin(dim=-1, keepdim=True)
    node_idx = top.gather(-1, choice)[..., 0]  # [W, na]
    distance = distances.gather(-1, choice)[..., 0]
    src = torch.sort(distance, dim=-1, stable=True).indices[:, :r]  # r closest; ties: lower index (TopK's rule)
    if forced is not None:
        forced.disagree = ((src != forced.src) | (node_idx.gather(1, src) != forced.dst)).any(-1)
        src = forced.src.to(src.device)
    iota_a = torch.arange(na, device=x.device)
    merged = (src[:, :, None] == iota_a).to(x.dtype).sum(1)  # [W, na]: 1 where the A token merges
    kept_key = (1.0 - merged) * (na - iota_a).to(x.dtype)  # largest for the earliest kept token
    unm = torch.sort(kept_key, dim=-1, descending=True, stable=True).indices[:, : na - r]
    dst = node_idx.gather(1, src) if forced is None else forced.dst.to(src.device)  # [W, r]
    onehot = (dst[:, None, :] == torch.arange(nb, device=x.device)[:, None]).to(x.dtype)  # [W, nb, r]

    def take(t, index):  # rows 2·index of t (the A tokens), per window: GatherND with batch_dims=1
        return t.gather(1, (2 * index)[..., None].expand(-1, -1, t.shape[-1]))

    s_src, s_b = take(sizes, src), sizes[:, 1::2]
    new_sb = s_b + onehot @ s_src
    dst_x = (x[:, 1::2] * s_b + onehot @ (take(x, src) * s_src)) / new_sb
    new_x = torch.cat([take(x, unm), dst_x], dim=1)
    new_sizes = torch.cat([take(sizes, unm), new_sb], dim=1)
    new_extras = tuple(torch.cat([take(e, unm), e[:, 1::2] + onehot @ take(e, src)], dim=1) for e in extras)
    return new_x, new_sizes, new_extras


def merge_tokens(x: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor, merge: BlockMerge, prefix: int, order,
                 heads: int, extras: tuple[torch.Tensor, ...] = (), forced: ForcedDecisions | None = None):
    """One block's merge on [B, N, C] tokens (prefix first); ``keys`` [B, N, heads·qk]; ``sizes`` [B, N - prefix, 1]."""
    batch, tokens, channels = x.shape
    metric = keys.reshape(batch, tokens, heads, -1).sum(2)[:, prefix:]  # mean up to 1/heads: same cosine
    body = x[:, prefix:]
    if merge.permute:  # first local block: patch tokens into window order
        index = torch.as_tensor(order, device=x.device)
        body, metric, sizes = body[:, index], metric[:, index], sizes[:, index]
        extras = tuple(e[:, index] for e in extras)
    w = merge.windows
    per = body.shape[1] // w

    def split(t):
        return t.reshape(batch * w, per, t.shape[-1])

    body, sizes, extras = bipartite_merge(split(body), split(metric), split(sizes), merge.per_window,
                                          tuple(split(e) for e in extras), forced)

    def join(t):
        return t.reshape(batch, -1, t.shape[-1])

    return torch.cat([x[:, :prefix], join(body)], dim=1), join(sizes), tuple(join(e) for e in extras)


class MergingBlock(nn.Module):
    """A canonical block that merges tokens between attention and MLP and/or uses proportional attention.

    Holds the original block's ``norm1`` / ``attn`` / ``norm2`` / ``mlp`` as its own children, so module paths
    (``blocks.3.attn.q``) are unchanged. Input carries sizes as a last channel when ``sized_in``; output
    carries them when ``sized_out``. A merging block declares its decisions (``decision_tensors``) for
    verification, which sets ``forced`` (graph tensor name -> value) and reads ``disagree`` (per image): see
    :mod:`vitrt.compiler.verify`.
    """

    def __init__(self, block, merge: BlockMerge, prefix: int, order, sized_in: bool, sized_out: bool):
        super().__init__()
        self.spec = block.spec
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.merge, self.prefix, self.order = merge, prefix, order
        self.sized_in, self.sized_out = sized_in, sized_out
        self.decision_tensors = decision_tensors(merge.index) if merge.merges else ()
        self.forced: dict[str, torch.Tensor] | None = None
        self.disagree: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, extras: tuple[torch.Tensor, ...] = ()):
        if self.sized_in:
            x, sizes = x[..., :-1], x[:, self.prefix:, -1:]
        else:
            sizes = torch.ones(x.shape[0], x.shape[1] - self.prefix, 1, dtype=x.dtype, device=x.device)
        keys = None
        if self.attn is not None:
            h = self.norm1(x)
            bias = None
            if self.sized_in:  # proportional attention: log(size) of every key; prefix tokens have size 1
                log_sizes = torch.cat([x.new_zeros(x.shape[0], self.prefix), sizes[..., 0].log()], dim=1)
                bias = log_sizes[:, None, None, :]
            if self.merge.merges:
                keys = self.attn.k(h)
            x = x + self.attn(h, attn_bias=bias)
        if self.merge.merges:
            forced = None if self.forced is None else ForcedDecisions(*(self.forced[n] for n in self.decision_tensors))
            x, sizes, extras = merge_tokens(x, keys, sizes, self.merge, self.prefix, self.order, self.attn.heads,
                                            extras, forced)
            if forced is not None and self.disagree is not None:
                self.disagree |= forced.disagree.reshape(x.shape[0], -1).any(1).cpu()
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        if self.sized_out:
            ones = torch.ones(x.shape[0], self.prefix, 1, dtype=x.dtype, device=x.device)
            x = torch.cat([x, torch.cat([ones, sizes], dim=1)], dim=-1)
        return (x, extras) if extras else x


def apply_plan(twin, plan: MergePlan):
    """A copy of ``twin`` that merges tokens as ``plan`` says (``twin`` is unchanged). A plan that merges nothing
    returns ``twin`` itself."""
    if not plan.merges_anything:
        return twin
    twin = copy.deepcopy(twin)
    first = next(b.index for b in plan.blocks if b.merges)
    local = next((b for b in plan.blocks if b.permute), None)
    order = quadtree_order(plan.grid, plan.schedule.window) if local is not None else None
    depth = len(twin.blocks)
    for i in range(first, depth):
        block = twin.blocks[i]
        twin.blocks[i] = MergingBlock(block, plan.blocks[i], plan.prefix, order, sized_in=i > first,
                                      sized_out=i < depth - 1)
    twin.spec = plan.apply_to_spec(twin.spec)
    for block, spec in zip(twin.blocks, twin.spec.blocks):
        block.spec = spec
    return twin


@torch.no_grad()
def trace_sources(twin, images: torch.Tensor) -> torch.Tensor:
    """Which final token every patch ended up in: [B, patches] token index (prefix tokens excluded).

    Runs the twin with a source map (ToMe's ``trace_source``) merged alongside the tokens.
    """
    x = twin.embed(images)
    patches = x.shape[1] - twin.spec.prefix_tokens
    source = torch.eye(patches, dtype=x.dtype).expand(x.shape[0], -1, -1)
    extras = (source,)
    for block in twin.blocks:
        if isinstance(block, MergingBlock):
            x, extras = block(x, extras)
        else:
            x = block(x)
    return extras[0].argmax(1)  # [B, patches]: the token holding each patch
