"""2:4 (FP16, INT8) and pair-wise 4:8 (INT4) compressed weight layouts: kept values + 2-bit metadata, in the
order CUTLASS's sparse tensor-core GEMMs (and PyTorch's semi-structured CUTLASS path) consume.

Operand convention
------------------
The sparse operand is ``A[M, K]``: M output channels (rows), K the reduction axis, and the pattern runs
along K within each row. For the canonical ONNX MatMul weight ``B[K, N]`` (2:4 along axis 0, what TensorRT
checks) the operand is ``A = Bᵀ`` (M = N); :func:`matmul_operand` / :func:`conv_operand` build it.

Groups and the 4-bit code
-------------------------
FP16 / INT8: every 4 consecutive elements of a row along K (a *group*) hold at most 2 non-zeros. The group
is stored as its 2 kept values (in increasing position) and one 4-bit code ``idx0 | idx1 << 2`` with
``idx0 < idx1`` the positions (0..3) of the kept values: 2 bits of metadata per kept value.

INT4 (pair-wise 4:8, PTX ``mma.sp`` for ``.s4``): every 8 consecutive elements form 4 two-wide pairs, of
which at most 2 are non-zero; stored as the 4 values of the two kept pairs and one 4-bit code ``p0 | p1 << 2``
(pair positions 0..3): two 2-bit indices per 8 elements. This is the INT8 code applied to pairs of nibbles.

A group with fewer than 2 non-zeros still needs two positions; the choice is the one CUTLASS's compressor and
PyTorch's ``sparse_semi_structured_from_dense_cutlass`` make (so metadata matches bit for bit), written as
the Boolean functions of the non-zero flags m0..m3 below::

    non-zeros   ....  ...x  ..x.  .x..  x...  (and 2 non-zeros: their own positions)
    (idx0,idx1) (2,3) (2,3) (2,3) (1,2) (0,2)

Metadata elements and their order (``layout``)
-----------------------------------------------
Codes are packed least-significant nibble first into metadata elements that each cover 256 bits of
uncompressed A: FP16 → ``int16`` holding 4 codes (16 elements of K); INT8 → ``int32`` holding 8 codes (32 elements
of K); INT4 → ``int32`` holding 8 codes (64 elements of K), as CUTLASS's ``ElementE``
(``cutlass/util/host_uncompress.h``). This gives the logical metadata matrix
``E[M, K / elements_per_meta]`` (``layout="rowmajor"``).

``layout="cutlass"`` stores E reordered as CUTLASS's ``reorder_meta`` (``cutlass/util/host_reorder.h``) does
for the SM80 sparse tensor-core GEMM, whose metadata operand layout is ``ColumnMajorInterleaved<2>``:

1. rows are interleaved inside tiles of ``group`` rows (32 for 16-bit E, 16 for 32-bit E):
   ``r' = r - r % group + (r % 8) · interweave + (r % group) // 8`` (interweave 4 for 16-bit E, 2 for 32-bit);
2. inside every 2 x 2 block of (r', c) the off-diagonal elements are swapped;
3. the result is stored ColumnMajorInterleaved<2>: offset ``(c // 2) · 2M + 2 r' + c % 2``.

It needs M a multiple of ``group`` and an even number of metadata columns (K a multiple of 32 / 64 / 128
for FP16 / INT8 / INT4; PyTorch checks the stricter 64 / 128); smaller or ragged operands are zero-padded
to the tile (zero groups get the code of ``....``) and :func:`decompress` crops the padding. Values are ``[M, K/2]`` row-major in the same
group order: float16 (FP16), int8 (INT8), and for INT4 uint8 ``[M, K/4]`` with two int4 per byte, the
lower column in the low nibble (CUTLASS ``int4b_t`` packing).

Storage (what GPUSQ-ViT sec. 2.1 derives), per 4 elements of a row of A (INT4: per 8)::

    FP16  dense 4 · 16 = 64 bits   sparse 2 · 16 + 2 · 2 = 36 bits   saved 28/64 = 43.75 %
    INT8  dense 4 ·  8 = 32 bits   sparse 2 ·  8 + 2 · 2 = 20 bits   saved 12/32 = 37.5 %
    INT4  dense 8 ·  4 = 32 bits   sparse 4 ·  4 + 2 · 2 = 20 bits   saved 12/32 = 37.5 %

so a fully eligible layer of M·K weights takes 9/16, 5/8 and 5/8 of its dense bytes (:func:`storage_bits`;
the packed arrays of an unpadded operand have exactly these sizes).

Everything here is pure NumPy: masks, checks, compress / decompress, metadata pack / unpack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class LayoutError(ValueError):
    """A matrix, format or metadata that the compressed 2:4 layouts cannot represent (message: one line)."""


FORMATS = ("fp16", "int8", "int4")
LAYOUTS = ("cutlass", "rowmajor")

# value dtype, bits per value, elements of K per group, metadata element dtype
_VALUE_DTYPE = {"fp16": np.float16, "int8": np.int8, "int4": np.int8}
VALUE_BITS = {"fp16": 16, "int8": 8, "int4": 4}
GROUP = {"fp16": 4, "int8": 4, "int4": 8}  # elements of K one 4-bit code covers
META_DTYPE = {"fp16": np.int16, "int8": np.int32, "int4": np.int32}
CODES_PER_META = {"fp16": 4, "int8": 8, "int4": 8}
ROW_TILE = {np.int16: 32, np.int32: 16}  # rows per reorder tile (CUTLASS reorder_meta)

# Exact savings of a fully eligible layer (sec. 2.1 of GPUSQ-ViT): 1 - sparse_bits / dense_bits.
SAVINGS = {"fp16": 0.4375, "int8": 0.375, "int4": 0.375}


# --- masks and pattern checks ---------------------------------------------------------------------------
def _groups_last(weight: np.ndarray, axis: int, size: int) -> tuple[np.ndarray, tuple]:
    """``weight`` with ``axis`` moved last and split into groups of ``size``: [..., K / size, size]."""
    moved = np.moveaxis(np.asarray(weight), axis, -1)
    k = moved.shape[-1]
    if k % size:
        raise LayoutError(f"axis {axis} has length {k}, not a multiple of {size}: it cannot hold a {size}-wide pattern")
    return moved.reshape(*moved.shape[:-1], k // size, size), moved.shape


def _magnitude(weight) -> np.ndarray:
    """|w| in a type that holds it: np.abs of int8 -128 is -128, and -x of an unsigned value wraps."""
    weight = np.asarray(weight)
    return np.abs(weight.astype(np.float64) if weight.dtype.kind in "iub" else weight)


def mask_2to4(weight: np.ndarray, axis: int) -> np.ndarray:
    """Magnitude 2:4 mask: in every 4 consecutive entries along ``axis`` keep the 2 largest |w|.

    Ties keep the lower position (stable sort), so the mask is deterministic. Returns bool, weight's shape.
    """
    groups, moved_shape = _groups_last(_magnitude(weight), axis, 4)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :2], True, axis=-1)
    return np.moveaxis(keep.reshape(moved_shape), -1, axis)


def mask_pairwise_4to8(weight: np.ndarray, axis: int) -> np.ndarray:
    """INT4's pair-wise 4:8 mask: in every 8 along ``axis``, keep the 2 of 4 two-wide pairs of largest Σ|w|."""
    groups, moved_shape = _groups_last(_magnitude(weight), axis, 8)
    pairs = groups.reshape(*groups.shape[:-1], 4, 2).sum(-1)
    order = np.argsort(-pairs, axis=-1, kind="stable")
    keep_pairs = np.zeros(pairs.shape, dtype=bool)
    np.put_along_axis(keep_pairs, order[..., :2], True, axis=-1)
    keep = np.repeat(keep_pairs, 2, axis=-1)
    return np.moveaxis(keep.reshape(moved_shape), -1, axis)


