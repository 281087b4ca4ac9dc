"""DC-ViT on the digits reference: dense compression from one command, and the whole-block baseline.

    python -m vitrt.benchmarks.dcvit_sweep --metric-set SET -o benchmarks/results/dcvit_sweep

1. The shipped digits reference (98.89 % on the 450 test digits); ``--few-shot`` unlabelled images of the digits
   training split (the first N: a fixed, seeded split) and the synthetic metric set SET (``vitrt synth``).
2. One recoverability ranking of the 12 blocks (each compressed alone at the preferred MLP fraction, fine-tuned
   ``--score-epochs`` on the few-shot images, metric loss on SET) — it does not depend on the target, so every
   size of the sweep shares it, exactly as the compile's planner would compute it.
3. For every ``--targets`` fraction of the MACs: DC-ViT's progressive compression and feature-mimicking
   fine-tuning (:func:`vitrt.transforms.prune.dcvit.compress`), the plan saved and compiled with
   ``vitrt.compile(prune_plan=..., verify=True)`` (ONNX Runtime, verified against the pruned twin), and the
   compiled artifact's top-1 and KL(dense ‖ artifact) on the 450 test digits (the KL separates variants whose
   top-1 ties at 450 images) and metric loss on SET (``--eval-data`` / ``--metric-set``).
4. At ``--baseline`` (0.7), over ``--seeds`` disjoint few-shot subsets (seed k: training images k·N..(k+1)·N, and
   seed k for the fine-tuning; k counts from ``--first-seed``, 0): DC-ViT at the preferred MLP fraction, DC-ViT
   with the official code's fewest-blocks rule (``--dcvit-mlp 0``), and the same machinery removing whole blocks
   (its own recoverability ranking, the same fine-tuning) — each with and without fine-tuning; mean and spread over the seeds
   (``--methods`` picks which of the three). ``--methods`` may add ``mlp_only``, the ablation that removes whole
   MLPs and keeps every attention module (the same machinery, ranking and fine-tuning): which part of a block
   costs the model least.
5. ``--workers N`` runs the compressions of 3. and 4. in N processes once the rankings are known (the machine's
   cores, not the results, change); the result files are rewritten after every row (``complete`` false until the
   last).

``--refit`` gives DC-ViT's compressed blocks the least-squares refit (``--dcvit-refit``; rows ``dcvit_refit``, …,
beside recorded plain rows; whole blocks have nothing to refit). Writes OUT.md / OUT.json (with the command) and
OUT.png (top-1 against the fraction of the MACs); ``--keep DIR`` keeps every compiled OUT and plan (the ranking
benchmark reads the plans from there). ``--overlay A.json,B.json -o OUT`` runs nothing: it draws recorded sweeps on
one plot.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option
from vitrt.transforms.prune.dcvit_structure import FINETUNE_LR, MIMIC_FEATURES, check_finetune


DEFAULT_METHODS = ("dcvit", "dcvit_fewest_blocks", "whole_blocks")
METHODS = DEFAULT_METHODS + ("mlp_only",)


@dataclass(frozen=True)
class DcvitSweepConfig:
    metric_set: Path | None = option(None, "synthetic metric set of the digits reference (vitrt synth "
                                     "digits-reference -o SET); required", type=Path, metavar="SET")
    targets: str = option("0.95,0.9,0.85,0.8,0.75,0.7,0.65,0.6,0.55,0.51", "fractions of the MACs the sweep "
                          "compresses to (empty: no sweep)", metavar="F1,F2,..")
    few_shot: int = option(100, "unlabelled digits training images for importance and fine-tuning", type=int,
                           metavar="N")
    epochs: int = option(50, "fine-tuning epochs after each compressed block", type=int, metavar="N")
    score_epochs: int = option(10, "fine-tuning epochs before a candidate block is scored", type=int, metavar="N")
    lr: float = option(FINETUNE_LR, "peak learning rate of the fine-tuning after each compressed block (both "
                       f"methods; the ranking's fine-tuning keeps {FINETUNE_LR:g}, so the blocks chosen do not change)",
                       type=float, metavar="LR")
    feature: str = option("block", "what that fine-tuning mimics: the output of the block after the last compressed "
                          "one, or the final normalised tokens (the official code's pre_GAP; the ranking keeps "
                          "block)", choices=MIMIC_FEATURES)
    mlp: float = option(0.5, "preferred MLP fraction of a compressed block", type=float, metavar="R")
    refit: bool = option(False, "DC-ViT's compressed blocks get the least-squares refit (--dcvit-refit)")
    baseline: float | None = option(None, "compare DC-ViT with removing whole blocks at this MACs fraction",
                                    type=float, metavar="F")
    seeds: int = option(1, "few-shot subsets / fine-tuning seeds of the comparison", type=int, metavar="N")
    first_seed: int = option(0, "the comparison's seeds are FIRST..FIRST+N-1 (more seeds in a second run)", type=int,
                             metavar="FIRST")
    methods: str = option(",".join(DEFAULT_METHODS), "methods compared at --baseline (each also without fine-tuning)",
                          metavar="M1,M2,..")
    batch: int = option(50, "compile batch", type=int, metavar="N")
    threads: int = option(1, "torch and ONNX Runtime threads (1: steady on a shared machine)", type=int, metavar="N")
    workers: int = option(1, "compressions run side by side in this many processes (after the rankings)", type=int,
                          metavar="N")
    keep: Path | None = option(None, "keep every plan and compiled OUT under this directory", type=Path, metavar="DIR")
    out: Path | None = option(None, "write OUT.md, OUT.json and OUT.png",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")
    overlay: str = option("", "instead of running: draw the seed-0 rows of these recorded results on one plot "
                          "(needs -o)", metavar="A.json,B.json")
    quiet: bool = option(False, "no progress output")

    @property
    def overlay_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.overlay.split(",") if p.strip()]

    def validate(self) -> "DcvitSweepConfig":
        if self.overlay:
            if self.out is None:
                raise VitrtError("--overlay writes OUT.png and OUT.md: add -o OUT")
            return self
        if self.metric_set is None:
            raise VitrtError("pass --metric-set SET (make it with: vitrt synth digits-reference -o SET)")
        fractions = self.fractions + ([self.baseline] if self.baseline is not None else [])
        if not fractions or any(not 0 < f < 1 for f in fractions):
            raise VitrtError(f"--targets / --baseline must be fractions in (0, 1), got '{self.targets}' / "
                             f"{self.baseline}")
        check_finetune(self.lr, self.feature, lr_flag="--lr")
        if self.few_shot < 1 or self.epochs < 0 or self.score_epochs < 0 or not 0 <= self.mlp <= 1:
            raise VitrtError(f"--few-shot must be >= 1, --epochs and --score-epochs >= 0 and --mlp in [0, 1], got "
                             f"{self.few_shot}, {self.epochs}, {self.score_epochs} and {self.mlp}")
        if self.seeds < 1 or self.workers < 1:
            raise VitrtError("--seeds and --workers must be >= 1")
        if self.first_seed < 0:
            raise VitrtError("--first-seed must be >= 0")
        if not self.compared or any(m not in METHODS for m in self.compared):
            raise VitrtError(f"--methods must name some of {', '.join(METHODS)}, got '{self.methods}'")
        return self

    @property
    def compared(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    @property
    def fractions(self) -> list[float]:
        try:
            return [float(t) for t in self.targets.split(",") if t.strip()]
        except ValueError:
            raise VitrtError(f"--targets must be comma-separated fractions, got '{self.targets}'") from None


def compile_plan(model, plan, name: str, workdir: Path, config: DcvitSweepConfig) -> dict:
    """Save ``plan``, compile it (verified) and measure the artifact: one row of the table."""
    from vitrt.pipeline.driver import compile

    plan_path = workdir / f"{name}.plan.json"
    plan.save(plan_path)
    result = compile(model, workdir / name, name=f"digits-reference {name}", quiet=True, verify=True,
                     batch=config.batch, threads=config.threads, prune_plan=plan_path, eval_data="digits",
                     metric_set=f"synth:{config.metric_set}")
    m = result.manifest
    return {"name": name, "plan": str(plan_path), "macs_fraction": m["flops"]["after"] / m["flops"]["before"],
            "params_fraction": m["params"]["after"] / m["params"]["before"],
            "top1": m["accuracy"]["real"]["top1_compiled"], "dense_top1": m["accuracy"]["real"]["top1_dense"],
            "test_kl": m["accuracy"]["real"]["kl_to_dense"], "test_ce": m["accuracy"]["real"]["ce_compiled"],
            "metric_loss": m["accuracy"]["metric"]["compiled"]["loss"],
            "metric_ce": m["accuracy"]["metric"]["compiled"]["ce"],
            "metric_top1": m["accuracy"]["metric"]["compiled"]["top1"],
            "verify_max_abs_err": m["verify"]["max_abs_err"], "verify_tolerance": m["verify"]["tolerance"],
            "attention_removed": m["pruning"]["summary"]["attention_removed"],
            "mlp_removed": m["pruning"]["summary"]["mlp_removed"],
            "block_mlp": [b["mlp"] for b in m["spec_after"]["blocks"]]}


def jobs(config: DcvitSweepConfig, settings) -> list[tuple[str, float, object, int]]:
    """(method, MACs fraction, settings, seed) of every compression the command runs."""
    refit = "_refit" if settings.refit else ""  # a refit row is a method of its own beside recorded plain rows
    out = [(f"dcvit{refit}", f, settings, 0) for f in config.fractions]
    if config.baseline is not None:
        fewest = replace(settings, mlp=0.0)
        whole = replace(settings, whole_blocks=True, refit=False)
        mlp_only = replace(settings, mlp_only=True, refit=False)
        variants = (("dcvit", settings), ("dcvit_fewest_blocks", fewest), ("whole_blocks", whole),
                    ("mlp_only", mlp_only))
        for seed in range(config.first_seed, config.first_seed + config.seeds):
            for method, variant in variants:
                if method not in config.compared:
                    continue
                name = method + (refit if variant.refit else "")
                out.append((name, config.baseline, variant, seed))
                out.append((f"{name}_no_finetune", config.baseline, replace(variant, epochs=0), seed))
    return list(dict.fromkeys(out))  # the sweep's row at the baseline fraction is not run twice


@functools.lru_cache(maxsize=1)
def _context(metric_set: Path, threads: int):
    """What every job reads (built once per process): the reference, its twin, the frozen teacher, the digits
    training split and the metric set."""
    import torch

    from vitrt.calib.digits import digits_split
    from vitrt.calib.reference import load_reference
    from vitrt.calib.synthesis import MetricSet, load_metric_set
    from vitrt.compiler.models import canonicalize

    torch.set_num_threads(threads)
    model, info = load_reference()
    twin = canonicalize(model)
    teacher = copy.deepcopy(twin).requires_grad_(False)
    train, _ = digits_split(info["recipe"]["img_size"])
    return model, twin, teacher, train, MetricSet.of(load_metric_set(metric_set, twin.spec.img), teacher)


def few_shot_images(train, config: DcvitSweepConfig, seed: int):
    from vitrt.calib.digits import ImageSet

    images = train.images[seed * config.few_shot:(seed + 1) * config.few_shot]
    if len(images) < config.few_shot:
        first, last = seed * config.few_shot, (seed + 1) * config.few_shot - 1
        raise VitrtError(f"seed {seed} needs training images {first}..{last} but the digits training split has "
                         f"{len(train.images)}: fewer --seeds or --few-shot")
    return ImageSet(images, None)


def run_job(config: DcvitSweepConfig, job, order: list[int], workdir: Path) -> dict:
    """One compression of the sweep (in this process or a worker): compress, fine-tune, compile, measure."""
    from vitrt.compiler.progress import QUIET, progress_for
    from vitrt.transforms.prune import dcvit

    method, fraction, job_settings, seed = job
    model, twin, teacher, train, metric = _context(config.metric_set, config.threads)
    progress = progress_for(config)
    name = f"{method}_{fraction:g}" + (f"_seed{seed}" if seed else "")
    t0 = time.perf_counter()
    with progress.step(f"{name}: compress and fine-tune"):
        plan, record = dcvit.compress(twin, teacher, few_shot_images(train, config, seed), metric, job_settings,
                                      order, progress if config.workers == 1 else QUIET)
    with progress.step(f"{name}: compile, verify, measure"):
        row = compile_plan(model, plan, name, workdir, config)
    row.update({"method": method, "target": fraction, "seed": seed, "blocks": record["blocks"], "mlp": record["mlp"],
                "epochs": job_settings.epochs, "lr": job_settings.lr,
                "feature": job_settings.feature, "seconds": round(time.perf_counter() - t0, 1)})
    progress.log(f"{name}: MACs {row['macs_fraction']:.3f}, top-1 {row['top1'] * 100:.2f} %, metric loss "
                 f"{row['metric_loss']:.6f}, verify {row['verify_max_abs_err']:.1e}")
    return row


def base_settings(config: DcvitSweepConfig):
    """The DC-ViT settings every job starts from (each job then sets its method, target and seed)."""
    from vitrt.transforms.prune.dcvit_structure import Settings

    return Settings(macs=0.5, mlp=config.mlp, epochs=config.epochs, score_epochs=config.score_epochs,
                    refit=config.refit, lr=config.lr, feature=config.feature)


def run(config: DcvitSweepConfig, on_row=None) -> dict:
    """Every job of ``config``; ``on_row(result)`` gets the result so far (``complete`` false) after each row.

    One recoverability ranking per candidate width and seed: with ``--workers 1`` each is computed just before
    the first job that needs it (so the rows of seed 0 are written before seed 1 is ranked); with more workers
    all come first and the jobs then run in ``--workers`` processes (each one torch / ONNX Runtime thread per
    ``--threads``)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from vitrt.benchmarks import dcvit_sweep  # by its import name: spawned workers cannot find __main__'s functions
    from vitrt.compiler.progress import progress_for
    from vitrt.transforms.prune import dcvit
    from vitrt.transforms.prune.dcvit_structure import candidate_kind

    config.validate()
    progress = progress_for(config)
    _, twin, teacher, train, metric = _context(config.metric_set, config.threads)
    settings = base_settings(config)
    start = time.perf_counter()
    planned = [(method, fraction, replace(job_settings, macs=fraction, seed=seed), seed)
               for method, fraction, job_settings, seed in jobs(config, settings)]
    rankings: dict = {}

    def order(job) -> list[int]:
        """The job's recoverability ranking (one per candidate kind and seed, computed when first needed)."""
        _, _, job_settings, seed = job
        kind = candidate_kind(twin.spec, job_settings)
        if (kind, seed) not in rankings:
            with progress.step(f"recoverability of every block (candidates keep {kind}, seed {seed})"):
                rankings[kind, seed] = dcvit.recoverability(twin, teacher, few_shot_images(train, config, seed),
                                                            metric, job_settings, progress)
        return [r["block"] for r in rankings[kind, seed]]

    done: dict[int, dict] = {}

    def finished(index: int, row: dict) -> None:
        done[index] = row
        if on_row is not None and len(done) < len(planned):
            on_row(summary([done[i] for i in sorted(done)], rankings, config, len(metric), start, complete=False))

    with tempfile.TemporaryDirectory(prefix="vitrt-dcvit-sweep-") as tmp:
        workdir = Path(config.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if config.workers == 1:  # rankings on the way: a run cut short keeps whole seeds, not only rankings
            for index, job in enumerate(planned):
                finished(index, run_job(config, job, order(job), workdir))
        else:  # every ranking first, then the compressions side by side
            orders = [order(job) for job in planned]
            with ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(dcvit_sweep.run_job, config, job, orders[index], workdir): index
                           for index, job in enumerate(planned)}
                for future in as_completed(futures):
                    finished(futures[future], future.result())
    return summary([done[i] for i in sorted(done)], rankings, config, len(metric), start, complete=True)


