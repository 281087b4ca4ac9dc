"""DC-ViT (Zhang et al., CVPR 2024): dense few-shot compression as a planning mode of the pruning transform.

A compressed block loses its whole attention branch and keeps part of its MLP (the "Attn + (1−m)·FFN" of the
paper's Table 8) — in pruning terms ``heads = 0`` and a reduced MLP, so the plan is an ordinary
:class:`~vitrt.transforms.prune.plan.PruningPlan` and the graph pass and twin transform are pruning's own.

    (a) structure       the target fraction of the MACs fixes how many blocks are compressed (n) and the MLP
                        channels they keep: n is the count whose common MLP fraction comes closest to the
                        preferred one (``--dcvit-mlp``, 0.5), the fraction is then solved so the model lands on
                        the target (MLP widths in multiples of 16, never above the target)
                                                        :func:`~vitrt.transforms.prune.dcvit_structure.structure`
    (b) metric set      synthetic images (vitrt.calib.synthesis), given as ``--dcvit-metric`` or grown here
    (c) recoverability  every block compressed alone (preferred fraction) from the dense model, fine-tuned
                        briefly on the few-shot images, scored by the metric loss on the metric set; the n
                        lowest are compressed, most recoverable first                    :func:`recoverability`
    (d) progressive     one block at a time: the MLP channels kept are the most important ones (the pruning
                        importance, NViT eq. 6, on the few-shot images), then feature mimicking — MSE between
                        the compressed and the dense model's output of the block after the last compressed one
                        — updating only the stem and the blocks up to that one              :func:`compress`
    refit (vitrt's)     with ``--dcvit-refit``, before the fine-tuning, the kept channels' output layer (fc2
                        and its bias) is re-solved by ridge least squares so that the reduced MLP stands in for
                        the whole block it replaces, attention included, on the few-shot images
                                                                                        :func:`refit_mlp`

Fine-tuning runs through the shared trainer with a FeatureMimic objective on a prefix of the model
(:class:`MimicPrefix`); the few-shot images are used without labels. ``--dcvit-whole-blocks`` is the baseline
that removes whole blocks (``heads = 0, mlp = 0``) with the same selection and fine-tuning; ``--dcvit-mlp-only``
(``Settings.mlp_only``, an ablation) removes whole MLPs and keeps every attention module — the part of a block DC-ViT
keeps goes, the part it removes stays.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace

import torch

from vitrt.calib.data import in_memory
from vitrt.calib.digits import ImageSet
from vitrt.calib.evaluate import accuracy
from vitrt.calib.losses import FeatureMimic, Objective
from vitrt.calib.synthesis import MetricSet, SynthesisConfig, invert_images, pixel_bounds
from vitrt.calib.trainer import TrainConfig, train
from vitrt.compiler.errors import OptionError
from vitrt.compiler.progress import QUIET
from vitrt.compiler.weights import parameter_state
from vitrt.transforms.prune.dcvit_structure import (FINETUNE_LR, Settings, candidate_width, check_feature,
                                                    settings_from, structure)
from vitrt.transforms.prune.gates import hessian_importance, magnitude_importance
from vitrt.transforms.prune.plan import BlockPlan, PruningPlan
from vitrt.transforms.prune.twin import apply_plan, prune_twin

# Feature-mimicking fine-tuning on the few-shot images (AdamW, cosine; random shifts as augmentation: with a
# hundred images the student would otherwise fit the exact pixels).
FINETUNE = TrainConfig(epochs=0, lr=FINETUNE_LR, batch_size=32, weight_decay=1e-4, augment=True)
IMPORTANCE_BATCH = 32


# --- fine-tuning a prefix -----------------------------------------------------------------------------------
class MimicPrefix(torch.nn.Module):
    """The stem and ``blocks[:last + 1]`` of a twin, the parameters a fine-tuning step updates.

    ``forward_with_features`` gives the one feature a :class:`~vitrt.calib.losses.FeatureMimic` term compares
    (the logits are not computed): the output of block ``last`` (``feature="block"``, vitrt's default: only the
    prefix runs), or the normalised tokens of the whole model (``"final"``, the official code's ``pre_GAP``: the
    later blocks run and pass gradients back, but stay as they are)."""

    def __init__(self, twin, last: int, feature: str = "block"):
        super().__init__()
        check_feature(feature)
        self.twin, self.last, self.feature = twin, last, feature

    def forward_with_features(self, images: torch.Tensor):
        x = self.twin.embed(images)
        final = self.feature == "final"
        for block in self.twin.blocks if final else self.twin.blocks[: self.last + 1]:
            x = block(x)
        return None, [self.twin.norm(x) if final else x]

    def trainable(self) -> list[torch.nn.Parameter]:
        """The stem (patch embedding, prefix tokens, position embedding) and the blocks up to ``last``."""
        twin = self.twin
        params = list(twin.patch_embed.parameters()) + [twin.cls_token, twin.pos_embed]
        if twin.dist_token is not None:
            params.append(twin.dist_token)
        for block in twin.blocks[: self.last + 1]:
            params += list(block.parameters())
        return params


def mimic(student, teacher, few_shot: ImageSet, last: int, epochs: int, seed: int, progress=QUIET,
          desc: str = "feature mimicking", lr: float = FINETUNE.lr, feature: str = "block") -> dict:
    """Fine-tune ``student`` in place: MSE to ``teacher``'s ``feature`` (:class:`MimicPrefix`), only the stem and
    blocks up to ``last`` updated."""
    if epochs <= 0:
        return {"epochs": 0}
    prefix = MimicPrefix(student, last, feature)
    objective = Objective(FeatureMimic(), teacher=MimicPrefix(teacher, last, feature))
    config = replace(FINETUNE, epochs=epochs, seed=seed, lr=lr)
    trained = {id(p) for p in prefix.trainable()}
    # the later blocks and the norm pass gradients back under "final" but are not trained: without this their
    # weight gradients would be computed (and all-reduced under DDP) for nothing and pile up, never zeroed
    frozen = [p for p in student.parameters() if p.requires_grad and id(p) not in trained]
    for p in frozen:
        p.requires_grad_(False)
    try:
        result = train(prefix, few_shot, objective, config, params=prefix.trainable(), progress=progress, desc=desc)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {"epochs": epochs, "lr": lr, "feature": feature, "last_updated_block": last,
            "mse_first": result.history[0]["total"], "mse_last": result.history[-1]["total"], "seconds": result.seconds}


# --- compressing one block -----------------------------------------------------------------------------------
def mlp_scores(student, few_shot: ImageSet, teacher, method: str, seed: int) -> dict[int, torch.Tensor]:
    """Importance of every MLP channel of every block that still has its attention (block -> scores)."""
    if method == "magnitude":
        scores = magnitude_importance(student)
    else:
        batch = min(IMPORTANCE_BATCH, len(few_shot))
        scores = hessian_importance(student, few_shot, teacher=teacher, batch_size=batch,
                                    batches=math.ceil(len(few_shot) / batch), seed=seed)
    return {i: scores[f"blocks.{i}.mlp"] for i, b in enumerate(student.spec.blocks) if b.heads and b.mlp}


def compress_block(student, plan: PruningPlan, index: int, width: int, scores: torch.Tensor | None,
                   refit_on: ImageSet | None = None, keep_attention: bool = False):
    """(new student, new plan) with block ``index``'s attention removed (kept with ``keep_attention``) and its
    ``width`` best MLP channels kept.

    ``plan`` indexes the original model; the student is sliced from its own (fine-tuned) weights. With
    ``refit_on`` the kept channels' output layer is then re-solved on those images (:func:`refit_mlp`)."""
    positions = tuple(sorted(torch.argsort(scores, descending=True)[:width].tolist())) if width else ()

    def reduced(block: BlockPlan, mlp: tuple[int, ...]) -> BlockPlan:
        return replace(block, mlp=mlp) if keep_attention else BlockPlan((), (), (), mlp)

    local = PruningPlan.keep_all(student.spec)
    blocks = list(local.blocks)
    blocks[index] = reduced(blocks[index], positions)
    new_student = prune_twin(student, replace(local, blocks=tuple(blocks)).validate())
    if width and refit_on is not None:
        refit_mlp(student, new_student, index, refit_on)
    original = list(plan.blocks)
    original[index] = reduced(plan.blocks[index], tuple(plan.blocks[index].mlp[p] for p in positions))
    return new_student, replace(plan, blocks=tuple(original)).validate()


