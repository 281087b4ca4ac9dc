"""The pruning stage of a compile: importance on the twin, latency-aware search, fine-tuning, report.

``pruning_stage(config, twin, progress)`` turns ``--prune`` / ``--prune-plan`` / ``--revit`` into one
:class:`~vitrt.passes.prune.PrunePass` carrying the plan (and, with ``--finetune-epochs``, the fine-tuned
pruned twin whose weights the graph gets). ``vitrt prune-plan`` runs the same search and writes only the
plan JSON.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

from ..compiler.config import CompileConfig, add_arguments, from_args
from ..compiler.cost import vit_flops, vit_params
from ..compiler.errors import VitrtError
from ..compiler.spec import ViTSpec
from ..compiler.twin import CanonicalViT
from .prune_plan import PruningPlan, alignment_violations
from .prune_search import SearchConfig, revit_plan, search

IMPORTANCE_BATCH = 16


# --- building blocks ------------------------------------------------------------------------------------
def load_latency_model(path: Path | None, batch: int | None = None, backend: str | None = None):
    """``spec -> ms`` from a latency lookup table file (vitrt.benchmarks.lut)."""
    if path is None:
        raise VitrtError("--prune needs a latency lookup table: pass --lut LUT (build one with: vitrt lut build "
                         "--backend ort --grid coarse --batch N -o LUT)")
    try:
        from ..benchmarks.lut import LatencyTable
    except ImportError:
        raise VitrtError("this vitrt has no latency lookup table module (vitrt.benchmarks.lut)") from None
    table = LatencyTable.load(path)
    table.check(backend=backend, batch=batch)
    # Outside the grid the table refuses to extrapolate; the search treats such a removal as unavailable.
    return functools.partial(table.model_ms, clamp=False)


def importance_fn(twin: CanonicalViT, data, method: str, *, samples: int, seed: int):
    """``kept -> {group: scores}`` for the search: NViT's Hessian importance (eq. 6) or magnitude."""
    from .gates import hessian_importance, magnitude_importance

    if method == "magnitude":
        return lambda kept: magnitude_importance(twin, kept)
    if method != "hessian":
        raise VitrtError(f"--importance {method!r}: choose hessian or magnitude")
    batch = min(IMPORTANCE_BATCH, samples)
    batches = max(1, samples // batch)
    teacher = _frozen_copy(twin)
    return lambda kept: hessian_importance(twin, data, kept=kept, teacher=teacher, batch_size=batch,
                                           batches=batches, seed=seed)


def _frozen_copy(twin: CanonicalViT) -> CanonicalViT:
    copy = CanonicalViT(twin.spec)
    copy.load_state_dict(twin.state_dict())
    return copy.eval().requires_grad_(False)


def plan_for(config: CompileConfig, twin: CanonicalViT, progress, data=None) -> tuple[PruningPlan, dict]:
    """The plan ``config`` asks for (loaded, ReViT or searched) and what the search predicted."""
    spec = twin.spec
    if config.prune_plan is not None:
        plan = PruningPlan.load(config.prune_plan)
        plan.check_matches(spec)
        return plan, {"source": str(config.prune_plan)}
    data = data if data is not None else _load(config, spec, twin)
    scores = importance_fn(twin, data, config.importance, samples=config.prune_samples, seed=config.seed)
    meta = {"importance": config.importance, "data": config.data, "seed": config.seed}
    if config.revit:
        with progress.step("ReViT: scoring importance for the Table 6 dims"):
            full = {k: list(range(v)) for k, v in _gate_sizes(spec).items()}
            plan = revit_plan(spec, scores(full), meta)
        return plan, {"source": "revit"}
    latency = load_latency_model(config.lut, None if config.dynamic_batch else config.batch, config.backend)
    with progress.step(f"latency-aware search to {config.prune:g} of the dense latency ({config.importance} importance)"):
        result = search(spec, scores, latency, SearchConfig(target=config.prune, eta=config.eta), progress,
                        {**meta, "lut": str(config.lut)})
    progress.log(f"search: {result.steps} removals {result.removed}; LUT predicts {result.predicted_ms:.3f} ms "
                 f"(dense {result.dense_ms:.3f} ms)")
    return result.plan, {"source": "search", "dense_predicted_ms": result.dense_ms,
                         "predicted_ms": result.predicted_ms, "removed_units": result.removed}


def _gate_sizes(spec: ViTSpec) -> dict:
    from .gates import gate_sizes

    return gate_sizes(spec)


def _load(config: CompileConfig, spec: ViTSpec, twin, split: str = "train", limit: int | None = -1):
    from .data import load_data

    limit = config.prune_samples if limit == -1 else limit
    return load_data(config.data, spec.img, split=split, limit=limit, seed=config.seed, model=None)


def finetune(student: CanonicalViT, teacher: torch.nn.Module, data, epochs: int, *, lr: float = 5e-4,
             batch_size: int = 32, alpha: float = 1.0, temperature: float = 2.0, seed: int = 0,
             progress=None) -> dict:
    """NViT sec. 3.3: L = α·L_full + L_CE, L_full = KL to the dense model's logits at ``temperature``;
    L_CE uses the labels (the dense model's argmax when the data has none). Trains ``student`` in place."""
    import math

    from .digits import augment
    from .distill import DistillWeights, distillation_loss

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    teacher = teacher.eval().requires_grad_(False)
    weights = DistillWeights(alpha=1.0, beta=alpha, gamma=0.0, temperature=temperature)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.05)
    total = epochs * math.ceil(len(data) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(total, 1))))
    bar = progress.bar(epochs, "fine-tuning the pruned twin") if progress is not None else None
    history = []
    for _ in range(epochs):
        student.train()
        losses = []
        for images, labels in data.batches(batch_size, shuffle=True, generator=generator):
            images = augment(images, generator)
            with torch.no_grad():
                target = teacher(images)
            loss, _parts = distillation_loss(student(images), target, labels, weights=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss))
        history.append(sum(losses) / len(losses))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    student.eval()
    return {"epochs": epochs, "lr": lr, "alpha": alpha, "temperature": temperature, "loss_per_epoch": history}


