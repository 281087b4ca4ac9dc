"""The pruning planner: importance on the twin, the latency-aware search (or ReViT, or a given plan, or DC-ViT's
few-shot block compression), and optional fine-tuning of the pruned twin from the dense teacher — all before any
graph is touched.

``plan(twin, ctx, options) -> PruningPlan``; with ``--finetune-epochs`` the plan carries the fine-tuned
weights, which the graph pass and the twin transform both load.
"""

from __future__ import annotations

import functools

from vitrt.calib.losses import HardLabel, Objective, SoftLogits
from vitrt.calib.trainer import TrainConfig, train
from vitrt.compiler.cost import vit_flops, vit_params
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.weights import parameter_state
from vitrt.transforms.base import PlanContext
from vitrt.transforms.prune import dcvit
from vitrt.transforms.prune.config import PruneConfig
from vitrt.transforms.prune.gates import gate_sizes, hessian_importance, magnitude_importance
from vitrt.transforms.prune.plan import PruningPlan, alignment_violations
from vitrt.transforms.prune.search import SearchConfig, revit_plan, search
from vitrt.transforms.prune.twin import apply_plan

IMPORTANCE_BATCH = 16
SYNTHETIC_FINETUNE_IMAGES = 1024
# NViT sec. 3.3: L = α·L_full + L_CE, L_full = KL to the dense model's logits at temperature t.
FINETUNE = TrainConfig(epochs=0, lr=5e-4, batch_size=32, weight_decay=0.05, augment=True)
FINETUNE_ALPHA, FINETUNE_TEMPERATURE = 1.0, 2.0


def latency_model(ctx: PlanContext):
    """``spec -> ms`` from the compile's latency table (checked against the target's backend and batch)."""
    if ctx.lut is None:
        raise VitrtError("--prune needs a latency lookup table: pass --lut LUT (build one with: vitrt lut build "
                         "--backend ort --grid coarse --batch N -o LUT)")
    ctx.lut.check(backend=ctx.target.backend, batch=ctx.target.static_batch)
    # Outside the grid the table refuses to extrapolate; the search treats such a removal as unavailable.
    return functools.partial(ctx.lut.model_ms, clamp=False)


def importance_fn(twin, data, method: str, *, samples: int, seed: int, teacher):
    """``kept -> {group: scores}`` for the search: NViT's Hessian importance (eq. 6) or magnitude."""
    if method == "magnitude":
        return lambda kept: magnitude_importance(twin, kept)
    batch = min(IMPORTANCE_BATCH, samples)
    batches = max(1, samples // batch)
    return lambda kept: hessian_importance(twin, data, kept=kept, teacher=teacher, batch_size=batch,
                                           batches=batches, seed=seed)


def structure(twin, ctx: PlanContext, options: PruneConfig) -> PruningPlan:
    """The kept indices ``options`` ask for: a given plan, DC-ViT's compression (with its fine-tuned weights),
    ReViT's dims, or the latency-aware search."""
    spec, progress = twin.spec, ctx.progress
    if options.plan is not None:
        plan = PruningPlan.load(options.plan)
        plan.check_matches(spec)
        return plan.with_meta({"source": str(options.plan)})
    if options.dcvit_macs is not None:
        return dcvit.plan(twin, ctx, options)
    data = ctx.data(options.data, limit=options.samples)
    scores = importance_fn(twin, data, options.importance, samples=options.samples, seed=ctx.seed,
                           teacher=ctx.teacher)
    meta = {"importance": options.importance, "data": options.data, "seed": ctx.seed}
    if options.revit:
        with progress.step("ReViT: scoring importance for the Table 6 dims"):
            plan = revit_plan(spec, scores({k: list(range(v)) for k, v in gate_sizes(spec).items()}), meta)
        return plan.with_meta({"source": "revit"})
    latency = latency_model(ctx)
    with progress.step(f"latency-aware search to {options.fraction:g} of the dense latency "
                       f"({options.importance} importance)"):
        result = search(spec, scores, latency, SearchConfig(target=options.fraction, eta=options.eta), progress,
                        {**meta, "lut": str(ctx.lut_path)})
    progress.log(f"search: {result.steps} removals {result.removed}; LUT predicts {result.predicted_ms:.3f} ms "
                 f"(dense {result.dense_ms:.3f} ms)")
    return result.plan.with_meta({"source": "search", "dense_predicted_ms": result.dense_ms,
                                  "predicted_ms": result.predicted_ms, "removed_units": result.removed})


def finetune(student, ctx: PlanContext, options: PruneConfig, epochs: int) -> dict:
    """NViT sec. 3.3 on the shared trainer; trains ``student`` (a pruned copy) in place."""
    limit = None if options.data != "synthetic" else SYNTHETIC_FINETUNE_IMAGES
    objective = Objective(HardLabel(), SoftLogits(FINETUNE_ALPHA, FINETUNE_TEMPERATURE), teacher=ctx.teacher)
    config = TrainConfig(**{**vars(FINETUNE), "epochs": epochs, "seed": ctx.seed})
    result = train(student, ctx.data(options.data, limit=limit, labelled=True), objective, config,
                   progress=ctx.progress, desc="fine-tuning the pruned twin")
    return {"epochs": epochs, "lr": config.lr, "alpha": FINETUNE_ALPHA, "temperature": FINETUNE_TEMPERATURE,
            "loss_per_epoch": [h["total"] for h in result.history], "seconds": result.seconds}


def plan(twin, ctx: PlanContext, options: PruneConfig) -> PruningPlan:
    """The pruning plan for ``twin`` (never modified), with the search's predictions in ``meta``."""
    found = structure(twin, ctx, options)
    spec, pruned_spec = twin.spec, found.pruned_spec(twin.spec)
    meta = {"params": {"before": vit_params(spec), "after": vit_params(pruned_spec)},
            "flops": {"before": vit_flops(spec), "after": vit_flops(pruned_spec)}}
    if ctx.lut is not None and "predicted_ms" not in found.meta:
        latency = latency_model(ctx)
        meta["dense_predicted_ms"], meta["predicted_ms"] = latency(spec), latency(pruned_spec)
    if not options.finetune_epochs:
        return found.with_meta(meta)
    student = apply_plan(twin, found)  # a given fine-tuned plan continues from its own weights
    with ctx.progress.step(f"fine-tuning the pruned twin for {options.finetune_epochs} epoch(s)"):
        meta["finetune"] = finetune(student, ctx, options, options.finetune_epochs)
    return found.with_meta(meta).with_weights(parameter_state(student))


def report_fields(plan: PruningPlan) -> dict:
    """The manifest's ``pruning`` section."""
    meta = dict(plan.meta)
    section = {key: meta.pop(key) for key in ("source", "dense_predicted_ms", "predicted_ms", "removed_units",
                                              "params", "flops", "finetune", "dcvit") if key in meta}
    section.update({"summary": plan.summary(), "emb": len(plan.emb), "block_dims": plan.block_dims(),
                    "alignment_violations": alignment_violations(plan), "meta": meta})
    return section