REFIT_BATCH = 32  # images per pass while the least-squares statistics accumulate (bounded memory on a ViT-B)
REFIT_RIDGE = 1e-3  # Tikhonov term, relative to the Gram matrix's mean diagonal: kept channels can be collinear


@torch.no_grad()
def refit_mlp(original, compressed, index: int, images: ImageSet) -> None:
    """Re-solve ``compressed.blocks[index].mlp.fc2`` (weight and bias) in place so the block's residual branch
    reproduces ``original.blocks[index]``'s — attention plus MLP — on the tokens ``images`` bring to the block.

    The block's input is the same in both models (only block ``index`` differs), so this is one ridge
    regression from the kept hidden activations to the original block's output minus its input, accumulated
    over batches in float64. Removing the attention leaves nothing to carry its part of the residual; the
    least-squares output layer lets the kept MLP channels stand in for it before any fine-tuning."""
    block = compressed.blocks[index]
    width = block.mlp.fc1.out_features
    gram = torch.zeros(width + 1, width + 1, dtype=torch.float64)
    cross = torch.zeros(width + 1, compressed.spec.emb, dtype=torch.float64)
    for batch in images.images.split(REFIT_BATCH):
        x = original.embed(batch)
        for earlier in original.blocks[:index]:
            x = earlier(x)
        target = (original.blocks[index](x) - x).flatten(0, 1).double()
        hidden = block.mlp.act(block.mlp.fc1(block.norm2(x))).flatten(0, 1).double()
        hidden = torch.cat([hidden, hidden.new_ones(len(hidden), 1)], dim=1)  # the last column fits the bias
        gram += hidden.T @ hidden
        cross += hidden.T @ target
    gram += REFIT_RIDGE * gram.diagonal().mean() * torch.eye(width + 1, dtype=gram.dtype)
    solution = torch.linalg.solve(gram, cross)
    block.mlp.fc2.weight.copy_(solution[:-1].T)
    block.mlp.fc2.bias.copy_(solution[-1])


