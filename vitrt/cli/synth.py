"""``vitrt synth MODEL -o SET``: grow a synthetic metric set by model inversion (resumable; see
:mod:`vitrt.calib.synthesis`). ``MODEL`` is a timm model name (``--checkpoint`` / ``--pretrained`` for its
weights) or ``digits-reference``, the shipped digits reference ViT. Use the set anywhere vitrt takes data as
``synth:SET`` (``--calib-data``, ``--data``, ``--dcvit-metric``, ``--metric-set``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitrt.calib.synthesis_config import DIGITS_REFERENCE, SynthesisConfig
from vitrt.compiler.options import add_command, option, section

FEATURE_IMAGES = 256  # reference images of --feature-stats


@dataclass(frozen=True)
class SynthCommandConfig:
    model: str = option(None, f"timm model name, or {DIGITS_REFERENCE} / digits (the shipped digits reference ViT)",
                        positional=True, metavar="MODEL")
    out: Path | None = option(None, "the set's directory (an unfinished set made with the same settings is resumed)",
                              flag="-o/--out", type=Path, metavar="SET")
    checkpoint: Path | None = option(None, "state dict for the timm model (torch.load(weights_only=True))", type=Path,
                                     metavar="PATH")
    pretrained: bool = option(False, "download timm's pretrained weights (needs a reachable model hub)")
    img_size: int | None = option(None, "input image size of the timm model (default: its own)", type=int,
                                  metavar="N")
    feature_stats: str | None = option(None, "also match per-block feature statistics of these images (digits, "
                                       "an ImageFolder PATH or synth:SET; up to 256 are used)", metavar="DATA")
    force: bool = option(False, "start over when SET holds something else")
    quiet: bool = option(False, "no progress output")
    synthesis: SynthesisConfig = section(SynthesisConfig)


def run(config: SynthCommandConfig) -> int:
    from vitrt.calib.data import in_memory, load_data
    from vitrt.calib.synthesis import finished_batches, model_for_synthesis, synthesize
    from vitrt.compiler.errors import Interrupted, OptionError
    from vitrt.compiler.progress import progress_for

    if config.out is None:
        raise OptionError("no output directory: pass -o SET")
    if config.feature_stats == "synthetic":  # noise: the statistics to match would be those of N(0, 1) inputs
        raise OptionError("--feature-stats synthetic would match the statistics of noise: pass real images (digits, "
                          "an ImageFolder PATH) or synth:SET")
    synthesis = config.synthesis.validate()
    twin, mean, std, name = model_for_synthesis(config.model, checkpoint=config.checkpoint,
                                                pretrained=config.pretrained, img_size=config.img_size)
    reference = None
    if config.feature_stats is not None:
        reference = in_memory(load_data(config.feature_stats, twin.spec.img, limit=FEATURE_IMAGES, seed=synthesis.seed),
                              "--feature-stats data").images
    try:
        meta = synthesize(twin, config.out, synthesis, mean=mean, std=std, model=name, feature_reference=reference,
                          force=config.force, progress=progress_for(config))
    except KeyboardInterrupt:  # finished batches are on disk: say so, rather than the generic "nothing was written"
        raise Interrupted(f"{finished_batches(config.out)} finished batch(es) are kept in {config.out}: run the same "
                          "command again to resume") from None
    per_iteration = [b["seconds_per_iteration"] for b in meta["batches"].values()]
    print(f"{config.out}: {len(meta['labels'])} images, {meta['seconds']:.1f} s of inversion "
          f"({sum(per_iteration) / len(per_iteration):.3f} s per iteration of a batch of "
          f"<= {synthesis.batch_size}); the model's cross entropy on it {meta['model_metric']['ce']:.4f}; "
          f"use it as synth:{config.out}")
    return 0


def add_subcommands(sub) -> None:
    add_command(sub, "synth", SynthCommandConfig, run, "grow a synthetic metric set by model inversion (DC-ViT)",
                description="Grow a synthetic metric set from N(0, 1) noise with random labels by inverting MODEL "
                            "(cross entropy + total variation + L2 priors; resumable). Use it as synth:SET.")