def first_violation(weight: np.ndarray, axis: int, fmt: str = "fp16") -> tuple[int, ...] | None:
    """Index (in ``weight``) of the first element of the first group breaking the format's pattern, or None."""
    size = GROUP[fmt]
    groups, _ = _groups_last(np.asarray(weight) != 0, axis, size)
    if fmt == "int4":
        pairs = groups.reshape(*groups.shape[:-1], 4, 2).any(-1)
        bad = pairs.sum(-1) > 2
    else:
        bad = groups.sum(-1) > 2
    if not bad.any():
        return None
    where = np.argwhere(bad)[0]
    moved_index = (*where[:-1], where[-1] * size)
    # map the index in the moved array back to weight's axes
    order = list(range(np.ndim(weight)))
    order.append(order.pop(axis))
    index = [0] * np.ndim(weight)
    for position, original_axis in enumerate(order):
        index[original_axis] = int(moved_index[position])
    return tuple(index)


def is_2to4(weight: np.ndarray, axis: int) -> bool:
    """Every 4 consecutive entries along ``axis`` hold at most 2 non-zeros (TensorRT's check)."""
    return first_violation(weight, axis, "fp16") is None


def retained_magnitude(weight: np.ndarray, mask: np.ndarray) -> float:
    """Σ|w · mask| / Σ|w| (1.0 for an all-zero weight)."""
    total = float(np.abs(weight).sum(dtype=np.float64))
    return float(np.abs(weight * mask).sum(dtype=np.float64)) / total if total else 1.0


