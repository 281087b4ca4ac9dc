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
   compiled artifact's top-1 on the 450 test digits and metric loss on SET (``--eval-data`` / ``--metric-set``).
4. At ``--baseline`` (0.7): the same machinery removing whole blocks (own recoverability ranking, same
   fine-tuning), and both methods without fine-tuning.

Writes OUT.md / OUT.json (with the command) and OUT.png (top-1 against the fraction of the MACs); ``--keep DIR``
keeps every compiled OUT and plan (the ranking benchmark reads the plans from there).
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option


@dataclass(frozen=True)
class DcvitSweepConfig:
    metric_set: Path | None = option(None, "synthetic metric set of the digits reference (vitrt synth "
                                     "digits-reference -o SET); required", type=Path, metavar="SET")
    targets: str = option("0.95,0.9,0.85,0.8,0.75,0.7,0.65,0.6,0.55,0.5", "fractions of the MACs to compress to",
                          metavar="F1,F2,..")
    few_shot: int = option(100, "unlabelled digits training images for importance and fine-tuning", type=int,
                           metavar="N")
    epochs: int = option(50, "fine-tuning epochs after each compressed block", type=int, metavar="N")
    score_epochs: int = option(10, "fine-tuning epochs before a candidate block is scored", type=int, metavar="N")
    mlp: float = option(0.5, "preferred MLP fraction of a compressed block", type=float, metavar="R")
    baseline: float | None = option(0.7, "MACs fraction of the whole-block and no-fine-tuning rows (none: skip)",
                                    type=float, metavar="F")
    batch: int = option(50, "compile batch", type=int, metavar="N")
    threads: int = option(1, "torch and ONNX Runtime threads (1: steady on a shared machine)", type=int, metavar="N")
    seed: int = option(0, "seed of the fine-tuning", type=int, metavar="N")
    keep: Path | None = option(None, "keep every plan and compiled OUT under this directory", type=Path, metavar="DIR")
    out: Path | None = option(None, "write OUT.md, OUT.json and OUT.png", flag="-o/--out", type=Path, metavar="OUT")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "DcvitSweepConfig":
        if self.metric_set is None:
            raise VitrtError("pass --metric-set SET (make it with: vitrt synth digits-reference -o SET)")
        fractions = self.fractions
        if not fractions or any(not 0 < f < 1 for f in fractions):
            raise VitrtError(f"--targets must be fractions in (0, 1), got '{self.targets}'")
        return self

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
            "metric_loss": m["accuracy"]["metric"]["compiled"]["loss"],
            "metric_top1": m["accuracy"]["metric"]["compiled"]["top1"],
            "verify_max_abs_err": m["verify"]["max_abs_err"], "verify_tolerance": m["verify"]["tolerance"],
            "attention_removed": m["pruning"]["summary"]["attention_removed"],
            "mlp_removed": m["pruning"]["summary"]["mlp_removed"],
            "block_mlp": [b["mlp"] for b in m["spec_after"]["blocks"]]}


