"""Compressed 2:4 / 4:8 layouts: bit-exact roundtrip, metadata vs PyTorch's CUTLASS conversion, storage, errors."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from vitrt.kernels.sparse24 import LayoutError
from vitrt.kernels import sparse24


def case_seed(*case) -> int:
    """A seed that depends only on the case (``hash`` of a str changes per process with PYTHONHASHSEED)."""
    return zlib.crc32(repr(case).encode())


def test_case_seeds_are_the_same_in_every_process():
    assert case_seed("fp16", "cutlass", (64, 128)) == 1567149993


def _fp16_24(rng, m, k):
    a = rng.standard_normal((m, k)).astype(np.float16)
    return np.where(sparse24.mask_2to4(a, 1), a, 0).astype(np.float16)


def _int8_24(rng, m, k):
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    return (a * sparse24.mask_2to4(a.astype(np.int16), 1)).astype(np.int8)


def _int4_48(rng, m, k):
    a = rng.integers(-8, 8, (m, k)).astype(np.int8)
    return (a * sparse24.mask_pairwise_4to8(a, 1)).astype(np.int8)


def _degenerate_groups(a, group):
    """Groups with 0 and 1 non-zeros (every single-survivor position), which need CUTLASS's tie rule."""
    a = a.copy()
    a[0, :group] = 0
    for position in range(4):
        row = a[1 + position, group * position:group * (position + 1)]
        keep = row.copy()
        row[:] = 0
        if group == 8:
            row[2 * position:2 * position + 2] = np.where(keep[2 * position:2 * position + 2] == 0, 1, keep[2 * position:2 * position + 2])
        else:
            row[position] = 1
    return a


MAKERS = {"fp16": _fp16_24, "int8": _int8_24, "int4": _int4_48}


@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("layout", ["cutlass", "rowmajor"])
@pytest.mark.parametrize("shape", [(64, 128), (96, 256), (10, 72), (33, 200)])
def test_roundtrip_is_bit_exact_on_random_matrices(fmt, layout, shape):
    rng = np.random.default_rng(case_seed(fmt, layout, shape))
    m, k = shape
    k = k - k % sparse24.GROUP[fmt]
    a = _degenerate_groups(MAKERS[fmt](rng, m, k), sparse24.GROUP[fmt])
    packed = sparse24.compress(a, fmt, layout)
    back = sparse24.decompress(packed)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert back.tobytes() == a.tobytes()  # bit-exact
    assert packed.meta.dtype == sparse24.META_DTYPE[fmt]
    codes = sparse24.unpack_meta(packed.meta, fmt, layout, packed.padded[0])
    assert np.array_equal(sparse24.pack_meta(codes, fmt, layout), packed.meta)


@pytest.mark.parametrize("fmt,dtype", [("fp16", torch.float16), ("int8", torch.int8)])
@pytest.mark.parametrize("shape", [(32, 64), (64, 128), (128, 768)])
def test_metadata_equals_pytorch_cutlass_reference_on_cpu(fmt, dtype, shape):
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    rng = np.random.default_rng(1)
    a = _degenerate_groups(MAKERS[fmt](rng, *shape), 4)
    packed = sparse24.compress(a, fmt, "cutlass")
    values, meta = sparse_semi_structured_from_dense_cutlass(torch.from_numpy(a))
    assert meta.dtype == {"fp16": torch.int16, "int8": torch.int32}[fmt]
    assert np.array_equal(meta.numpy(), packed.meta)
    assert values.numpy().tobytes() == packed.values.tobytes()


def test_reorder_is_a_permutation():
    for dtype, rows in ((np.int16, 64), (np.int32, 48)):
        offsets = sparse24.reorder_offsets(rows, 6, dtype).reshape(-1)
        assert sorted(offsets.tolist()) == list(range(rows * 6))