# --- operand views ----------------------------------------------------------------------------------
def matmul_operand(b: np.ndarray) -> np.ndarray:
    """The sparse operand A[M=N, K] of a MatMul weight B[K, N] (2:4 along K = axis 0 of B)."""
    return np.ascontiguousarray(np.asarray(b).T)


def conv_operand(w: np.ndarray) -> np.ndarray:
    """The sparse operand of a Conv weight [M, C, R, S] pruned along C: [M, R·S·C] (C fastest, as NHWC GEMMs)."""
    m = w.shape[0]
    return np.ascontiguousarray(np.asarray(w).transpose(0, 2, 3, 1).reshape(m, -1))


# --- the 4-bit codes --------------------------------------------------------------------------------
def group_codes(nonzero: np.ndarray) -> np.ndarray:
    """4-bit codes of groups given their non-zero flags [..., 4] (bool) -> uint8 [...]; at most 2 flags set.

    The Boolean functions reproduce CUTLASS's choice for groups with fewer than two non-zeros (module doc).
    """
    m0, m1, m3 = nonzero[..., 0], nonzero[..., 1], nonzero[..., 3]
    first_two = m0 & m1
    only_second = ~m0 & m1
    neither = ~m0 & ~m1
    idx0 = only_second.astype(np.uint8) | (neither.astype(np.uint8) << 1)
    idx1 = (first_two | neither | m3).astype(np.uint8) | ((only_second | ~m1).astype(np.uint8) << 1)
    return idx0 | (idx1 << 2)


