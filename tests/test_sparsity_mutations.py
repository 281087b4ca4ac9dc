"""2:4 sparsity behaviours that mutations of vitrt/kernels/sparse24.py and vitrt/transforms/sparsity/ left unchecked by
the other tests: the pattern checks and where they point, the pair-wise 4:8 mask's ranking and ties, padding and
metadata tiles, refusals, storage accounting, the plan's notes, the channel-permutation search step by step, the
permutation of producer biases, the fine-tuning recipe and option validation. Every input is written by hand or
drawn from a seeded generator; integer-valued magnitudes make the permutation gains exact in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import max_abs, tiny_vit
from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower
from vitrt.compiler.models import canonicalize
from vitrt.compiler.pass_manager import FP32_TOLERANCE, PassContext
from vitrt.compiler.target import TargetConfig
from vitrt.kernels import sparse24
from vitrt.kernels.sparse24 import LayoutError
from vitrt.transforms.base import PlanContext
from vitrt.transforms.sparsity import planner
from vitrt.transforms.sparsity.config import SparsityConfig
from vitrt.transforms.sparsity.graph_pass import SparsityPass
from vitrt.transforms.sparsity.permutation import head_blocks, kept_magnitude, retained_fraction, search_permutation
from vitrt.transforms.sparsity.plan import LayerDecision, SparsityPlan, layer_storage, model_storage


# --- masks and pattern checks ------------------------------------------------------------------------------------
def test_pairwise_mask_ranks_pairs_by_their_summed_magnitude():
    """INT4's 4:8 mask keeps the two pairs of largest Σ|w| (not of largest single |w|), signs ignored."""
    w = np.array([[5, 0, 3, -3, -4, 4, 0, 1]], dtype=np.float32)  # pair sums 5, 6, 8, 1 (largest entries 5, 3, 4, 1)
    expected = [[False, False, True, True, True, True, False, False]]
    assert sparse24.mask_pairwise_4to8(w, 1).tolist() == expected
    assert sparse24.mask_pairwise_4to8(w.T, 0).T.tolist() == expected


def test_pairwise_mask_ties_keep_the_lower_pairs():
    """Equal pair sums keep the lower pair positions, as mask_2to4 keeps the lower positions: deterministic."""
    ones = np.ones((1, 8), dtype=np.float32)
    assert sparse24.mask_pairwise_4to8(ones, 1).tolist() == [[True] * 4 + [False] * 4]
    w = np.array([[0, 0, 2, 0, 0, 2, 1, 1]], dtype=np.float32)  # pairs 1, 2, 3 tie at 2
    assert sparse24.mask_pairwise_4to8(w, 1).tolist() == [[False, False, True, True, True, True, False, False]]


def test_a_group_with_three_non_zeros_breaks_the_pattern():
    """Three non-zeros in a group of 4 (or three non-zero pairs in 8) are not 2:4 (4:8): checks and compress refuse."""
    assert not sparse24.is_2to4(np.array([[1, 1, 1, 0]], np.float32), 1)
    assert sparse24.is_2to4(np.array([[1, 0, 1, 0]], np.float32), 1)
    a = np.zeros((4, 32), np.float16)
    a[3, 20:23] = 1
    with pytest.raises(LayoutError, match=r"not 2:4 along K: row 3, columns 20\.\.23"):
        sparse24.compress(a, "fp16")
    b = np.zeros((2, 16), np.int8)
    b[1, [8, 11, 13]] = 1  # pairs 0, 1 and 2 of the second group of 8
    assert sparse24.first_violation(b, 1, "int4") == (1, 8)
    with pytest.raises(LayoutError, match=r"not pair-wise 4:8 along K: row 1, columns 8\.\.15"):
        sparse24.compress(b, "int4")


def test_first_violation_points_at_the_first_element_of_the_first_bad_group_in_the_weights_axes():
    """The index is in the weight's own axes (whatever the checked axis) and names the bad group's first element."""
    a = np.zeros((3, 12), np.float32)
    a[2, 8:11] = 1
    a[2, 0:2] = 1  # a full but legal group before it
    assert sparse24.first_violation(a, 1) == (2, 8)
    assert sparse24.first_violation(a.T, 0) == (8, 2)
    conv = np.zeros((2, 8, 3, 3), np.float32)  # [M, C, R, S] checked along C
    conv[1, 4:7, 2, 0] = 1
    assert sparse24.first_violation(conv, 1) == (1, 4, 2, 0)
    assert sparse24.first_violation(np.zeros((2, 8, 3, 3)), 1) is None


