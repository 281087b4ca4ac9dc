"""DC-ViT's structure rule, apart from the compression itself so that an unreachable target is refused from the
model's spec alone — before any weights are loaded (``PruneConfig.check``) — without importing torch.

The target fraction of the MACs fixes how many blocks are compressed (n) and the MLP channels they keep: n is the
count whose common MLP fraction comes closest to the preferred one (``--dcvit-mlp``, 0.5), the fraction is then
solved so the model lands on the target (MLP widths in multiples of 16, never above the target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from vitrt.compiler.cost import block_flops, vit_flops
from vitrt.compiler.errors import OptionError, UnsupportedModelError
from vitrt.transforms.prune.plan import CHANNEL_MULTIPLE


MIMIC_FEATURES = ("block", "final")  # what fine-tuning mimics (vitrt.transforms.prune.dcvit.MimicPrefix)
# Peak learning rate of the feature-mimicking fine-tuning (AdamW): vitrt's default, and the rate every recoverability
# ranking uses. The official code fine-tunes at 3e-5; which suits whom: benchmarks/results/dcvit.md.
FINETUNE_LR = 2e-4


def check_feature(feature: str) -> None:
    """Refuse (one line) a mimicked feature that is not one of :data:`MIMIC_FEATURES`."""
    if feature not in MIMIC_FEATURES:
        raise OptionError(f"the feature mimicked is one of {', '.join(MIMIC_FEATURES)}, got '{feature}'")


def check_finetune(lr: float, feature: str, lr_flag: str = "--dcvit-lr") -> None:
    """Refuse (one line) a learning rate outside (0, 1) — nan and inf included — or an unknown mimicked feature."""
    if not 0 < lr < 1:
        raise OptionError(f"{lr_flag} {lr:g} must be a learning rate in (0, 1), e.g. 3e-5")
    check_feature(feature)


@dataclass(frozen=True)
class Settings:
    """How one DC-ViT compression runs (the ``--dcvit-*`` options, resolved)."""

    macs: float  # target fraction of the dense model's MACs
    mlp: float = 0.5  # preferred fraction of the MLP a compressed block keeps
    whole_blocks: bool = False  # baseline: remove whole blocks
    mlp_only: bool = False  # ablation: remove whole MLPs, keep every attention module
    epochs: int = 50  # fine-tuning epochs after each compressed block
    score_epochs: int = 10  # fine-tuning epochs before a candidate block is scored
    importance: str = "hessian"  # MLP channel importance: hessian (NViT eq. 6) or magnitude
    refit: bool = False  # re-solve each compressed block's fc2 by least squares before fine-tuning
    lr: float = FINETUNE_LR  # peak learning rate of the fine-tuning after each compressed block (not the ranking's)
    feature: str = "block"  # what that fine-tuning mimics: block after the last compressed, or "final" tokens
    seed: int = 0

    def __post_init__(self):
        check_finetune(self.lr, self.feature)


@dataclass(frozen=True)
class Structure:
    """What the target asks for: the MLP width of each of the ``len(mlp)`` compressed blocks."""

    mlp: tuple[int, ...]  # kept MLP channels, widest first (the most recoverable block gets the widest)
    macs_fraction: float  # the compressed model's MACs / the dense model's

    @property
    def blocks(self) -> int:
        return len(self.mlp)


def compressible(spec) -> bool:
    """Whether DC-ViT can compress ``spec``: its blocks are all alike and complete (attention and MLP)."""
    first = spec.blocks[0]
    return all(b == first for b in spec.blocks) and bool(first.heads) and bool(first.mlp)


def uniform_block(spec):
    if not compressible(spec):
        raise UnsupportedModelError("DC-ViT compresses a model whose blocks are all alike and complete (attention and "
                                    "MLP); this model's blocks differ — put --dcvit-macs first, on the unpruned model")
    return spec.blocks[0]


def structure(spec, settings: Settings) -> Structure:
    """(a): the number of compressed blocks and their MLP widths for ``settings.macs`` of the MACs."""
    block = uniform_block(spec)
    dense = vit_flops(spec)
    attention = block_flops(spec.emb, block) - block_flops(spec.emb, replace(block, heads=0))
    mlp = block_flops(spec.emb, block) - attention
    per_channel = mlp / block.mlp
    saving = (1 - settings.macs) * dense
    most = spec.depth * (attention + mlp)
    if saving > most + 1e-9:
        raise OptionError(f"--dcvit-macs {settings.macs:g} is below what removing every block reaches "
                          f"({1 - most / dense:.3f} of the MACs)")
    if settings.whole_blocks:
        n = math.ceil(saving / (attention + mlp) - 1e-9)
        return Structure((0,) * n, 1 - n * (attention + mlp) / dense)
    if settings.mlp_only:
        n = math.ceil(saving / mlp - 1e-9)
        if n > spec.depth:
            raise OptionError(f"--dcvit-macs {settings.macs:g} is below what removing every MLP reaches "
                              f"({1 - spec.depth * mlp / dense:.3f} of the MACs)")
        return Structure((0,) * n, 1 - n * mlp / dense)
    if saving < attention - 1e-9:
        raise OptionError(f"--dcvit-macs {settings.macs:g} keeps more than removing one attention module allows: "
                          f"the largest compressed model has {1 - attention / dense:.3f} of the MACs")
    fewest = math.ceil(saving / (attention + mlp) - 1e-9)
    most_blocks = min(spec.depth, math.floor(saving / attention + 1e-9))
    preferred = saving / (attention + (1 - settings.mlp) * mlp)
    # Where attention outweighs the MLP (many tokens, a narrow MLP), `fewest` attention modules alone can remove
    # more than the saving (most_blocks < fewest): then `fewest` blocks lose attention and keep their whole MLP,
    # the nearest structure below the target (negative MLP widths otherwise).
    n = max(fewest, min(round(preferred), most_blocks))
    removed = max(0, math.ceil((saving - n * attention) / per_channel - 1e-9))  # MLP channels to remove, all blocks
    kept_total = n * block.mlp - removed
    base = (kept_total // n) // CHANNEL_MULTIPLE * CHANNEL_MULTIPLE
    widths = [base] * n
    spare = kept_total - base * n
    for i in range(n):  # hand out the rest in aligned steps, never above the target
        if spare >= CHANNEL_MULTIPLE and widths[i] + CHANNEL_MULTIPLE <= block.mlp:
            widths[i] += CHANNEL_MULTIPLE
            spare -= CHANNEL_MULTIPLE
    achieved = dense - n * attention - (n * block.mlp - sum(widths)) * per_channel
    return Structure(tuple(widths), achieved / dense)


def candidate_width(spec, settings: Settings) -> int:
    """The MLP width a candidate block keeps while its recoverability is measured: the preferred fraction
    (aligned), 0 for whole blocks or MLPs. It does not depend on the target, so one ranking serves every size."""
    if settings.whole_blocks or settings.mlp_only:
        return 0
    return round(settings.mlp * uniform_block(spec).mlp / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE


def candidate_kind(spec, settings: Settings) -> str:
    """What a candidate block keeps while it is ranked — ``attention`` (the MLP-only ablation) or ``mlpW`` (its
    :func:`candidate_width`): settings of the same kind share one recoverability ranking."""
    return "attention" if settings.mlp_only else f"mlp{candidate_width(spec, settings)}"


def settings_from(options, seed: int) -> Settings:
    """The :class:`Settings` a :class:`~vitrt.transforms.prune.config.PruneConfig`'s DC-ViT options resolve to."""
    defaults = Settings(macs=options.dcvit_macs)
    return replace(defaults, mlp=defaults.mlp if options.dcvit_mlp is None else options.dcvit_mlp,
                   whole_blocks=options.dcvit_whole_blocks, mlp_only=options.dcvit_mlp_only,
                   refit=options.dcvit_refit, lr=defaults.lr if options.dcvit_lr is None else options.dcvit_lr,
                   importance=options.importance, seed=seed,
                   epochs=defaults.epochs if options.dcvit_epochs is None else options.dcvit_epochs,
                   score_epochs=defaults.score_epochs if options.dcvit_score_epochs is None
                   else options.dcvit_score_epochs)
