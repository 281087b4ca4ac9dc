"""The accuracy-debugging commands' options (importable without torch, so the CLI starts fast)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.known_models import is_digits_model
from vitrt.compiler.options import option
from vitrt.pipeline.config import check_data_source

BISECT_STAGES = ("quant", "sparsity", "tome")  # the stages whose layers --bisect may revert

AGAINST = ("twin", "float")
PROBE_BACKENDS = ("ort", "torch")  # backends that can return a graph's intermediate tensors (vitrt.debug.probes)


def check_out(path: Path) -> None:
    if not (Path(path) / "manifest.json").is_file() or not (Path(path) / "model.onnx").is_file():
        raise VitrtError(f"'{path}' is not a vitrt compile output (no manifest.json and model.onnx)")


@dataclass(frozen=True)
class CompareConfig:
    a: Path | None = option(None, "a compiled OUT (with one OUT: compared with its twin; compile it with --keep-twin)",
                            positional=True, type=Path, metavar="OUT")
    b: Path | None = option(None, "a second compiled OUT, compared with the first on the points both graphs have",
                            positional=True, nargs="?", type=Path, metavar="B")
    data: str = option("synthetic", "images: digits (its test split), synthetic or an ImageFolder PATH",
                       metavar="digits|synthetic|PATH")
    images: int = option(64, "number of images", type=int, metavar="N")
    against: str = option("twin", "with one OUT: the twin the compile verified against, or the float twin (every "
                          "stage but quantization and precision typing)", choices=AGAINST)
    backend: str | None = option(None, "backend running OUT (A) (default: the one it was compiled for; ort for trt)", choices=PROBE_BACKENDS)
    backend_b: str | None = option(None, "backend running B (default: the one it was compiled for; ort for trt)", choices=PROBE_BACKENDS)
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    bisect: bool = option(False, "with one OUT: find the fewest quantized / 2:4 / merging layers whose reversion "
                          "brings top-1 within --max-drop of the uncompressed graph, by halving")
    max_drop: float = option(0.5, "with --bisect: allowed top-1 drop in points (percent) against the graph with "
                             "every compressed layer reverted", type=float, metavar="POINTS")
    bisect_stages: str | None = option(None, "with --bisect: comma-separated stages whose layers may be reverted "
                                       "(quant, sparsity, tome; default: all the compile ran)", metavar="STAGES")
    out: Path | None = option(None, "report directory (default OUT/compare, or B/compare with two OUTs)",
                              flag="-o/--out", type=Path, metavar="DIR")
    force: bool = option(False, "replace a non-empty report directory that vitrt wrote")
    seed: int = option(0, "seed of synthetic images and ImageFolder subsets", type=int, metavar="N")
    quiet: bool = option(False, "no progress output")

    @property
    def report_dir(self) -> Path:
        return self.out or Path(self.b or self.a) / "compare"

    def listed_stages(self) -> tuple[str, ...]:
        """The stage names --bisect-stages lists (empty names dropped: "quant," is quant)."""
        return tuple(s.strip() for s in (self.bisect_stages or "").split(",") if s.strip())

    def stages_to_bisect(self) -> tuple[str, ...]:
        """The stages whose layers --bisect may revert: those listed, by default every one."""
        return self.listed_stages() or BISECT_STAGES

    def validate(self) -> "CompareConfig":
        if self.a is None:
            raise OptionError("no OUT given: vitrt compare OUT [B]")
        if self.images < 1:
            raise OptionError(f"--images must be >= 1, got {self.images}")
        if self.b is not None and (self.bisect or self.against != "twin"):
            raise OptionError("--bisect and --against compare one OUT with its twin: drop B")
        if self.b is None and self.backend_b is not None:
            raise OptionError("--backend-b needs a second OUT B")
        if not (math.isfinite(self.max_drop) and 0 <= self.max_drop <= 100):
            raise OptionError(f"--max-drop must be a number of points in [0, 100], got {self.max_drop}")
        if (self.bisect_stages is not None or self.max_drop != 0.5) and not self.bisect:
            raise OptionError("--bisect-stages / --max-drop need --bisect")
        stages = self.listed_stages()
        unknown = [s for s in stages if s not in BISECT_STAGES]
        if unknown or (self.bisect_stages is not None and not stages):
            raise OptionError(f"--bisect-stages takes a comma-separated subset of {', '.join(BISECT_STAGES)}; got "
                              f"'{self.bisect_stages}'")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads must be >= 1, got {self.threads}")
        for path in (self.a, self.b):
            if path is not None:
                check_out(path)
        check_data_source("--data", self.data)
        return self


DIGITS_REFERENCE = "digits_reference"  # the shipped digits reference model (vitrt.calib.reference)
SENSITIVITY_PRECISIONS = ("int8", "fp8", "int4w")


@dataclass(frozen=True)
class SensitivityConfig:
    model: str | None = option(None, f"a timm model name, {DIGITS_REFERENCE} (the shipped digits reference) or a "
                               "compiled OUT with a twin record (--keep-twin: the twin its quantization stage met)",
                               positional=True, metavar="MODEL")
    checkpoint: Path | None = option(None, "with a timm name: a state dict to load (weights_only)", type=Path,
                                     metavar="PATH")
    img_size: int | None = option(None, "with a timm name: input image size (default: the model's)", type=int,
                                  metavar="N")
    precision: str = option("int8", "the precision each layer is quantized to", choices=SENSITIVITY_PRECISIONS)
    quantize_attention: bool = option(False, "also score the attention matmuls (QKᵀ and ·V) where fused attention "
                                      "allows their quantization")
    data: str = option("synthetic", "images scored on: digits (its test split, with labels: top-1 too), synthetic "
                       "or an ImageFolder PATH", metavar="digits|synthetic|PATH")
    images: int = option(256, "number of images scored on", type=int, metavar="N")
    split: str | None = option(None, "with --data digits: the split scored on (default test; train keeps the test "
                               "images out of a ranking that later compiles are judged on)", choices=("train", "test"))
    calib_data: str | None = option(None, "calibration images (default: --data; digits calibrates on its train split)",
                                    metavar="DATA")
    calib_method: str = option("max", "activation calibrator", choices=("max", "percentile", "entropy", "mse"))
    calib_images: int = option(512, "calibration images", type=int, metavar="N")
    float_one: bool = option(False, "also score every layer kept float with all the others quantized")
    out: Path | None = option(None, "report directory (sensitivity.json, sensitivity.md, sensitivity.png)",
                              flag="-o/--out", type=Path, metavar="DIR")
    force: bool = option(False, "replace a non-empty report directory that vitrt wrote")
    seed: int = option(0, "seed of synthetic images and ImageFolder subsets", type=int, metavar="N")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "SensitivityConfig":
        if not self.model:
            raise OptionError(f"no model given: vitrt sensitivity MODEL -o DIR (a timm name, {DIGITS_REFERENCE} "
                              "or a compiled OUT with --keep-twin)")
        if self.out is None:
            raise OptionError("no report directory: pass -o DIR")
        if self.images < 1 or self.calib_images < 1:
            raise OptionError(f"--images and --calib-images must be >= 1, got {self.images} and {self.calib_images}")
        if self.precision == "int4w" and self.quantize_attention:
            raise OptionError("int4w is weight-only: --quantize-attention applies to int8 and fp8")
        if (self.checkpoint is not None or self.img_size is not None) and (
                is_digits_model(self.model) or Path(self.model).is_dir()):
            raise OptionError("--checkpoint / --img-size apply to a timm model name")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise OptionError(f"--checkpoint '{self.checkpoint}' does not exist or is not a file")
        check_data_source("--data", self.data)
        if self.split is not None and self.data != "digits":
            raise OptionError(f"--split chooses a split of --data digits; {self.data} has none: drop --split")
        if self.calib_data is not None:
            check_data_source("--calib-data", self.calib_data)
        return self

    @property
    def scoring_split(self) -> str:
        return self.split or "test"
