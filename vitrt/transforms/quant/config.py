"""Options of the quantization stage: calibration, QAT and scale tables (the precision itself is a target option)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option

QUANT_PRECISIONS = ("int8", "fp8", "int4w")
CALIB_METHODS = ("max", "percentile", "entropy", "mse")


@dataclass(frozen=True)
class QuantConfig:
    calib_data: str | None = option(None, "calibration / QAT data: digits, synthetic, "
                                    "synth:SET (vitrt synth) or an ImageFolder PATH "
                                    "(default synthetic)", metavar="DATA")
    calib_method: str = option("max", "activation calibrator (weights always use max)", choices=CALIB_METHODS)
    calib_images: int = option(512, "images used for calibration", type=int, metavar="N")
    qat_epochs: int = option(0, "epochs of sparse-distillation-aware QAT after calibration (GPUSQ-ViT)", type=int,
                             metavar="N")
    quantize_attention: bool = option(False, "also quantize the attention matmuls where fused attention allows it")
    scale_table: Path | None = option(None, "scale table JSON to use instead of calibrating (validated)", type=Path,
                                      metavar="FILE")
    exclude: str | None = option(None, "keep these layers float: comma-separated fnmatch patterns over canonical layer "
                                 "names (patch_embed, blocks.3.attn.q, blocks.3.attn.qk, blocks.3.mlp.fc2, head)",
                                 flag="--quant-exclude", metavar="PATTERNS")
    keep_float_top: int = option(0, "keep the K layers most sensitive to quantization float (KL of the output when "
                                 "only that layer is quantized, on the calibration data, or from --sensitivity)",
                                 type=int, metavar="K")
    sensitivity: Path | None = option(None, "with --keep-float-top: the ranking vitrt sensitivity wrote "
                                      "(sensitivity.json) instead of scoring on the calibration data", type=Path,
                                      metavar="FILE")

    def validate(self, precision: str) -> "QuantConfig":
        """Option combinations refused for ``precision`` (the target's)."""
        quant = precision in QUANT_PRECISIONS
        if not quant and (self.qat_epochs or self.quantize_attention or self.scale_table or self.calib_data):
            raise OptionError(f"--qat-epochs / --quantize-attention / --scale-table / --calib-data need --precision "
                             f"int8, fp8 or int4w (got {precision})")
        if self.qat_epochs < 0:
            raise OptionError(f"--qat-epochs must be >= 0, got {self.qat_epochs}")
        if self.calib_images < 1:
            raise OptionError(f"--calib-images must be >= 1, got {self.calib_images}")
        if precision == "int4w" and (self.qat_epochs or self.quantize_attention):
            raise OptionError("int4w is weight-only: --qat-epochs and --quantize-attention apply to int8 and fp8")
        # beside a scale table, --calib-data is what QAT fine-tunes on or what --keep-float-top scores layers on
        scores_layers = self.keep_float_top and self.sensitivity is None
        if self.scale_table is not None and self.calib_data is not None and not (self.qat_epochs or scores_layers):
            raise OptionError("--scale-table replaces calibration: drop --calib-data (or add --qat-epochs to fine-tune "
                              "on it, or --keep-float-top K to score layers on it)")
        # options of a calibration that does not run would be accepted and ignored: a scale table replaces it, and
        # int4w (weight-only) has none; --calib-images also sets how many images --keep-float-top scores on
        calibrates = precision in ("int8", "fp8") and self.scale_table is None
        default = {f.name: f.default for f in fields(self)}
        why = "--scale-table replaces calibration" if self.scale_table is not None else f"{precision} calibrates nothing"
        if quant and self.calib_method != default["calib_method"] and not calibrates:
            raise OptionError(f"--calib-method picks the calibrator, and {why}: drop it")
        if quant and self.calib_images != default["calib_images"] and not (calibrates or scores_layers):
            raise OptionError(f"--calib-images counts the calibration images, and {why}: drop it (or add "
                              "--keep-float-top K to score layers on that many)")
        if not quant and (self.exclude or self.keep_float_top):
            raise OptionError(f"--quant-exclude / --keep-float-top need --precision int8, fp8 or int4w (got {precision})")
        if self.keep_float_top < 0:
            raise OptionError(f"--keep-float-top must be >= 0, got {self.keep_float_top}")
        if self.sensitivity is not None and not self.keep_float_top:
            raise OptionError("--sensitivity ranks layers for --keep-float-top K: pass a K >= 1 (or drop "
                              "--sensitivity)")
        if self.sensitivity is not None and not Path(self.sensitivity).is_file():
            raise OptionError(f"--sensitivity '{self.sensitivity}' does not exist or is not a file")
        return self

    def check(self, spec, target):
        """A given scale table, the --quant-exclude patterns and the --sensitivity ranking are checked against the
        spec they will meet before any work, when that is known."""
        from vitrt.transforms.quant.scale_table import excluded_layers, load_scale_table, quantizable_layers, read_ranking

        if spec is None:
            return spec
        excluded = excluded_layers(self.exclude, spec, target.precision, self.quantize_attention) if self.exclude else {}
        if self.scale_table is not None:
            load_scale_table(self.scale_table, spec, target.precision, quantize_attention=self.quantize_attention,
                             exclude=excluded)
        if self.sensitivity is not None:
            read_ranking(self.sensitivity, target.precision, quantizable_layers(
                spec, target.precision, quantize_attention=self.quantize_attention))
        return spec
