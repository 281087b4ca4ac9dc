"""The scale table: canonical tensor name -> quantization format and range, as plain JSON.

One entry per quantized tensor of the canonical graph:

    "blocks.3.attn.q.input":  {"dtype": "int8", "axis": null, "block_size": null, "shape": [], "amax": 3.1, ...}
    "blocks.3.attn.q.weight": {"dtype": "int8", "axis": 1, "shape": [384], "amax": [...], "scale": [...]}
    "blocks.3.attn.qk.input_a" / "input_b", "blocks.3.attn.av.input_a" / "input_b"  (attention matmuls)

Names: ``<layer>.input`` is the activation entering the layer's MatMul / Conv, ``<layer>.weight`` its weight
(``axis`` is the ONNX axis of the per-output-channel scale: 1 for MatMul B[K, N], 0 for the Conv weight);
``int4-block`` weights carry ``block_size`` and a [K / block, N] range (blocks run along K, axis 0).
``scale = amax / qmax`` (qmax 127 for int8, 448 for fp8-e4m3, 7 for int4); zero points are always 0, of the
scale's shape. The q projection carries the attention scale (see :mod:`vitrt.compiler.spec`), so
``blocks.i.attn.q.weight`` and ``blocks.i.attn.qk.input_a`` are the ranges of Q·s. At fp8 the Softmax output
``blocks.i.attn.av.input_a`` has the fixed range 1 (:data:`FIXED_AMAX`).

The table is written from the torch twin's quantizers (calibration or QAT) and can be brought by the user
(``--scale-table FILE``); :func:`load_scale_table` validates it against the names and shapes the model and
precision imply, so a malformed table is refused with one line before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.jsonfile import read_json

QMAX = {"int8": 127.0, "fp8-e4m3": 448.0, "int4-block": 7.0}
PRECISION_DTYPES = {"int8": ("int8", "int8"), "fp8": ("fp8-e4m3", "fp8-e4m3"), "int4w": ("int4-block", None)}
# TensorRT's block sizes for INT4 weight-only quantization (its quantization guide; Model Optimizer's W4A16 uses
# 128): preferred first.
INT4_BLOCK_SIZES = (128, 64)
# FP8 attention: the Softmax output (input a of ·V) is bounded to [0, 1], so its FP8 Q/DQ has the fixed range 1,
# i.e. scale 1/448 — Model Optimizer's pattern for TensorRT's FP8 MHA (modelopt.onnx.export.fp8_exporter,
# _insert_qdq_after_softmax). Never calibrated; a table with another value is refused.
FIXED_AMAX = {("fp8", "attn.av.input_a"): 1.0}
# Version 2 (issue 11): the q ranges are those of Q·s (the attention scale folded into q). A version-1 table,
# written before, is refused; a table without a version (hand-written) is read as the current version.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class ScaleEntry:
    """The range of one quantized tensor; ``amax`` has shape ``shape`` ([] per tensor)."""

    dtype: str
    amax: np.ndarray
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "amax", np.asarray(self.amax, dtype=np.float32))

    @property
    def scale(self) -> np.ndarray:
        return (self.amax / np.float32(QMAX[self.dtype])).astype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.amax.shape)

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "axis": self.axis, "block_size": self.block_size, "shape": list(self.shape),
                "amax": self.amax.tolist(), "scale": self.scale.tolist()}


@dataclass(frozen=True)
class ScaleTable:
    """Entries by canonical tensor name; ``source`` says where the ranges came from (manifest's scale source)."""

    precision: str
    entries: dict[str, ScaleEntry]
    source: str = "calibration"
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": "vitrt.scale_table", "version": FORMAT_VERSION, "precision": self.precision,
                "source": self.source, "meta": self.meta,
                "tensors": {name: entry.to_dict() for name, entry in self.entries.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def without(self, layers) -> "ScaleTable":
        """The table without the entries of ``layers`` (canonical layer names: those layers stay float)."""
        return ScaleTable(self.precision, _without_layers(self.entries, layers), self.source, dict(self.meta))

    def layer_dtypes(self) -> dict[str, dict]:
        """Per layer: activation and weight dtype (the manifest's per-layer record)."""
        layers: dict[str, dict] = {}
        for name, entry in self.entries.items():
            layer, _, role = name.rpartition(".")
            layers.setdefault(layer, {})[role] = entry.dtype
        return layers


# --- what a model implies ------------------------------------------------------------------------------

def linear_layers(spec) -> dict[str, tuple[int, int]]:
    """Every weight MatMul of the canonical graph and its B[K, N] shape, in graph order."""
    emb = spec.emb
    layers = {}
    for i, b in enumerate(spec.blocks):
        if b.heads:
            layers.update({f"blocks.{i}.attn.q": (emb, b.heads * b.qk), f"blocks.{i}.attn.k": (emb, b.heads * b.qk),
                           f"blocks.{i}.attn.v": (emb, b.heads * b.v), f"blocks.{i}.attn.proj": (b.heads * b.v, emb)})
        if b.mlp:
            layers.update({f"blocks.{i}.mlp.fc1": (emb, b.mlp), f"blocks.{i}.mlp.fc2": (b.mlp, emb)})
    layers["head"] = (emb, spec.num_classes)
    if spec.distilled:
        layers["head_dist"] = (emb, spec.num_classes)
    return layers


def fused_attention_ok(spec, block_index: int, dtype: str) -> bool:
    """TensorRT's fused attention takes Q/DQ on its matmuls only for head size 16/32/64 and <= 512 tokens."""
    b = spec.blocks[block_index]
    return bool(b.heads) and b.qk in (16, 32, 64) and b.v in (16, 32, 64) and b.tokens <= 512


def int4_block_size(spec, requested: int | None = None) -> int:
    """The INT4 block size: ``requested`` or the largest of :data:`INT4_BLOCK_SIZES` dividing every layer's input
    width K (blocks run along K). Anything else is refused with one line naming the valid sizes and the widths."""
    ks = sorted({k for k, _ in linear_layers(spec).values()})
    valid = " or ".join(str(size) for size in sorted(INT4_BLOCK_SIZES))
    if requested is not None:
        if requested not in INT4_BLOCK_SIZES:
            raise VitrtError(f"INT4 block size {requested} is not supported: TensorRT takes {valid} "
                             f"(layer input widths {ks})")
        bad = [k for k in ks if k % requested]
        if bad:
            raise VitrtError(f"INT4 block size {requested} does not divide the layer input width(s) {bad} "
                             f"(all widths {ks}); TensorRT takes block sizes {valid}")
        return requested
    for size in INT4_BLOCK_SIZES:
        if all(k % size == 0 for k in ks):
            return size
    raise VitrtError(f"int4w needs a block size of {valid} (TensorRT's) dividing every layer input width, but the "
                     f"widths are {ks}: prune to multiples of 64 or use int8")


def fixed_amax(precision: str, name: str) -> float | None:
    """The range ``name`` must have at ``precision`` when it is fixed rather than calibrated (else None)."""
    return next((amax for (p, local), amax in FIXED_AMAX.items() if p == precision and name.endswith(f".{local}")),
                None)


def expected_entries(spec, precision: str, *, quantize_attention: bool = False, block_size: int | None = None,
                     exclude=()) -> dict[str, tuple[str, tuple[int, ...], int | None, int | None]]:
    """name -> (dtype, amax shape, axis, block size) for every tensor ``precision`` quantizes in ``spec``'s graph.

    INT8 / FP8: the patch-embedding Conv and every linear layer (input per tensor, weight per output channel)
    plus, with ``quantize_attention``, both inputs of QKᵀ and of ·V in blocks whose fused attention allows it.
    INT4 (weight-only): the linear layers' weights, block-wise along K. Layers in ``exclude`` (``--quant-exclude``,
    ``--keep-float-top``) stay float: none of their tensors is listed.
    """
    if precision not in PRECISION_DTYPES:
        raise VitrtError(f"precision '{precision}' has no scale table; use one of {sorted(PRECISION_DTYPES)}")
    w_dtype, a_dtype = PRECISION_DTYPES[precision]
    out: dict = {}
    if precision == "int4w":
        block = int4_block_size(spec, block_size)
        for name, (k, n) in linear_layers(spec).items():
            out[f"{name}.weight"] = (w_dtype, (k // block, n), 0, block)
        return _without_layers(out, exclude)
    out["patch_embed.input"] = (a_dtype, (), None, None)
    out["patch_embed.weight"] = (w_dtype, (spec.emb,), 0, None)
    for name, (_, n) in linear_layers(spec).items():
        out[f"{name}.input"] = (a_dtype, (), None, None)
        out[f"{name}.weight"] = (w_dtype, (n,), 1, None)
    if quantize_attention:
        for i in range(spec.depth):
            if fused_attention_ok(spec, i, a_dtype):
                for local in ("qk.input_a", "qk.input_b", "av.input_a", "av.input_b"):
                    out[f"blocks.{i}.attn.{local}"] = (a_dtype, (), None, None)
    return _without_layers(out, exclude)


def _without_layers(entries: dict, layers) -> dict:
    layers = set(layers)
    return {k: v for k, v in entries.items() if k.rpartition(".")[0] not in layers}


def quantizable_layers(spec, precision: str, *, quantize_attention: bool = False) -> list[str]:
    """The layers ``precision`` would quantize in ``spec``'s graph (what ``--quant-exclude`` patterns match)."""
    return list(dict.fromkeys(k.rpartition(".")[0] for k in expected_entries(spec, precision,
                                                                            quantize_attention=quantize_attention)))


# --- per-layer fallback (--quant-exclude, --keep-float-top --sensitivity) ---------------------------------------

def excluded_layers(patterns: str | None, spec, precision: str, quantize_attention: bool = False) -> dict[str, str]:
    """Layers matched by ``--quant-exclude`` ``patterns`` (comma-separated fnmatch) -> why; a pattern that matches no
    quantizable layer is refused."""
    import fnmatch

    layers = quantizable_layers(spec, precision, quantize_attention=quantize_attention)
    out: dict[str, str] = {}
    for pattern in [p.strip() for p in (patterns or "").split(",") if p.strip()]:
        matched = [layer for layer in layers if fnmatch.fnmatchcase(layer, pattern)]
        if not matched:
            raise VitrtError(f"--quant-exclude '{pattern}' matches no quantized layer (they are named like "
                             f"{', '.join(layers[:3])}, ..., {layers[-1]})")
        out.update({layer: f"--quant-exclude {pattern}" for layer in matched if layer not in out})
    return out


def read_ranking(path, precision: str, layers: list[str], model: str = "") -> list[str]:
    """The layer order of a ``vitrt sensitivity`` result (checked: its precision, layers this model has and, where
    both it and ``model`` name a model rather than a label, that it was scored on that model: another's layers share
    the names)."""
    data = read_json(path, "sensitivity ranking", "write one with vitrt sensitivity MODEL -o DIR (DIR/sensitivity.json)")
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise VitrtError(f"sensitivity ranking '{path}': expected the JSON vitrt sensitivity writes (a 'layers' list)")
    from vitrt.compiler.known_models import model_identity

    scored = str(data.get("model_name") or "")  # rankings written before it was recorded are not checked
    ours, theirs = (model_identity(model) if model else None), (model_identity(scored) if scored else None)
    if ours and theirs and ours != theirs:
        raise VitrtError(f"sensitivity ranking '{path}' was scored on {scored}, the compile is of {model}; score "
                         f"this model: vitrt sensitivity {model} -o DIR")
    if data.get("precision") != precision:
        raise VitrtError(f"sensitivity ranking '{path}' was scored at {data.get('precision')}, the compile is {precision}")
    ranking = [row.get("layer") if isinstance(row, dict) else None for row in data["layers"]]
    unknown = [layer for layer in ranking if layer not in layers]
    if unknown:
        raise VitrtError(f"sensitivity ranking '{path}' names '{unknown[0]}', which this model does not quantize")
    return ranking


# --- loading and validation ------------------------------------------------------------------------------

def table_from_dict(data, spec, precision: str, *, quantize_attention: bool = False, origin: str = "scale table",
                    source: str | None = None, exclude=()) -> ScaleTable:
    """Validate ``data`` (parsed JSON) against what ``spec`` and ``precision`` imply; one-line VitrtError if not."""
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), dict):
        raise VitrtError(f"{origin}: expected a JSON object with a 'tensors' mapping (write one with vitrt compile "
                         "--precision ... and copy OUT/scale_table.json)")
    if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise VitrtError(f"{origin}: version {data.get('version')!r} tables were written before vitrt folded the "
                         f"attention scale into q (their q ranges no longer fit); expected version {FORMAT_VERSION}: "
                         "calibrate again")
    if data.get("precision", precision) != precision:
        raise VitrtError(f"{origin}: table is for precision '{data.get('precision')}', the compile asks for "
                         f"'{precision}'")
    tensors = data["tensors"]
    block = None
    if precision == "int4w":
        sizes = {t.get("block_size") for t in tensors.values() if isinstance(t, dict)}
        block = sizes.pop() if len(sizes) == 1 else None
        if not isinstance(block, int) or isinstance(block, bool):
            raise VitrtError(f"{origin}: int4-block entries need one common integer block_size "
                             f"({' or '.join(map(str, sorted(INT4_BLOCK_SIZES)))})")
    try:
        expected = expected_entries(spec, precision, quantize_attention=quantize_attention, block_size=block,
                                    exclude=exclude)
    except VitrtError as exc:  # a block size TensorRT does not take, or one that does not fit the model
        raise VitrtError(f"{origin}: {exc}") from None
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise VitrtError(f"{origin}: unknown tensor '{unknown[0]}' (not quantized in this model at precision "
                         f"{precision}{' with --quantize-attention' if quantize_attention else ''})")
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise VitrtError(f"{origin}: no entry for tensor '{missing[0]}' ({len(missing)} missing; a table written with "
                         "layers kept float needs the same --quant-exclude)")
    entries = {}
    for name, (dtype, shape, axis, block_size) in expected.items():
        entries[name] = _entry(tensors[name], name, dtype, shape, axis, block_size, origin)
        fixed = fixed_amax(precision, name)
        if fixed is not None and not np.allclose(entries[name].amax, fixed, rtol=1e-6):
            raise VitrtError(f"{origin}: '{name}' is the Softmax output, whose {precision} range is fixed at amax "
                             f"{fixed:g} (scale 1/{QMAX[dtype]:g}), got amax {float(entries[name].amax.max()):g}")
    return ScaleTable(precision, entries, source or data.get("source", "file"), dict(data.get("meta") or {}))


def _entry(raw, name, dtype, shape, axis, block_size, origin) -> ScaleEntry:
    if not isinstance(raw, dict):
        raise VitrtError(f"{origin}: entry '{name}' must be an object with dtype and amax (or scale)")
    if raw.get("dtype", dtype) != dtype:
        raise VitrtError(f"{origin}: '{name}' has dtype '{raw.get('dtype')}', expected '{dtype}'")
    if raw.get("axis", axis) != axis:
        raise VitrtError(f"{origin}: '{name}' has axis {raw.get('axis')}, expected {axis}")
    key = "amax" if "amax" in raw else "scale" if "scale" in raw else None
    if key is None:
        raise VitrtError(f"{origin}: '{name}' has neither 'amax' nor 'scale'")
    try:
        values = np.asarray(raw[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise VitrtError(f"{origin}: '{name}'.{key} is not a number or a nested list of numbers") from None
    if values.shape != tuple(shape):
        raise VitrtError(f"{origin}: '{name}'.{key} has shape {list(values.shape)}, expected {list(shape)}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise VitrtError(f"{origin}: '{name}'.{key} must be finite and positive (symmetric quantization); "
                         f"found {float(values.min()) if values.size else 'nothing'}")
    amax = values if key == "amax" else values * QMAX[dtype]
    return ScaleEntry(dtype, amax.astype(np.float32), axis, block_size)


def load_scale_table(path: str | Path, spec, precision: str, *, quantize_attention: bool = False,
                     exclude=()) -> ScaleTable:
    """Read and validate a user's scale table file (VitrtError naming the first problem); the layers in ``exclude``
    (``--quant-exclude``) stay float, so the file has no entries for them."""
    path = Path(path)
    data = read_json(path, "scale table", "write one with vitrt compile --precision ... (OUT/scale_table.json)")
    return table_from_dict(data, spec, precision, quantize_attention=quantize_attention,
                           origin=f"scale table '{path}'", source=f"file:{path.name}", exclude=exclude)