def test_retained_magnitude_is_a_ratio_of_absolute_values():
    """Σ|w·mask| / Σ|w|: negative kept weights count by magnitude; an all-zero weight retains 1.0."""
    w = np.array([[1.0, -3.0, 2.0, -4.0]])
    mask = np.array([[False, True, False, True]])
    assert sparse24.retained_magnitude(w, mask) == pytest.approx(0.7, abs=1e-12)
    assert sparse24.retained_magnitude(np.zeros((2, 4)), np.zeros((2, 4), bool)) == 1.0


# --- layouts: padding, metadata tiles, refusals ------------------------------------------------------------------
def _random_24(fmt: str, m: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if fmt == "fp16":
        a = rng.standard_normal((m, k)).astype(np.float16)
        return np.where(sparse24.mask_2to4(a, 1), a, 0).astype(np.float16)
    if fmt == "int8":
        a = rng.integers(-127, 128, (m, k)).astype(np.int8)
        return (a * sparse24.mask_2to4(a.astype(np.int16), 1)).astype(np.int8)
    a = rng.integers(-8, 8, (m, k)).astype(np.int8)
    return (a * sparse24.mask_pairwise_4to8(a, 1)).astype(np.int8)


@pytest.mark.parametrize("fmt,k", [("fp16", 64), ("int8", 64), ("int4", 128)])
def test_rowmajor_metadata_pads_no_rows(fmt, k):
    """Row-major metadata has no row tile: 10 rows stay 10 (only K is padded, here not at all), so the packed arrays
    have exactly the accounted sizes and one metadata row per operand row."""
    a = _random_24(fmt, 10, k, seed=4)
    packed = sparse24.compress(a, fmt, "rowmajor")
    assert packed.padded == (10, k)
    assert packed.meta.shape == (10, k // (sparse24.GROUP[fmt] * sparse24.CODES_PER_META[fmt]))
    assert packed.nbytes * 8 == sparse24.storage_bits(10, k, fmt)[1]
    assert sparse24.decompress(packed).tobytes() == a.tobytes()


def _cutlass_reorder_reference(meta: np.ndarray) -> np.ndarray:
    """CUTLASS's reorder_meta (host_reorder.h) for 32-bit metadata, element by element, then ColumnMajorInterleaved<2>."""
    rows, cols = meta.shape
    out = np.empty(rows * cols, meta.dtype)
    for m in range(rows):
        for k in range(cols):
            r, c = m // 16 * 16 + (m % 8) * 2 + (m % 16) // 8, k
            if r % 2 == 0 and c % 2 == 1:
                r, c = r + 1, c - 1
            elif r % 2 == 1 and c % 2 == 0:
                r, c = r - 1, c + 1
            out[(c // 2) * 2 * rows + 2 * r + c % 2] = meta[m, k]
    return out.reshape(rows, cols)


@pytest.mark.parametrize("fmt,k", [("int8", 64), ("int4", 128)])
def test_32_bit_metadata_reorders_in_tiles_of_16_rows(fmt, k):
    """INT8 / INT4 metadata (int32 elements) is reordered in 16-row tiles: 16 rows need no padding, and the CUTLASS
    buffer is CUTLASS's reorder_meta of the row-major metadata."""
    a = _random_24(fmt, 16, k, seed=5)
    packed = sparse24.compress(a, fmt, "cutlass")
    assert packed.padded == (16, k) and packed.meta.shape == (16, 2)
    assert packed.nbytes * 8 == sparse24.storage_bits(16, k, fmt)[1]
    rowmajor = sparse24.compress(a, fmt, "rowmajor").meta
    assert np.array_equal(packed.meta, _cutlass_reorder_reference(rowmajor))


def test_unpack_meta_refuses_metadata_of_the_wrong_element_type():
    """FP16 metadata is int16 and INT8 / INT4 metadata int32: another dtype is refused, not reinterpreted."""
    packed = sparse24.compress(_random_24("int8", 32, 64, seed=6), "int8", "rowmajor")
    with pytest.raises(LayoutError, match="fp16 metadata must be int16, got int32"):
        sparse24.unpack_meta(packed.meta, "fp16", "rowmajor", 32)
    with pytest.raises(LayoutError, match="int8 metadata must be int32, got int16"):
        sparse24.unpack_meta(packed.meta.view(np.int16), "int8", "rowmajor", 32)


# --- plan: storage, notes ----------------------------------------------------------------------------------------
def test_a_conv_layer_is_accounted_as_its_full_gemm_operand():
    """Conv W[M, C, R, S] is the GEMM operand [M, C·R·S]: its dense and 2:4 bytes cover every weight."""
    conv = LayerDecision("patch_embed", "conv", (64, 4, 8, 8), 1, True)
    assert conv.operand_shape() == (64, 256)
    storage = layer_storage(conv)
    assert storage["fp16"] == {"dense_bytes": 64 * 256 * 2, "sparse_bytes": 64 * 256 * 2 * 9 // 16, "saved": 0.4375}
    assert storage["int8"] == {"dense_bytes": 64 * 256, "sparse_bytes": 64 * 256 * 5 // 8, "saved": 0.375}


def test_model_storage_with_no_eligible_layer_saves_nothing():
    dense = LayerDecision("head", "matmul", (64, 10), 0, False, "below the size threshold: 640 weights < 4096")
    totals = model_storage([dense])
    for fmt, bytes_per_weight in (("fp16", 2), ("int8", 1)):
        assert totals[fmt] == {"dense_bytes": 640 * bytes_per_weight, "sparse_bytes": 640 * bytes_per_weight,
                               "saved": 0.0, "eligible_dense_bytes": 0, "eligible_sparse_bytes": 0,
                               "eligible_saved": 0.0}


def _plan(decisions) -> SparsityPlan:
    masks = {d.name: sparse24.mask_2to4(np.ones(d.twin_shape, np.float32), axis=1) for d in decisions if d.eligible}
    return SparsityPlan("2:4", tuple(decisions), masks)


def test_notes_group_skipped_layers_by_reason_and_name_at_most_three():
    """One line: how many layers stay dense, grouped by the reason's head (before ':'), three names then '...'."""
    small = "below the size threshold: {} weights < 4096"
    decisions = [LayerDecision("patch_embed", "conv", (64, 3, 8, 8), 1, False, "input channels C = 3 is not a multiple of 4")]
    decisions += [LayerDecision(f"blocks.{i}.attn.q", "matmul", (8, 8 + 4 * i), 0, False, small.format(64 + 32 * i))
                  for i in range(4)]
    decisions.append(LayerDecision("blocks.0.mlp.fc1", "matmul", (8, 4), 0, True))
    assert _plan(decisions).notes() == [
        "2:4: 5 of 6 weight layers stay dense: patch_embed (input channels C = 3 is not a multiple of 4); "
        "blocks.0.attn.q, blocks.1.attn.q, blocks.2.attn.q ... (below the size threshold)"]
    three = [d for d in decisions if d.name not in ("patch_embed", "blocks.3.attn.q")]
    assert _plan(three).notes() == ["2:4: 3 of 4 weight layers stay dense: blocks.0.attn.q, blocks.1.attn.q, "
                                    "blocks.2.attn.q (below the size threshold)"]
    assert _plan([decisions[-1]]).notes() == []


# --- channel permutation -----------------------------------------------------------------------------------------
def test_kept_magnitude_sums_the_two_largest_of_every_group_of_four():
    a = np.array([[1, 2, 3, 4, -5, 0, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1]], dtype=np.float32)
    assert kept_magnitude(a) == 3 + 4 + 5 + 1 + 0 + 2
    assert retained_fraction(a) == pytest.approx(15 / 20, abs=1e-12)
    assert retained_fraction(np.zeros((2, 8))) == 1.0


def _best_swap(a: np.ndarray, labels: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Brute force: the allowed swap (columns in different groups, same label) of largest kept-magnitude gain."""
    base = kept_magnitude(a)
    best = (-np.inf, (-1, -1))
    for p in range(a.shape[1]):
        for q in range(p + 1, a.shape[1]):
            if p // 4 == q // 4 or labels[p] != labels[q]:
                continue
            swapped = a.copy()
            swapped[:, [p, q]] = swapped[:, [q, p]]
            best = max(best, (kept_magnitude(swapped) - base, (p, q)), key=lambda t: t[0])
    return best


@pytest.mark.parametrize("labels", [None, head_blocks(2, 12)], ids=["one block", "two heads"])
def test_search_applies_the_best_allowed_swap_at_every_step_until_none_helps(labels):
    """Greedy channel swap, step by step: ``max_swaps=s`` is ``max_swaps=s-1`` plus the single best allowed swap (by
    brute force; integer magnitudes up to 10⁶ make every gain exact and ties improbable) as long as it gains, and the
    unlimited search stops exactly where no allowed swap gains. Deterministic."""
    rng = np.random.default_rng(7)
    a = rng.integers(1, 10 ** 6, (6, 24)).astype(np.float32) * rng.choice([-1, 1], (6, 24))
    blocks = np.zeros(24, np.int64) if labels is None else labels
    previous = np.arange(24)
    for steps in range(1, 40):
        perm = search_permutation(a, labels, max_swaps=steps)
        gain, (p, q) = _best_swap(a[:, previous], blocks)
        if gain <= 0:
            assert np.array_equal(perm, previous), steps
            break
        expected = previous.copy()
        expected[[p, q]] = expected[[q, p]]
        assert np.array_equal(perm, expected), (steps, gain, (p, q))
        assert kept_magnitude(a[:, perm]) == kept_magnitude(a[:, previous]) + gain
        previous = perm
    else:
        pytest.fail("the search did not stop within 39 swaps")
    assert steps > 3  # the case is not trivial
    final = search_permutation(a, labels)
    assert np.array_equal(final, previous) and np.array_equal(search_permutation(a, labels), final)
    assert np.array_equal(blocks[final], blocks)  # every channel stays in its block


def test_search_leaves_a_matrix_no_swap_helps_in_its_order():
    """Equal magnitudes: every swap gains exactly 0, so none is applied (only a positive gain is)."""
    a = np.where(np.arange(16) % 2, 1.0, -1.0)[None, :].repeat(4, 0).astype(np.float32)
    assert np.array_equal(search_permutation(a), np.arange(16))
    assert np.array_equal(search_permutation(a, max_swaps=1), np.arange(16))


@torch.no_grad()
def test_permute_twin_permutes_the_producers_biases_too():
    """fc1 / v biases move with their output features (timm initialises them to 0, which would hide a missed bias)."""
    twin = canonicalize(tiny_vit())
    generator = torch.Generator().manual_seed(3)
    for block in twin.blocks:
        for linear in (block.mlp.fc1, block.attn.v):
            linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator))
    permuted = canonicalize(tiny_vit())
    permuted.load_state_dict(twin.state_dict())
    planner.permute_twin(permuted)
    moved = [not torch.equal(a.mlp.fc1.bias, b.mlp.fc1.bias) for a, b in zip(twin.blocks, permuted.blocks)]
    assert all(moved)  # the search did permute (the check below can fail)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    assert max_abs(permuted(images), twin(images)) <= FP32_TOLERANCE


# --- planner recipe, options, the pass's own check ---------------------------------------------------------------
def test_sparse_finetuning_uses_gpusq_vit_loss_weights():
    """GPUSQ-ViT's pruning-stage loss: α = 1 (CE), β = 10 (KL at t = 4), γ = 5 (feature MSE)."""
    hard, soft, feature = planner.SPARSE_LOSS
    assert (hard.weight, soft.weight, soft.temperature, feature.weight) == (1.0, 10.0, 4.0, 5.0)


@pytest.mark.parametrize("field,flag", [("min_weights", "--sparse-min-weights"),
                                        ("finetune_epochs", "--sparse-finetune-epochs")])
def test_negative_counts_are_refused(field, flag):
    with pytest.raises(OptionError, match=f"{flag} must be >= 0, got -1"):
        SparsityConfig(pattern="2:4", **{field: -1}).validate()


def test_the_pass_refuses_a_mask_that_stopped_being_2_4():
    """The pass checks its result itself: a plan whose mask was replaced after it was checked is refused."""
    twin = canonicalize(tiny_vit())
    plan = planner.plan(twin, PlanContext(target=TargetConfig(batch=2), teacher=twin), SparsityConfig(pattern="2:4"))
    plan.masks["blocks.0.attn.q"] = np.ones_like(plan.masks["blocks.0.attn.q"])
    with pytest.raises(VitrtError, match="'blocks.0.attn.q.weight' is not 2:4 along axis 0 after masking"):
        SparsityPass(plan).run(GraphView.from_onnx(lower(twin, batch=2)), PassContext())


def test_a_tensorrt_layer_name_holds_a_canonical_name_only_as_a_whole_name():
    """``head`` is not in ``dist_head`` nor ``head_dist`` (word characters either side), but is in ``head + act``."""
    from vitrt.transforms.sparsity.report import names

    assert names("head", "head") and names("{ForeignNode[blocks.0.mlp.fc1 + head]}", "head")
    assert not names("dist_head", "head") and not names("head_dist", "head")
    assert names("blocks.0.mlp.fc1 + blocks.0.mlp.act.div", "blocks.0.mlp.fc1")
    assert not names("xblocks.0.mlp.fc1", "blocks.0.mlp.fc1") and not names("blocks.0.mlp.fc10", "blocks.0.mlp.fc1")


def test_integer_weights_are_ranked_by_their_true_magnitude():
    """np.abs(int8(-128)) is -128 and -x of an unsigned value wraps: integer weights are ranked in a type that holds
    |w|, as float weights are (int8 -128 is the largest of its pairs; uint8 3 and 2 are the largest of 0, 1, 2, 3)."""
    from vitrt.kernels.sparse24 import mask_2to4, mask_pairwise_4to8

    np.testing.assert_array_equal(mask_pairwise_4to8(np.array([[-128, 0, 1, 1, 2, 2, 0, 0]], np.int8), 1),
                                  [[1, 1, 0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(mask_2to4(np.array([[0, 1, 2, 3]], np.uint8), 1), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(mask_2to4(np.array([[-128, 1, 127, 2]], np.int8), 1), [[1, 0, 1, 0]])