def recoverability(twin, teacher, few_shot: ImageSet, metric: MetricSet, settings: Settings,
                   progress=QUIET) -> list[dict]:
    """(c): per block, the metric loss after compressing it alone (to :func:`candidate_width`) from the dense
    model and fine-tuning briefly; sorted, most recoverable (lowest loss) first.

    Never with the refit: a few epochs of fine-tuning from the refitted start move the result either way (digits,
    6 seeds, 5 epochs: test KL 0.8–1.7× that right after the refit), which would reorder the blocks by noise; the
    paper's ranking also keeps refit and plain runs on the same blocks."""
    width = candidate_width(twin.spec, settings)
    scores = mlp_scores(twin, few_shot, teacher, settings.importance, settings.seed) if width else None
    base = PruningPlan.keep_all(twin.spec)
    out = []
    with progress.bar(twin.spec.depth, "recoverability of each block") as bar:
        for index in range(twin.spec.depth):
            student, _ = compress_block(twin, base, index, width, scores[index] if width else None,
                                        keep_attention=settings.mlp_only)
            last = min(index + 1, twin.spec.depth - 1)
            mimic(student, teacher, few_shot, last, settings.score_epochs, settings.seed)
            out.append({"block": index, "metric_loss": metric.evaluate(student)["loss"]})
            bar.update(1)
    return sorted(out, key=lambda r: (r["metric_loss"], r["block"]))


def compress(twin, teacher, few_shot: ImageSet, metric: MetricSet, settings: Settings, order: list[int],
             progress=QUIET) -> tuple[PruningPlan, dict]:
    """(a) + (d): compress the first blocks of ``order`` progressively; returns the plan (with the fine-tuned
    weights) and a record of every step. ``twin`` is not modified."""
    shape = structure(twin.spec, settings)
    if shape.blocks > len(order):
        raise OptionError(f"the target needs {shape.blocks} compressed blocks but only {len(order)} are candidates")
    student = copy.deepcopy(twin).eval()
    plan = PruningPlan.keep_all(twin.spec)
    steps, done = [], []
    for step, (index, width) in enumerate(zip(order, shape.mlp)):
        start = time.perf_counter()
        scores = mlp_scores(student, few_shot, teacher, settings.importance, settings.seed + step)[index] \
            if width else None
        student, plan = compress_block(student, plan, index, width, scores, few_shot if settings.refit else None,
                                       keep_attention=settings.mlp_only)
        done.append(index)
        last = min(max(done) + 1, twin.spec.depth - 1)
        before = metric.evaluate(student)["loss"]
        tuned = mimic(student, teacher, few_shot, last, settings.epochs, settings.seed + step, progress,
                      desc=f"DC-ViT step {step + 1}/{shape.blocks}: block {index}", lr=settings.lr,
                      feature=settings.feature)
        after = metric.evaluate(student)
        steps.append({"block": index, "mlp": width, "metric_loss_compressed": before,
                      "metric_loss_finetuned": after["loss"], "metric_top1_finetuned": after["top1"],
                      "finetune": tuned, "seconds": round(time.perf_counter() - start, 2)})
        removed = ("MLP removed, attention kept" if settings.mlp_only else
                   "whole block removed" if not width else f"attention removed, MLP {width}")
        tuning = f"-> {after['loss']:.5f} after fine-tuning (blocks 0..{last} updated)" if settings.epochs \
            else "(no fine-tuning)"
        progress.log(f"DC-ViT: block {index} -> {removed}; metric loss {before:.5f} {tuning}")
    info = {"blocks": list(order[: shape.blocks]), "mlp": list(shape.mlp), "macs_fraction": shape.macs_fraction,
            "steps": steps}
    return plan.with_weights(parameter_state(student)), info


