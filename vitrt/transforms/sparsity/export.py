"""``--export-sparse``: the compressed 2:4 weights (FP16 kept values + 2-bit metadata) of every eligible layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vitrt.kernels import sparse24
from vitrt.transforms.sparsity.plan import LayerDecision


def write_sparse_weights(path, decisions: list[LayerDecision], values: dict) -> None:
    """``path`` (.npz): per eligible layer ``<layer>.values`` and ``<layer>.meta`` (FP16, CUTLASS-ordered
    metadata where the tile fits, else row-major), plus ``sparse_weights.json`` beside it as the index."""
    path, fmt = Path(path), "fp16"  # the operand is cast to FP16 below: the one format this export writes
    arrays, index = {}, {"format": fmt, "operand": "A[M, K] = MatMul Bᵀ (Conv: W as [M, R·S·C]); 2:4 along K",
                         "layout_doc": "vitrt.kernels.sparse24", "layers": {}}
    for d in decisions:
        weight = values[d.initializer]
        a = sparse24.conv_operand(weight) if d.kind == "conv" else sparse24.matmul_operand(weight)
        a = a.astype(np.float16)
        layout = "cutlass" if sparse24.padded_shape(a.shape, fmt, "cutlass") == a.shape else "rowmajor"
        packed = sparse24.compress(a, fmt, layout)
        arrays[f"{d.name}.values"], arrays[f"{d.name}.meta"] = packed.values, packed.meta
        index["layers"][d.name] = {"initializer": d.initializer, "kind": d.kind, "onnx_shape": list(d.shape),
                                   "operand_shape": list(packed.shape), "padded_shape": list(packed.padded),
                                   "layout": layout, "values": f"{d.name}.values", "meta": f"{d.name}.meta",
                                   "values_dtype": str(packed.values.dtype), "meta_dtype": str(packed.meta.dtype),
                                   "bytes": packed.nbytes, "dense_bytes": packed.dense_nbytes()}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    (path.parent / "sparse_weights.json").write_text(json.dumps(index, indent=2))
