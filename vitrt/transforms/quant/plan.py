"""The quantization plan: the precision, the scale table (every quantized tensor's format and range), whether the
attention matmuls are quantized, and — after QAT — the trained twin parameters the table applies to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.transforms.quant.scale_table import ScaleTable, table_from_dict

PLAN_FORMAT = 1


@dataclass(frozen=True, eq=False)  # holds arrays: identity, not value, equality
class QuantPlan:
    precision: str  # int8 | fp8 | int4w
    table: ScaleTable
    quantize_attention: bool = False
    weights: Mapping[str, np.ndarray] | None = None  # twin parameters after QAT (None: the twin's own)
    info: Mapping[str, Any] = field(default_factory=dict)  # calibration data, QAT losses, accuracy
    float_layers: Mapping[str, str] = field(default_factory=dict)  # layer kept float -> why (the table lacks it)

    def __post_init__(self):
        if self.table.precision != self.precision:
            raise VitrtError(f"quantization plan: the scale table is for '{self.table.precision}', the plan for "
                             f"'{self.precision}'")

    def notes(self) -> list[str]:
        """Where the plan quantizes less than asked (said in one line each and recorded in the manifest)."""
        notes = []
        blocks = sorted(int(k.split(".")[1]) for k in self.table.entries if k.endswith(".attn.q.weight"))
        if self.quantize_attention:
            plain = [i for i in blocks if f"blocks.{i}.attn.qk.input_a" not in self.table.entries
                     and f"blocks.{i}.attn.qk" not in self.float_layers]
            if plain:
                notes.append(f"quantize-attention: blocks {plain} keep float attention matmuls (TensorRT's fused "
                             "attention takes Q/DQ only for head size 16/32/64 and <= 512 tokens)")
        if self.float_layers:
            names = list(self.float_layers)
            notes.append(f"quantization: {len(names)} layer(s) kept float: {', '.join(names[:4])}"
                         f"{' ...' if len(names) > 4 else ''} (why: manifest quantization.float_layers)")
        images = self.info.get("calib_images")
        if images and images["used"] < images["asked"]:
            notes.append(f"calibration: on {images['used']} images, all that {self.info.get('calib_data')} holds "
                         f"(--calib-images {images['asked']})")
        block = self.table.meta.get("block_size")
        if self.precision == "int4w" and block and block < 128:
            notes.append(f"int4w: block size {block}, since 128 does not divide every layer's input width")
        return notes

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "precision": self.precision, "quantize_attention": self.quantize_attention,
                "table": self.table.to_dict(), "info": dict(self.info), "float_layers": dict(self.float_layers)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"weight/{k}": np.asarray(v) for k, v in (self.weights or {}).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray], spec) -> "QuantPlan":
        """Rebuild a plan for ``spec`` (the table is validated against the names and shapes ``spec`` implies)."""
        if data.get("format") != PLAN_FORMAT:
            raise VitrtError(f"quantization plan format {data.get('format')!r} is not supported")
        float_layers = dict(data.get("float_layers") or {})
        table = table_from_dict(data["table"], spec, data["precision"], exclude=float_layers,
                                quantize_attention=bool(data.get("quantize_attention")), origin="quantization plan")
        weights = {k[len("weight/"):]: v for k, v in arrays.items() if k.startswith("weight/")} or None
        return cls(data["precision"], table, bool(data.get("quantize_attention")), weights, data.get("info") or {},
                   float_layers)

    def report(self, opset: int | None = None) -> dict:
        """The manifest's ``quantization`` section."""
        section = dict(self.info, precision=self.precision, scale_source=self.table.source,
                       layers=self.table.layer_dtypes(), float_layers=dict(self.float_layers))
        if opset is not None:
            section["opset"] = opset
        return section