def plot_dims(plan: PruningPlan, path: Path, title: str = "") -> None:
    """Per-block dims before (outline) and after (bars), like NViT's Fig. 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("heads", "qk", "v", "mlp")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    blocks = range(plan.depth)
    after = plan.block_dims()
    for ax, kind in zip(axes, kinds):
        before = [getattr(b, kind) for b in plan.original_blocks]
        ax.bar(blocks, before, color="none", edgecolor="grey", label="dense")
        ax.bar(blocks, [d[kind] for d in after], color="tab:blue", alpha=0.8, label="pruned")
        ax.set_title(kind.upper() + (" per head" if kind in ("qk", "v") else ""))
        ax.set_xlabel("block")
        ax.set_xticks(list(blocks))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}  EMB {len(plan.emb)}/{plan.original_emb}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_dense(config: CompileConfig, twin: CanonicalViT, progress) -> dict:
    """Build and benchmark the dense model on the compile's backend (the speedup reference, same run)."""
    import onnx

    from ..compiler.backends import BuildOptions, get_backend
    from ..compiler.lower import lower
    from ..compiler.verify import verification_inputs

    backend = get_backend(config.backend)
    options = BuildOptions(threads=config.threads, timing_cache=config.timing_cache)
    batch = None if config.dynamic_batch else config.batch
    with tempfile.TemporaryDirectory(prefix="vitrt-dense-") as tmp, progress.step("benchmarking the dense model"):
        path = Path(tmp) / "model.onnx"
        onnx.save(lower(twin, batch=batch, opset=config.opset), str(path))
        backend.build(path, Path(tmp), options)
        runner = backend.load(Path(tmp) / backend.artifact_name, options)
        images = verification_inputs(twin.spec, config.batch, seed=config.seed)
        stats = runner.benchmark(images, warmup=config.bench_warmup, iterations=config.bench_iters)
    return stats.to_dict()