# --- the planning mode ---------------------------------------------------------------------------------------
FEW_SHOT = 100
METRIC_IMAGES, METRIC_ITERATIONS = 50, 2000  # grown during a compile without --dcvit-metric (DC-ViT's settings)
# --dcvit-metric reads at most this many images: a metric set is scored ~2 x depth times per compression, and a
# few hundred images rank blocks as well as a training split (DC-ViT's synthetic sets are 50-500 images)
METRIC_LIMIT = 256


def metric_set(ctx, options) -> tuple[MetricSet, dict]:
    """``--dcvit-metric`` (with the dense model's argmax where it has no labels), or a set synthesised now."""
    if options.dcvit_metric is not None:
        source = ctx.data(options.dcvit_metric, limit=METRIC_LIMIT)
        metric = MetricSet.of(in_memory(source, "--dcvit-metric data"), ctx.teacher)
        return metric, {"source": options.dcvit_metric, "images": len(metric)}
    config = SynthesisConfig(images=METRIC_IMAGES, iterations=METRIC_ITERATIONS, seed=ctx.seed)
    prep = ctx.preprocessing or {}
    # clamped to the pixel range where the model's normalisation is known (a timm model, the digits reference)
    bounds = pixel_bounds(prep["mean"], prep["std"], ctx.teacher.spec.in_chans) if "mean" in prep else None
    with ctx.progress.step(f"synthesising a {METRIC_IMAGES}-image metric set ({config.iterations} iterations; "
                           "save one with vitrt synth and pass --dcvit-metric synth:SET to reuse it)"):
        images, cost = invert_images(ctx.teacher, config, bounds=bounds, progress=ctx.progress)
    return MetricSet.of(images, ctx.teacher), {"source": "synthesised during the compile", **cost}


def plan(twin, ctx, options) -> PruningPlan:
    """The DC-ViT plan for ``twin`` (never modified), with its fine-tuned weights and a record in ``meta``."""
    settings = settings_from(options, ctx.seed)
    shape = structure(twin.spec, settings)  # refuse an unreachable target before any work
    count = options.few_shot or FEW_SHOT
    few_shot = ImageSet(in_memory(ctx.data(options.data, limit=count), "--data source").images, None)
    notes = []
    if len(few_shot) < count:
        notes.append(f"DC-ViT: {count} few-shot images asked for, --data {options.data} holds {len(few_shot)}: "
                     f"fine-tuning on those {len(few_shot)}")
    if not (settings.whole_blocks or settings.mlp_only) and 0 in shape.mlp:
        notes.append(f"DC-ViT: at {settings.macs:g} of the MACs {shape.mlp.count(0)} of the {shape.blocks} compressed "
                     "blocks keep no MLP channel: those blocks are removed whole")
    if not (settings.whole_blocks or settings.mlp_only) and set(shape.mlp) == {twin.spec.blocks[0].mlp} \
            and shape.macs_fraction < settings.macs - 1e-6:
        notes.append(f"DC-ViT: a block's attention costs more MACs than its MLP here, so the nearest structure at or "
                     f"below {settings.macs:g} of the MACs removes attention from {shape.blocks} blocks and keeps "
                     f"their whole MLP: {shape.macs_fraction:.3f} of the MACs")
    metric, metric_info = metric_set(ctx, options)
    start = time.perf_counter()
    with ctx.progress.step(f"DC-ViT: recoverability of {twin.spec.depth} blocks on {len(few_shot)} few-shot images"):
        ranked = recoverability(twin, ctx.teacher, few_shot, metric, settings, ctx.progress)
    with ctx.progress.step(f"DC-ViT: compressing {shape.blocks} block(s) to {shape.macs_fraction:.3f} of the MACs"):
        found, info = compress(twin, ctx.teacher, few_shot, metric, settings, [r["block"] for r in ranked],
                               ctx.progress)
    student = apply_plan(twin, found)
    info.update({"target_macs": settings.macs, "preferred_mlp": settings.mlp, "whole_blocks": settings.whole_blocks,
                 "mlp_only": settings.mlp_only, "refit": settings.refit,
                 "few_shot": {"data": options.data, "images": len(few_shot), "requested": count},
                 "metric_set": metric_info,
                 "recoverability": ranked, "epochs": settings.epochs, "lr": settings.lr, "feature": settings.feature,
                 "score_epochs": settings.score_epochs,
                 "importance": settings.importance, "seconds": round(time.perf_counter() - start, 2),
                 "metric": {"dense": metric.evaluate(twin), "compressed": metric.evaluate(student)}})
    if options.data == "digits":  # real accuracy beside the data-free estimate where a labelled test split exists
        test = ctx.data("digits", split="test")
        info["accuracy"] = {"data": "digits:test", "images": len(test), "top1_dense": round(accuracy(twin, test), 5),
                            "top1_compressed": round(accuracy(student, test), 5)}
    return found.with_meta({"source": "dcvit", "dcvit": info, "notes": notes})