def summary(rows: list[dict], rankings: dict, config: DcvitSweepConfig, metric_images: int, start: float,
            complete: bool) -> dict:
    return {"rows": rows, "rankings": {f"{k}_seed{s}": v for (k, s), v in rankings.items()},
            "comparison": comparison(rows, config.baseline), "few_shot": config.few_shot,
            "metric_set": str(config.metric_set), "metric_images": metric_images, "epochs": config.epochs,
            "score_epochs": config.score_epochs, "lr": config.lr, "feature": config.feature,
            "preferred_mlp": config.mlp, "refit": config.refit,
            "dense_top1": rows[0]["dense_top1"],
            "test_images": 450, "seconds": round(time.perf_counter() - start, 1), "complete": complete}


def comparison(rows: list[dict], baseline: float | None) -> list[dict]:
    """Per method at the baseline fraction: top-1 per seed, mean and standard deviation, MACs."""
    import numpy as np

    out = []
    for method in dict.fromkeys(r["method"] for r in rows if baseline is not None and r["target"] == baseline):
        picked = [r for r in rows if r["method"] == method and r["target"] == baseline]
        top1 = [r["top1"] for r in picked]
        out.append({"method": method, "macs_fraction": picked[0]["macs_fraction"], "seeds": len(picked),
                    "top1": top1, "top1_mean": float(np.mean(top1)), "top1_std": float(np.std(top1)),
                    "metric_loss_mean": float(np.mean([r["metric_loss"] for r in picked]))})
    return out


