"""The accuracy-debugging commands' options (importable without torch, so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.options import option
from vitrt.pipeline.config import check_data_source

AGAINST = ("twin", "float")
PROBE_BACKENDS = ("ort",)  # backends that can return a graph's intermediate tensors (vitrt.debug.probes)


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
    backend: str | None = option(None, "backend running OUT (A) (default: ort)", choices=PROBE_BACKENDS)
    backend_b: str | None = option(None, "backend running B (default: ort)", choices=PROBE_BACKENDS)
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    bisect: bool = option(False, "with one OUT: find the fewest quantized / 2:4 / merging layers whose reversion "
                          "brings top-1 within --max-drop of the uncompressed graph, by halving")
    max_drop: float = option(0.5, "with --bisect: allowed top-1 drop in points (percent) against the graph with "
                             "every compressed layer reverted", type=float, metavar="POINTS")
    bisect_stages: str | None = option(None, "with --bisect: comma-separated stages whose layers may be reverted "
                                       "(quant, sparsity, tome; default: all the compile ran)", metavar="STAGES")
    out: Path | None = option(None, "report directory (default OUT/compare, or B/compare with two OUTs)",
                              flag="-o/--out", type=Path, metavar="DIR")
    force: bool = option(False, "replace a non-empty report directory")
    seed: int = option(0, "seed of synthetic images and ImageFolder subsets", type=int, metavar="N")
    quiet: bool = option(False, "no progress output")

    @property
    def report_dir(self) -> Path:
        return self.out or Path(self.b or self.a) / "compare"

    def validate(self) -> "CompareConfig":
        if self.a is None:
            raise OptionError("no OUT given: vitrt compare OUT [B]")
        if self.images < 1:
            raise OptionError(f"--images must be >= 1, got {self.images}")
        if self.b is not None and (self.bisect or self.against != "twin"):
            raise OptionError("--bisect and --against compare one OUT with its twin: drop B")
        if self.b is None and self.backend_b is not None:
            raise OptionError("--backend-b needs a second OUT B")
        if self.max_drop < 0:
            raise OptionError(f"--max-drop must be >= 0, got {self.max_drop}")
        if (self.bisect_stages is not None or self.max_drop != 0.5) and not self.bisect:
            raise OptionError("--bisect-stages / --max-drop need --bisect")
        for path in (self.a, self.b):
            if path is not None:
                check_out(path)
        check_data_source("--data", self.data)
        return self
