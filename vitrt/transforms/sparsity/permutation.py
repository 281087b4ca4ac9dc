"""Channel permutation before 2:4 masking (apex ASP's channel-swap search), as pure functions.

2:4 masking keeps the 2 largest |w| of every 4 consecutive input channels. Which channels share a group is
an accident of their order; reordering the input channels K of the sparse operand A[M, K] so that large
weights do not compete in the same group keeps more magnitude. The reorder is free only where it can be
absorbed exactly by the producer of those channels:

* MLP hidden channels: permute fc1's output features (weight rows + bias) and fc2's input features (its K)
  together — GELU is elementwise, so the block's function is unchanged;
* V dims within each head: permute v's output features and proj's input features (its K) together, only
  inside each head's block of V dims (a channel moved to another head would meet another head's attention).

Search (greedy channel swap): with X = |A| and the group score ``Σ_rows top2(X[row, group])``, swapping
column a (group g) with column b (group h ≠ g) changes the score by ``D[a, b] + D[b, a] − old[g] − old[h]``
where ``D[a, b]`` is g's score with a replaced by b; with s1 ≥ s2 the two largest of g's other three entries
in a row, ``top2 = s1 + max(s2, X[row, b])``, so ``D`` is one [K, K] matrix, updated in O(M·K) rows and
columns per swap. The best positive swap is applied until none is left (or ``max_swaps``).
"""

from __future__ import annotations

import numpy as np


def kept_magnitude(a: np.ndarray) -> float:
    """Σ|a| kept by 2:4 magnitude masking along axis 1 of A[M, K] (K a multiple of 4)."""
    x = np.abs(np.asarray(a, dtype=np.float64)).reshape(a.shape[0], -1, 4)
    return float(np.sort(x, axis=-1)[..., 2:].sum())


def retained_fraction(a: np.ndarray) -> float:
    total = float(np.abs(np.asarray(a, dtype=np.float64)).sum())
    return kept_magnitude(a) / total if total else 1.0


def _others_top2(x: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position a: per row the largest (s1) and second largest (s2) of the other 3 in a's group."""
    s1 = np.empty((len(positions), x.shape[0]), dtype=x.dtype)
    s2 = np.empty_like(s1)
    for i, a in enumerate(positions):
        start = a - a % 4
        others = [p for p in range(start, start + 4) if p != a]
        top = np.sort(x[:, others], axis=1)
        s1[i], s2[i] = top[:, 2], top[:, 1]
    return s1, s2


def search_permutation(a: np.ndarray, blocks: np.ndarray | None = None, max_swaps: int | None = None,
                       tolerance: float = 1e-7) -> np.ndarray:
    """A permutation ``perm`` of A's K columns such that 2:4 masking of ``A[:, perm]`` keeps at least as much
    magnitude as of A (strictly more when any swap helps). ``blocks[k]`` labels the column each position may
    exchange with (same label only; default: all one block). Deterministic."""
    a = np.asarray(a)
    m, k = a.shape
    if k % 4:
        raise ValueError(f"K = {k} is not a multiple of 4")
    labels = np.zeros(k, dtype=np.int64) if blocks is None else np.asarray(blocks)
    perm = np.arange(k)
    x = np.abs(a).astype(np.float32)  # columns in current (permuted) order
    group_of = np.arange(k) // 4
    same_group = group_of[:, None] == group_of[None, :]
    allowed = (labels[:, None] == labels[None, :]) & ~same_group

    def group_score(g):
        return np.sort(x[:, 4 * g:4 * g + 4], axis=1)[:, 2:].sum()

    old = np.array([group_score(g) for g in range(k // 4)], dtype=np.float64)
    s1, s2 = _others_top2(x, np.arange(k))
    d = np.empty((k, k), dtype=np.float64)
    for p in range(k):
        d[p] = s1[p].sum() + np.maximum(s2[p][:, None], x).sum(0)
    scale = max(float(old.sum()), 1e-30)
    everywhere = np.arange(k)

    def gains(rows, cols):
        """Swap gains G[rows][:, cols] (-inf where the swap is not allowed)."""
        o = old[group_of]
        g = d[np.ix_(rows, cols)] + d[np.ix_(cols, rows)].T - o[rows][:, None] - o[cols][None, :]
        g[~allowed[np.ix_(rows, cols)]] = -np.inf
        return g

    # The gain matrix and each row's best entry are kept up to date: a swap changes only the rows and
    # columns of the 8 positions of its two groups.
    gain = gains(everywhere, everywhere)
    row_best = gain.argmax(1)
    row_max = gain[everywhere, row_best]
    swaps = 0
    limit = max_swaps if max_swaps is not None else 20 * k
    while swaps < limit:
        p = int(np.argmax(row_max))
        q = int(row_best[p])
        if not row_max[p] > tolerance * scale:
            break
        perm[[p, q]] = perm[[q, p]]
        x[:, [p, q]] = x[:, [q, p]]
        changed = np.concatenate([np.arange(4 * group_of[p], 4 * group_of[p] + 4),
                                  np.arange(4 * group_of[q], 4 * group_of[q] + 4)])
        for g in (group_of[p], group_of[q]):
            old[g] = group_score(g)
        s1[changed], s2[changed] = _others_top2(x, changed)
        for r in changed:
            d[r] = s1[r].sum() + np.maximum(s2[r][:, None], x).sum(0)
        for c in (p, q):
            d[:, c] = s1.sum(1) + np.maximum(s2, x[:, c][None, :]).sum(1)
        gain[changed, :] = gains(changed, everywhere)
        gain[:, changed] = gains(everywhere, changed)
        stale = np.isin(row_best, changed)
        stale[changed] = True
        candidates = gain[:, changed].max(1)
        better = ~stale & (candidates > row_max)
        row_max[better] = candidates[better]
        row_best[better] = changed[gain[better][:, changed].argmax(1)]
        rows = np.flatnonzero(stale)
        row_best[rows] = gain[rows].argmax(1)
        row_max[rows] = gain[rows, row_best[rows]]
        swaps += 1
    return perm


def head_blocks(heads: int, dim: int) -> np.ndarray:
    """Labels that keep a permutation of heads·dim channels inside each head."""
    return np.repeat(np.arange(heads), dim)