def format_table(result: dict) -> str:
    dense = result["dense_top1"]
    lines = ["| method | target | seed | MACs | params | compressed blocks (MLP kept) | top-1 | Δ points | "
             "test KL to dense | metric loss | verify max err |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        blocks = ", ".join(f"{b}({m})" for b, m in zip(r["blocks"], r["mlp"]))
        test_kl = f"{r['test_kl']:.5f}" if "test_kl" in r else "–"  # rows recorded before it was measured
        lines.append(f"| {r['method']} | {r['target']:g} | {r['seed']} | {r['macs_fraction']:.3f} | "
                     f"{r['params_fraction']:.3f} | {blocks} | {r['top1'] * 100:.2f} % | "
                     f"{(r['top1'] - dense) * 100:+.2f} | {test_kl} | {r['metric_loss']:.6f} | "
                     f"{r['verify_max_abs_err']:.1e} |")
    if result["comparison"]:
        lines += ["", "| method (at the baseline MACs) | MACs | seeds | top-1 per seed | mean | Δ points (mean) | std |",
                  "|---|---:|---:|---|---:|---:|---:|"]
        for c in result["comparison"]:
            per_seed = ", ".join(f"{t * 100:.2f}" for t in c["top1"])
            lines.append(f"| {c['method']} | {c['macs_fraction']:.3f} | {c['seeds']} | {per_seed} | "
                         f"{c['top1_mean'] * 100:.2f} % | {(c['top1_mean'] - dense) * 100:+.2f} | {c['top1_std'] * 100:.2f} |")
    return "\n".join(lines)


STYLES = {"dcvit": ("o-", "DC-ViT (attention removed, MLP reused)"),
          "dcvit_fewest_blocks": ("^", "DC-ViT, fewest blocks (official code's rule)"),
          "whole_blocks": ("s", "whole blocks removed"),
          "mlp_only": ("D", "MLPs removed (attention kept)")}


def style(method: str) -> tuple[str, str, bool]:
    """(marker, label, untuned) of a row's method: a DC-ViT rule or whole blocks, with ``_refit`` and
    ``_no_finetune`` suffixes."""
    untuned = method.endswith("_no_finetune")
    base = method.removesuffix("_no_finetune")
    refit = base.endswith("_refit")
    marker, label = STYLES[base.removesuffix("_refit")]
    return marker, label + (" + LS refit" if refit else "") + (", no fine-tuning" if untuned else ""), untuned


def _seed0_rows(result: dict):
    """(method, its seed-0 rows by increasing MACs) for every method of ``result`` that has them."""
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["method"] == method and r["seed"] == 0),
                      key=lambda r: r["macs_fraction"])
        if rows:
            yield method, rows