def code_positions(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (codes & 0b11).astype(np.intp), ((codes >> 2) & 0b11).astype(np.intp)


def pack_meta(codes: np.ndarray, fmt: str, layout: str = "cutlass") -> np.ndarray:
    """Codes [M, G] (uint8, G = K / GROUP) -> metadata elements in ``layout`` (module doc)."""
    _check_format(fmt, layout)
    m, g = codes.shape
    per = CODES_PER_META[fmt]
    dtype = META_DTYPE[fmt]
    if g % per:
        raise LayoutError(f"{g} codes per row do not fill whole {np.dtype(dtype).name} metadata elements ({per} each)")
    nibbles = codes.reshape(m, g // per, per).astype(np.uint64)
    shifts = (np.arange(per, dtype=np.uint64) * 4)
    unsigned = np.bitwise_or.reduce(nibbles << shifts, axis=-1)
    bits = np.dtype(dtype).itemsize * 8
    meta = unsigned.astype({16: np.uint16, 32: np.uint32}[bits]).view(dtype)
    if layout == "rowmajor":
        return meta
    return _reorder(meta, dtype)


def unpack_meta(meta: np.ndarray, fmt: str, layout: str, rows: int) -> np.ndarray:
    """Inverse of :func:`pack_meta`: metadata elements -> codes [rows, G]."""
    _check_format(fmt, layout)
    dtype = META_DTYPE[fmt]
    if meta.dtype != dtype:
        raise LayoutError(f"{fmt} metadata must be {np.dtype(dtype).name}, got {meta.dtype}")
    logical = meta if layout == "rowmajor" else _unreorder(meta, dtype, rows)
    per = CODES_PER_META[fmt]
    unsigned = logical.view({2: np.uint16, 4: np.uint32}[np.dtype(dtype).itemsize]).astype(np.uint64)
    shifts = np.arange(per, dtype=np.uint64) * 4
    codes = (unsigned[..., None] >> shifts) & 0xF
    return codes.reshape(rows, -1).astype(np.uint8)


def reorder_offsets(rows: int, cols: int, dtype) -> np.ndarray:
    """Flat destination offset of logical E[r, c] in the CUTLASS-ordered buffer ([rows, cols] int64)."""
    group, interweave = (32, 4) if np.dtype(dtype).itemsize == 2 else (16, 2)
    r = np.arange(rows)[:, None].repeat(cols, 1)
    c = np.arange(cols)[None, :].repeat(rows, 0)
    r = r - r % group + (r % 8) * interweave + (r % group) // 8
    # swap the off-diagonal elements of every 2x2 block
    up = ((r % 2 == 0) & (c % 2 == 1)).astype(np.int64)
    down = ((r % 2 == 1) & (c % 2 == 0)).astype(np.int64)
    r, c = r + up - down, c - up + down
    return (c // 2) * rows * 2 + r * 2 + c % 2


def _reorder(meta: np.ndarray, dtype) -> np.ndarray:
    rows, cols = meta.shape
    out = np.empty(rows * cols, dtype=meta.dtype)
    out[reorder_offsets(rows, cols, dtype).reshape(-1)] = meta.reshape(-1)
    return out.reshape(rows, cols)


def _unreorder(meta: np.ndarray, dtype, rows: int) -> np.ndarray:
    cols = meta.size // rows
    return meta.reshape(-1)[reorder_offsets(rows, cols, dtype).reshape(-1)].reshape(rows, cols)


# --- compress / decompress --------------------------------------------------------------------------
@dataclass(frozen=True)
class Compressed:
    """A compressed sparse operand: ``values`` and ``meta`` (module doc) of the logical A[``shape``]."""

    fmt: str
    layout: str
    shape: tuple[int, int]  # logical [M, K]
    padded: tuple[int, int]  # [M, K] after padding to the layout's tile
    values: np.ndarray
    meta: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.meta.nbytes)

    def dense_nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * VALUE_BITS[self.fmt] // 8


def _check_format(fmt: str, layout: str) -> None:
    if fmt not in FORMATS:
        raise LayoutError(f"unknown sparse format '{fmt}': expected one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown metadata layout '{layout}': expected one of {', '.join(LAYOUTS)}")


def padded_shape(shape: tuple[int, int], fmt: str, layout: str) -> tuple[int, int]:
    m, k = shape
    k_tile = GROUP[fmt] * CODES_PER_META[fmt]
    # ColumnMajorInterleaved<2> stores metadata columns in pairs: CUTLASS order needs an even column count.
    k_tile *= 2 if layout == "cutlass" else 1
    m_tile = ROW_TILE[META_DTYPE[fmt]] if layout == "cutlass" else 1
    return -(-m // m_tile) * m_tile, -(-k // k_tile) * k_tile


def compress(a: np.ndarray, fmt: str, layout: str = "cutlass") -> Compressed:
    """Compress the sparse operand A[M, K] (float16 for fp16; int8 for int8; int8 in [-8, 7] for int4).

    Refuses (LayoutError, one line) a wrong dtype or rank, and a matrix that is not 2:4 (fp16, int8) or
    pair-wise 4:8 (int4) along K — prune it first with :func:`mask_2to4` / :func:`mask_pairwise_4to8`.
    """
    _check_format(fmt, layout)
    a = np.asarray(a)
    if a.ndim != 2:
        raise LayoutError(f"the sparse operand must be a matrix A[M, K], got shape {a.shape}")
    if a.dtype != _VALUE_DTYPE[fmt]:
        raise LayoutError(f"{fmt} compression needs a {np.dtype(_VALUE_DTYPE[fmt]).name} matrix, got {a.dtype}")
    if fmt == "int4" and a.size and (a.min() < -8 or a.max() > 7):
        raise LayoutError(f"int4 values must lie in [-8, 7], got [{a.min()}, {a.max()}]")
    if a.shape[1] % GROUP[fmt]:
        raise LayoutError(f"K = {a.shape[1]} is not a multiple of {GROUP[fmt]}: no {fmt} sparse layout exists")
    bad = first_violation(a, 1, fmt)
    if bad is not None:
        pattern = "pair-wise 4:8" if fmt == "int4" else "2:4"
        raise LayoutError(f"matrix is not {pattern} along K: row {bad[0]}, columns {bad[1]}..{bad[1] + GROUP[fmt] - 1} "
                         f"hold too many non-zeros; apply a {pattern} mask before compressing")
    pm, pk = padded_shape(a.shape, fmt, layout)
    padded = np.zeros((pm, pk), dtype=a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    if fmt == "int4":
        # One code per 8 elements: the 2:4 code of its 4 pairs; values are the kept pairs.
        units = padded.reshape(pm, pk // 8, 4, 2)
        codes = group_codes(units.any(-1))
    else:
        units = padded.reshape(pm, pk // 4, 4)
        codes = group_codes(units != 0)
    idx0, idx1 = code_positions(codes)
    first = np.take_along_axis(units, idx0[:, :, None, None] if fmt == "int4" else idx0[:, :, None], axis=2)
    second = np.take_along_axis(units, idx1[:, :, None, None] if fmt == "int4" else idx1[:, :, None], axis=2)
    values = np.concatenate([first, second], axis=2).reshape(pm, pk // 2)
    if fmt == "int4":
        values = _pack_int4(values)
    return Compressed(fmt, layout, tuple(a.shape), (pm, pk), np.ascontiguousarray(values), pack_meta(codes, fmt, layout))


def decompress(c: Compressed) -> np.ndarray:
    """The dense A[M, K] (logical shape) of a compressed operand; exact inverse of :func:`compress`."""
    pm, pk = c.padded
    codes = unpack_meta(c.meta, c.fmt, c.layout, pm)
    idx0, idx1 = code_positions(codes)
    if c.fmt == "int4":
        values = _unpack_int4(c.values).reshape(pm, pk // 8, 2, 2)
        dense = np.zeros((pm, pk // 8, 4, 2), dtype=np.int8)
        np.put_along_axis(dense, idx0[:, :, None, None].repeat(2, 3), values[:, :, 0:1], axis=2)
        np.put_along_axis(dense, idx1[:, :, None, None].repeat(2, 3), values[:, :, 1:2], axis=2)
    else:
        values = c.values.reshape(pm, pk // 4, 2)
        dense = np.zeros((pm, pk // 4, 4), dtype=c.values.dtype)
        np.put_along_axis(dense, idx0[:, :, None], values[:, :, 0:1], axis=2)
        np.put_along_axis(dense, idx1[:, :, None], values[:, :, 1:2], axis=2)
    return dense.reshape(pm, pk)[: c.shape[0], : c.shape[1]]


def _pack_int4(values: np.ndarray) -> np.ndarray:
    nibbles = values.astype(np.uint8) & 0xF
    return (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)


def _unpack_int4(packed: np.ndarray) -> np.ndarray:
    low = (packed & 0xF).astype(np.int16)
    high = (packed >> 4).astype(np.int16)
    both = np.stack([low, high], axis=-1).reshape(packed.shape[0], -1)
    return np.where(both > 7, both - 16, both).astype(np.int8)


# --- storage accounting -----------------------------------------------------------------------------
def storage_bits(m: int, k: int, fmt: str) -> tuple[int, int]:
    """(dense bits, compressed bits) of an M x K operand in ``fmt`` (K a multiple of the group, no padding).

    Compressed = M·K/2 kept values + one 4-bit code per group (FP16/INT8: per 4; INT4: per 8).
    """
    if fmt not in FORMATS:
        raise LayoutError(f"unknown sparse format '{fmt}': expected one of {', '.join(FORMATS)}")
    dense = m * k * VALUE_BITS[fmt]
    sparse = m * k // 2 * VALUE_BITS[fmt] + m * k // GROUP[fmt] * 4
    return dense, sparse


def storage_saving(m: int, k: int, fmt: str) -> float:
    dense, sparse = storage_bits(m, k, fmt)
    return 1.0 - sparse / dense