@pytest.fixture(scope="module")
def deit_small_fc2():
    """deit_small's fc2 weight A[M=384, K=1536] as timm initialises it (no pretrained weights offline): built
    from timm's own Mlp layer and ViT init (trunc normal, std 0.02) instead of the whole 22M-parameter model."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import init_weights_vit_timm

    torch.manual_seed(0)
    mlp = Mlp(384, 1536)
    init_weights_vit_timm(mlp.fc2)
    return mlp.fc2.weight.detach().numpy()


def test_roundtrip_on_deit_small_weights(deit_small_fc2):
    w = deit_small_fc2
    fp16 = w.astype(np.float16)
    fp16 = np.where(sparse24.mask_2to4(fp16, 1), fp16, 0).astype(np.float16)
    scale = np.abs(w).max(axis=1, keepdims=True)
    int8 = np.clip(np.round(w / scale * 127), -127, 127).astype(np.int8)
    int8 = (int8 * sparse24.mask_2to4(np.abs(w), 1)).astype(np.int8)
    int4 = np.clip(np.round(w / scale * 7), -8, 7).astype(np.int8)
    int4 = (int4 * sparse24.mask_pairwise_4to8(np.abs(w), 1)).astype(np.int8)
    for fmt, a in (("fp16", fp16), ("int8", int8), ("int4", int4)):
        packed = sparse24.compress(a, fmt)
        assert packed.padded == a.shape  # deit shapes fit the CUTLASS tiles: no padding
        assert sparse24.decompress(packed).tobytes() == a.tobytes()
        assert 1 - packed.nbytes / packed.dense_nbytes() == sparse24.SAVINGS[fmt]


def test_storage_percentages_are_exact():
    assert sparse24.storage_saving(384, 1536, "fp16") == 0.4375
    assert sparse24.storage_saving(384, 1536, "int8") == 0.375
    assert sparse24.storage_saving(384, 1536, "int4") == 0.375
    # and the packed arrays have exactly the accounted sizes
    rng = np.random.default_rng(2)
    for fmt in sparse24.FORMATS:
        packed = sparse24.compress(MAKERS[fmt](rng, 64, 256), fmt)
        dense_bits, sparse_bits = sparse24.storage_bits(64, 256, fmt)
        assert packed.nbytes * 8 == sparse_bits and packed.dense_nbytes() * 8 == dense_bits


def test_masks_keep_the_two_largest():
    w = np.array([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    assert sparse24.mask_2to4(w, 1).tolist() == [[False, True, True, False, True, True, False, False]]
    assert sparse24.mask_2to4(w.T, 0).T.tolist() == sparse24.mask_2to4(w, 1).tolist()
    pairs = sparse24.mask_pairwise_4to8(np.array([[1, 1, 5, 5, 0, 0, 3, 3]], dtype=np.float32), 1)
    assert pairs.tolist() == [[False, False, True, True, False, False, True, True]]


def test_malformed_input_is_refused_with_one_line():
    dense = np.ones((32, 64), dtype=np.float16)
    cases = [
        (lambda: sparse24.compress(dense, "fp16"), "not 2:4 along K: row 0, columns 0..3"),
        (lambda: sparse24.compress(dense.astype(np.float32), "fp16"), "needs a float16 matrix"),
        (lambda: sparse24.compress(np.zeros((4, 16), np.int8) + 9, "int4"), "[-8, 7]"),
        (lambda: sparse24.compress(np.eye(16, dtype=np.int8) * np.int8(3) + np.roll(np.eye(16, dtype=np.int8), 2, 1)
                                   + np.roll(np.eye(16, dtype=np.int8), 4, 1), "int4"), "not pair-wise 4:8"),
        (lambda: sparse24.compress(dense[0], "fp16"), "must be a matrix"),
        (lambda: sparse24.compress(dense, "fp8"), "unknown sparse format"),
        (lambda: sparse24.compress(np.zeros((4, 6), np.float16), "fp16"), "not a multiple of 4"),
    ]
    for call, text in cases:
        with pytest.raises(LayoutError) as info:
            call()
        assert text in str(info.value) and "\n" not in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sparse tensor cores)")
@pytest.mark.parametrize("fmt,dtype", [("fp16", torch.float16), ("int8", torch.int8)])
def test_gpu_library_consumes_our_metadata(fmt, dtype):
    """The CUTLASS sparse GEMM on the GPU multiplies with our packed values + metadata exactly like the dense
    matrix, and PyTorch's GPU-side conversion produces the same metadata."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    rng = np.random.default_rng(3)
    a = MAKERS[fmt](rng, 128, 256)
    packed = sparse24.compress(a, fmt)
    values = torch.from_numpy(packed.values).cuda()
    meta = torch.from_numpy(packed.meta).cuda()
    if fmt == "fp16":
        b = torch.randn(256, 64, dtype=dtype, device="cuda")
        expected = torch.from_numpy(a).cuda().float() @ b.float()
        got = torch._sparse_semi_structured_mm(values, meta, b).float()
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-1)
    else:
        b = torch.randint(-8, 8, (256, 64), dtype=dtype, device="cuda")
        expected = torch.from_numpy(a).cuda().int() @ b.int()
        got = torch._sparse_semi_structured_mm(values, meta, b.t().contiguous().t(), out_dtype=torch.int32)
        assert torch.equal(got, expected)
    gpu = SparseSemiStructuredTensorCUTLASS.from_dense(torch.from_numpy(a).cuda())
    assert torch.equal(gpu.meta.cpu(), torch.from_numpy(packed.meta))
    assert torch.equal(gpu.packed.cpu().view(-1)[: packed.values.size], torch.from_numpy(packed.values).view(-1))


def test_int4_pairs_pack_the_lower_column_into_the_low_nibble():
    """CUTLASS's sub-byte arrays (int4b_t) are little-endian: element 2j in bits 0-3, element 2j + 1 in bits 4-7."""
    from vitrt.kernels.sparse24 import _pack_int4, _unpack_int4

    values = np.array([[1, -2, 7, -8]], np.int8)
    assert _pack_int4(values).tolist() == [[0xE1, 0x87]]
    assert _unpack_int4(_pack_int4(values)).tolist() == values.tolist()


def test_a_conv_weight_pruned_along_channels_is_2_4_along_the_gemm_k():
    """Conv [M, C, R, S] pruned 2:4 along C: its GEMM operand is [M, R·S·C] with C fastest (NHWC), so every group of
    4 consecutive K columns holds two non-zeros; element (m, c, r, s) sits at column (r·S + s)·C + c."""
    from vitrt.kernels.sparse24 import conv_operand

    rng = np.random.default_rng(0)
    m, c, r, s = 4, 8, 2, 3
    w = rng.standard_normal((m, c, r, s)).astype(np.float32)
    keep = np.zeros((m, c // 4, 4, r, s), bool)
    for index in np.ndindex(m, c // 4, r, s):
        keep[index[0], index[1], rng.choice(4, 2, replace=False), index[2], index[3]] = True
    w = w * keep.reshape(m, c, r, s)
    a = conv_operand(w)
    assert a.shape == (m, r * s * c)
    assert np.all((a.reshape(m, -1, 4) != 0).sum(axis=-1) == 2)
    assert a[1, (1 * s + 2) * c + 5] == w[1, 5, 1, 2]