def _draw(ax, result: dict, suffix: str = "") -> None:
    """The seed-0 rows of ``result``, one line per method (hollow markers: no fine-tuning)."""
    for method, rows in _seed0_rows(result):
        marker, label, untuned = style(method)
        ax.plot([r["macs_fraction"] for r in rows], [r["top1"] * 100 for r in rows], marker,
                label=label + suffix, fillstyle="none" if untuned else "full")


def plot(result: dict, path: Path) -> None:
    from vitrt.benchmarks.dcvit_record import axes

    with axes(path, "fraction of the dense model's MACs", "top-1 on the 450 test digits (%)",
              f"digits reference, {result['few_shot']} unlabelled images, compiled (ORT), verified") as ax:
        _draw(ax, result)
        ax.plot([1.0], [result["dense_top1"] * 100], "k*", markersize=10, label="dense")
        ax.legend(fontsize=8)


def draw_overlay(config: DcvitSweepConfig) -> int:
    """``--overlay``: the seed-0 rows of recorded sweeps on one plot (OUT.png) and their top-1 side by side
    (OUT.md); nothing is run."""
    import json

    from vitrt.benchmarks.dcvit_record import axes, record

    results = []
    for path in config.overlay_paths:
        if not path.is_file():
            raise VitrtError(f"no result file {path} (write one with python -m vitrt.benchmarks.dcvit_sweep -o)")
        results.append((path.stem, json.loads(path.read_text())))

    def draw(_, png: Path) -> None:
        with axes(png, "fraction of the dense model's MACs", "top-1 on the 450 test digits (%)",
                  "digits reference: recorded DC-ViT sweeps", size=(7.2, 4.8)) as ax:
            for name, result in results:
                _draw(ax, result, f", {result['epochs']} epochs/block ({name})")
            ax.plot([1.0], [results[0][1]["dense_top1"] * 100], "k*", markersize=10, label="dense")
            ax.legend(fontsize=7)

    lines = ["| result | method | epochs per block | seconds in all | top-1 at each MACs fraction (seed 0) |",
             "|---|---|---:|---:|---|"]
    for name, result in results:
        for method, rows in _seed0_rows(result):
            points = ", ".join(f"{r['macs_fraction']:.3f}: {r['top1'] * 100:.2f} %" for r in reversed(rows))
            lines.append(f"| {name} | {method} | {result['epochs']} | {result['seconds']} | {points} |")
    table = "\n".join(lines)
    print(table)
    record(config.out, "vitrt.benchmarks.dcvit_sweep", "Recorded DC-ViT sweeps side by side",
           {"overlay": [str(p) for p in config.overlay_paths]}, table, draw)
    return 0


def benchmark(config: DcvitSweepConfig) -> int:
    from vitrt.benchmarks.dcvit_record import record

    if config.overlay:
        return draw_overlay(config.validate())

    def write(result: dict) -> None:  # after every row, so that a long sweep cut short keeps what it measured
        if config.out is not None:
            state = "" if result["complete"] else f"**Partial: {len(result['rows'])} rows so far (still running).** "
            record(config.out, "vitrt.benchmarks.dcvit_sweep", "DC-ViT on the digits reference: dense compression sweep "
                   "and whole-block baseline", result, format_table(result), plot,
                   f"{state}Dense top-1 {result['dense_top1'] * 100:.2f} %; {result['few_shot']} unlabelled few-shot "
                   f"images; {result['epochs']} fine-tuning epochs per compressed block (peak lr "
                   f"{result.get('lr', FINETUNE_LR):g}, mimicking the {result.get('feature', 'block')} feature), "
                   f"{result['score_epochs']} "
                   f"before scoring; metric set {result['metric_images']} synthetic images; {result['seconds']} s in all.")

    result = run(config, on_row=write)
    print(format_table(result))
    write(result)
    return 0


def main(argv=None) -> int:
    return module_main(DcvitSweepConfig, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