# --- the compile stage -----------------------------------------------------------------------------------
def pruning_stage(config: CompileConfig, twin: CanonicalViT, progress) -> list:
    """Passes for the pruning options of ``config`` (none when no pruning was asked for)."""
    from ..passes.prune import PrunePass, prune_twin

    if config.prune is None and config.prune_plan is None and not config.revit:
        return []
    spec = twin.spec
    plan, found = plan_for(config, twin, progress)
    pruned_spec = plan.pruned_spec(spec)
    report = {
        **found,
        "summary": plan.summary(),
        "emb": pruned_spec.emb,
        "block_dims": plan.block_dims(),
        "alignment_violations": alignment_violations(plan),
        "params": {"before": vit_params(spec), "after": vit_params(pruned_spec)},
        "flops": {"before": vit_flops(spec), "after": vit_flops(pruned_spec)},
        "meta": dict(plan.meta),
    }
    if config.lut is not None and "predicted_ms" not in report:
        latency = load_latency_model(config.lut, None if config.dynamic_batch else config.batch, config.backend)
        report["dense_predicted_ms"], report["predicted_ms"] = latency(spec), latency(pruned_spec)
    weights_from = None
    if config.finetune_epochs:
        student = prune_twin(twin, plan)
        train = _load(config, spec, twin, limit=None if config.data != "synthetic" else 1024)
        with progress.step(f"fine-tuning the pruned twin for {config.finetune_epochs} epoch(s)"):
            report["finetune"] = finetune(student, _frozen_copy(twin), train, config.finetune_epochs, seed=config.seed,
                                          progress=progress)
        weights_from = student
    if config.bench:
        report["dense_latency"] = measure_dense(config, twin, progress)
    files = {"pruning_plan.json": plan.save,
             "pruning_dims.png": lambda path: plot_dims(plan, path, config.model or "")}
    return [PrunePass(plan, weights_from=weights_from, report=report, files=files)]


# --- vitrt prune-plan ------------------------------------------------------------------------------------
def _cmd_prune_plan(args) -> int:
    from ..compiler.api import load_source
    from ..compiler.progress import Progress

    out = Path(args.plan_out)
    config = from_args(CompileConfig, args)
    if config.prune is None and not config.revit:
        raise VitrtError("prune-plan needs --prune FRACTION (with --lut LUT) or --revit")
    if out.exists() and not config.force:
        raise VitrtError(f"{out} exists: pass --force to replace it")
    config = config.validate()
    progress = Progress(enabled=not config.quiet)
    _, twin = load_source(config, None, progress)
    plan, found = plan_for(config, twin, progress)
    tmp = out.with_name(out.name + ".tmp")
    plan.save(tmp)
    tmp.replace(out)  # atomic: a failed run leaves no half-written plan
    summary = plan.summary()
    print(f"plan: emb {summary['emb']}, heads {summary['heads']}, mlp {summary['mlp']}, attention removed in blocks "
          f"{summary['attention_removed']}; predicted {found.get('predicted_ms', float('nan')):.3f} ms "
          f"of {found.get('dense_predicted_ms', float('nan')):.3f} ms -> {out}")
    violations = alignment_violations(plan)
    if violations:
        print(f"alignment: {len(violations)} violation(s), first: {violations[0]}")
    return 0


def add_subcommands(sub) -> None:
    parser = sub.add_parser("prune-plan", help="search a latency-aware structural pruning plan and write it as JSON",
                            description="Score NViT importance on the torch twin, search under the latency table, "
                                        "write the kept indices per group (apply with vitrt compile --prune-plan).")
    parser.add_argument("-o", "--out", dest="plan_out", required=True, metavar="PLAN", help="plan JSON to write")
    add_arguments(parser, CompileConfig, skip=("out", "backend", "verify", "bench", "bench_iters", "bench_warmup",
                                               "opset", "threads", "timing_cache", "prune_plan", "finetune_epochs",
                                               "refine_lut"))
    parser.set_defaults(func=_cmd_prune_plan)