def run(config: DcvitSweepConfig) -> dict:
    import torch

    from vitrt.calib.digits import ImageSet, digits_split
    from vitrt.calib.reference import load_reference
    from vitrt.calib.synthesis import load_metric_set
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.progress import progress_for
    from vitrt.transforms.prune import dcvit

    config.validate()
    progress = progress_for(config)
    torch.set_num_threads(config.threads)
    model, info = load_reference()
    twin = canonicalize(model)
    teacher = copy.deepcopy(twin).requires_grad_(False)
    train, _ = digits_split(info["recipe"]["img_size"])
    few_shot = ImageSet(train.images[: config.few_shot], None)
    metric = load_metric_set(config.metric_set, twin.spec.img)
    settings = dcvit.Settings(macs=config.fractions[0], mlp=config.mlp, epochs=config.epochs,
                              score_epochs=config.score_epochs, seed=config.seed)
    start = time.perf_counter()
    rows, rankings = [], {}
    with tempfile.TemporaryDirectory(prefix="vitrt-dcvit-sweep-") as tmp:
        workdir = Path(config.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with progress.step("recoverability of every block (DC-ViT)"):
            rankings["dcvit"] = dcvit.recoverability(twin, teacher, few_shot, metric, settings, progress)
        order = [r["block"] for r in rankings["dcvit"]]
        jobs = [("dcvit", f, settings, order) for f in config.fractions]
        if config.baseline is not None:
            whole = replace(settings, macs=config.baseline, whole_blocks=True)
            with progress.step("recoverability of every block (whole-block baseline)"):
                rankings["whole_blocks"] = dcvit.recoverability(twin, teacher, few_shot, metric, whole, progress)
            whole_order = [r["block"] for r in rankings["whole_blocks"]]
            jobs += [("whole_blocks", config.baseline, whole, whole_order),
                     ("dcvit_no_finetune", config.baseline, replace(settings, epochs=0), order),
                     ("whole_blocks_no_finetune", config.baseline, replace(whole, epochs=0), whole_order)]
        for method, fraction, job_settings, job_order in jobs:
            name = f"{method}_{fraction:g}"
            t0 = time.perf_counter()
            with progress.step(f"{name}: compress and fine-tune"):
                plan, record = dcvit.compress(twin, teacher, few_shot, metric, replace(job_settings, macs=fraction),
                                              job_order, progress)
            with progress.step(f"{name}: compile, verify, measure"):
                row = compile_plan(model, plan, name, workdir, config)
            row.update({"method": method, "target": fraction, "blocks": record["blocks"], "mlp": record["mlp"],
                        "epochs": job_settings.epochs, "seconds": round(time.perf_counter() - t0, 1)})
            rows.append(row)
            progress.log(f"{name}: MACs {row['macs_fraction']:.3f}, top-1 {row['top1'] * 100:.2f} %, metric loss "
                         f"{row['metric_loss']:.4f}, verify {row['verify_max_abs_err']:.1e}")
    return {"rows": rows, "rankings": rankings, "few_shot": config.few_shot, "metric_set": str(config.metric_set),
            "metric_images": len(metric), "epochs": config.epochs, "score_epochs": config.score_epochs,
            "preferred_mlp": config.mlp, "dense_top1": rows[0]["dense_top1"], "test_images": 450,
            "seconds": round(time.perf_counter() - start, 1)}


def format_table(result: dict) -> str:
    dense = result["dense_top1"]
    lines = ["| method | target | MACs | params | compressed blocks (MLP kept) | top-1 | Δ points | metric loss | "
             "verify max err |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        blocks = ", ".join(f"{b}({m})" for b, m in zip(r["blocks"], r["mlp"]))
        lines.append(f"| {r['method']} | {r['target']:g} | {r['macs_fraction']:.3f} | {r['params_fraction']:.3f} | "
                     f"{blocks} | {r['top1'] * 100:.2f} % | {(r['top1'] - dense) * 100:+.2f} | {r['metric_loss']:.4f} "
                     f"| {r['verify_max_abs_err']:.1e} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from vitrt.benchmarks.dcvit_record import axes

    styles = {"dcvit": ("o-", "DC-ViT (attention removed, MLP reused)"),
              "whole_blocks": ("s", "whole blocks removed"),
              "dcvit_no_finetune": ("o", "DC-ViT, no fine-tuning"),
              "whole_blocks_no_finetune": ("s", "whole blocks, no fine-tuning")}
    with axes(path, "fraction of the dense model's MACs", "top-1 on the 450 test digits (%)",
              f"digits reference, {result['few_shot']} unlabelled images, compiled (ORT), verified") as ax:
        for method, (style, label) in styles.items():
            rows = sorted((r for r in result["rows"] if r["method"] == method), key=lambda r: r["macs_fraction"])
            if rows:
                ax.plot([r["macs_fraction"] for r in rows], [r["top1"] * 100 for r in rows], style, label=label,
                        fillstyle="none" if "no_finetune" in method else "full")
        ax.plot([1.0], [result["dense_top1"] * 100], "k*", markersize=10, label="dense")
        ax.legend(fontsize=8)


def benchmark(config: DcvitSweepConfig) -> int:
    from vitrt.benchmarks.dcvit_record import record

    result = run(config)
    print(format_table(result))
    if config.out is not None:
        record(config.out, "vitrt.benchmarks.dcvit_sweep", "DC-ViT on the digits reference: dense compression sweep and whole-block baseline",
               result, format_table(result), plot,
               f"Dense top-1 {result['dense_top1'] * 100:.2f} %; {result['few_shot']} unlabelled few-shot images; "
               f"metric set {result['metric_images']} synthetic images; {result['seconds']} s in all.")
    return 0


def main(argv=None) -> int:
    return module_main(DcvitSweepConfig, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
