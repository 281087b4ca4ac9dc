"""The settings of a synthetic metric set (``vitrt synth``'s flags), apart from :mod:`vitrt.calib.synthesis` so
that the command line parses and refuses options without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import option

DIGITS_REFERENCE = "digits-reference"  # the shipped digits reference ViT, by name
SYNTH_PREFIX = "synth:"  # synth:SET names a synthetic metric set directory wherever vitrt takes data
SET_METADATA = "metadata.json"  # what makes a directory a synthetic metric set
PAPER_JITTER, PAPER_RESOLUTION = 30, 224  # DeepInversion: 30 pixels at 224; scaled with the image size


@dataclass(frozen=True)
class SynthesisConfig:
    """How a synthetic metric set is grown (the flags of ``vitrt synth``)."""

    images: int = option(50, "number of synthetic images (default 50)", type=int, metavar="N")
    iterations: int = option(2000, "optimisation steps per batch (default 2000, DC-ViT's)", flag="--iters", type=int,
                             metavar="T")
    batch_size: int = option(50, "images optimised together (default 50, DC-ViT's)", flag="--batch", type=int,
                             metavar="B")
    lr: float = option(0.25, "Adam learning rate on the pixels (default 0.25)", type=float, metavar="LR")
    tv: float = option(0.05, "weight of the total-variation prior (default 0.05)", type=float, metavar="W")
    l2: float = option(0.01, "weight of the L2 prior (default 0.01)", type=float, metavar="W")
    jitter: int | None = option(None, "random roll of up to J pixels per step (default: 30 at 224, scaled)",
                                type=int, metavar="J")
    no_flip: bool = option(False, "no random horizontal flips during the optimisation")
    feature_weight: float = option(0.01, "weight of the per-block feature-statistics term (with --feature-stats; "
                                   "default 0.01)", type=float, metavar="W")
    seed: int = option(0, "seed of the noise, the labels and the jitter (default 0)", type=int, metavar="N")

    def validate(self) -> "SynthesisConfig":
        for name in ("lr", "tv", "l2", "feature_weight"):
            if not math.isfinite(getattr(self, name)):
                raise OptionError(f"{flag_of(name)} must be a finite number, got {getattr(self, name)}")
        if self.images < 1 or self.iterations < 1 or self.batch_size < 1:
            raise OptionError("--images, --iters and --batch must be >= 1")
        if self.lr <= 0 or self.tv < 0 or self.l2 < 0 or self.feature_weight < 0:
            raise OptionError("--lr must be > 0 and --tv, --l2, --feature-weight >= 0")
        if self.jitter is not None and self.jitter < 0:
            raise OptionError(f"--jitter must be >= 0, got {self.jitter}")
        return self

    def differences(self, recorded: dict) -> list[str]:
        """The settings in which ``recorded`` (a set's metadata ``config``) differs from these, as flags."""
        mine = {f.name: getattr(self, f.name) for f in fields(self)}
        return [f"{flag_of(name)} {recorded.get(name)} (now {value})" for name, value in mine.items()
                if recorded.get(name) != value]

    def jitter_for(self, img_size: int) -> int:
        if self.jitter is not None:
            return self.jitter
        return max(1, round(PAPER_JITTER * img_size / PAPER_RESOLUTION))


def flag_of(name: str) -> str:
    """The command-line flag of a :class:`SynthesisConfig` field (``iterations`` -> ``--iters``)."""
    field = SynthesisConfig.__dataclass_fields__[name]
    return field.metadata.get("flag") or "--" + name.replace("_", "-")
