"""``vitrt tome-bench``: accuracy vs throughput of ToMe, DFE and DFE+LGTM schedules (the paper's Fig. 5 setting).

For every configuration and FLOPs target, the FLOPs solver picks r on each model:

* accuracy: the digits reference ViT (65 tokens, 12 blocks), training-free; top-1 of the merged ONNX graph in
  ONNX Runtime over the whole digits test set (and of the torch twin, which must agree);
* throughput: deit_small_patch16_224 (random weights: speed does not depend on them) at batch 8 in ONNX
  Runtime; dense and merged sessions are timed side by side in interleaved rounds (the shared timing loop,
  :func:`vitrt.compiler.timing.interleaved`) and the speedup is the median of the per-round ratios.

Both models are merged the way a compile merges them: :class:`~vitrt.transforms.tome.graph_pass.TokenMergePass`
on the lowered graph and its ``apply_to_twin`` on the torch twin.

Writes ``OUT/tome_sweep.json``, ``OUT/tome_sweep.md`` (table + the command), ``OUT/tome_sweep.png`` (plot) and
``OUT/tome_merges.png`` (which patches merged, per configuration, on one digits image).
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import add_command, option
from vitrt.compiler.output import check_output_file, check_writable_dir

CONFIGS = {  # name -> (skip, window) per model family; None skip = the default depth // 6
    "ToMe": {"skip": 0, "window": None},
    "DFE": {"skip": None, "window": None},
    "DFE+LGTM": {"skip": None, "window": "quarter"},  # windows of half the grid side: 4 windows (w=7 on 14x14)
}


@dataclass(frozen=True)
class TomeBenchConfig:
    out: Path | None = option(None, "directory for tome_sweep.md/.json/.png and tome_merges.png (may hold other "
                              "files; the recorded run: -o benchmarks/results)", flag="-o/--out", type=Path,
                              metavar="OUT")
    force: bool = option(False, "replace those four files where OUT already has them")
    targets: str = option("0.8,0.7,0.6,0.5", "FLOPs fractions to solve r for (comma-separated)", metavar="LIST")
    model: str = option("deit_small_patch16_224", "timm model timed for throughput", metavar="NAME")
    batch: int = option(8, "batch size of the throughput runs", type=int, metavar="N")
    iters: int = option(5, "interleaved rounds per point (each: one warm-up and one timed run of dense and merged)",
                        type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    no_throughput: bool = option(False, "accuracy only (skip the deit timing)")
    quiet: bool = option(False, "no progress output")


def _window(spec, kind):
    return None if kind is None else spec.grid // 2


def _plans(spec, target):
    from vitrt.transforms.tome.solve import UnreachableTarget, solve_flops

    plans = {}
    for name, c in CONFIGS.items():
        try:
            plans[name] = solve_flops(spec, target, skip=c["skip"], window=_window(spec, c["window"]))
        except UnreachableTarget as exc:  # said in this command's terms, not compile's --tome-flops / --dfe-skip
            raise VitrtError(f"--targets {target:g}: {name} keeps at least {exc.least:.3f} of the FLOPs on a "
                             f"{spec.tokens}-token model; raise the target") from None
    return plans


def parse_targets(text: str) -> list[float]:
    try:
        targets = [float(t) for t in str(text).split(",")]
    except ValueError:
        targets = []
    if not targets or any(not 0.0 < t <= 1.0 for t in targets):
        raise VitrtError(f"--targets expects comma-separated FLOPs fractions in (0, 1], e.g. 0.8,0.6; got {text!r}")
    return targets


def merge(twin, dense_onnx, plan):
    """(merged ONNX, merged twin): the compile's token-merge pass on the lowered graph and on the twin."""
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.pass_manager import PassContext
    from vitrt.transforms.tome.graph_pass import TokenMergePass

    token_merge = TokenMergePass(plan)
    view = token_merge.run(GraphView.from_onnx(dense_onnx), PassContext()).view
    return view.to_onnx(), token_merge.apply_to_twin(twin)


def _row_plan(plan, spec):
    from vitrt.compiler.cost import vit_flops

    return {"r": plan.schedule.r, "skip": next((b.index for b in plan.blocks if b.merges), len(plan.blocks)),
            "window": plan.schedule.window, "tokens_out_last": plan.blocks[-1].tokens_out,
            "flops_fraction": round(vit_flops(plan.apply_to_spec(spec)) / vit_flops(spec), 4)}


def digits_points(targets, progress) -> tuple[dict, list[dict], dict]:
    """Top-1 on the digits test set: dense, then every (configuration, target) through ONNX Runtime and the twin."""
    from vitrt.calib.digits import digits_split
    from vitrt.calib.evaluate import top1, torch_logits
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.lower import lower
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.verify import run_onnx

    model, info = load_reference(progress=progress)
    twin = canonicalize(model).eval()
    test = digits_split(info["recipe"]["img_size"])[1]
    images = test.images.numpy()
    dense_onnx = lower(twin, batch=None)
    dense = {"top1_onnx": top1(run_onnx(dense_onnx, images, None), test.labels),
             "top1_twin": top1(torch_logits(twin, test), test.labels)}
    rows, twins = [], {}
    for target in targets:
        for name, plan in _plans(twin.spec, target).items():
            with progress.step(f"digits: {name} at FLOPs {target}"):
                merged_onnx, merged_twin = merge(twin, dense_onnx, plan)
                onnx_logits = run_onnx(merged_onnx, images, None)
                twin_logits = torch_logits(merged_twin, test)
                row = {"config": name, "target": target, **_row_plan(plan, twin.spec),
                       "top1_onnx": top1(onnx_logits, test.labels), "top1_twin": top1(twin_logits, test.labels),
                       "max_abs_err_vs_twin": float(np.max(np.abs(onnx_logits - twin_logits)))}
                rows.append(row)
                twins[(name, target)] = merged_twin
    return dense, rows, {"test_images": len(test), "twins": twins}


def throughput_points(config: TomeBenchConfig, targets, progress) -> tuple[dict, list[dict]]:
    """Speedup of every (configuration, target) over dense on ``config.model``, timed side by side with dense."""
    from vitrt.compiler.backends.ort import cpu_name, ort_session
    from vitrt.compiler.lower import lower
    from vitrt.compiler.models import canonicalize, load_timm_model
    from vitrt.compiler.timing import Timing, interleaved
    from vitrt.compiler.verify import verification_inputs

    twin = canonicalize(load_timm_model(config.model, pretrained=False, checkpoint=None, img_size=None)).eval()
    dense_model = lower(twin, batch=config.batch)
    images = verification_inputs(twin.spec, config.batch, seed=0)

    def run_on(model):
        session = ort_session(model, threads=config.threads)
        feed = {session.get_inputs()[0].name: images}
        return lambda: session.run(None, feed)

    dense = run_on(dense_model)
    timing = Timing(warmup=1, iterations=1)
    rows = []
    for target in targets:
        for name, plan in _plans(twin.spec, target).items():
            with progress.step(f"{config.model}: {name} at FLOPs {target}"):
                merged_onnx, _ = merge(twin, dense_model, plan)
                timed = interleaved({"dense": dense, "merged": run_on(merged_onnx)}, timing, rounds=config.iters)
                info = _row_plan(plan, twin.spec)
                speedup = timed.speedup("dense", "merged")
                rows.append({"config": name, "target": target, **info,
                             "dense_ms": round(timed.typical("dense"), 2),
                             "merged_ms": round(timed.typical("merged"), 2),
                             "speedup": round(speedup, 4),
                             "speedup_over_flops_reduction": round(speedup * info["flops_fraction"], 4)})
    return {"model": config.model, "batch": config.batch, "device": cpu_name(), "iterations": config.iters,
            "method": "dense and merged timed in interleaved rounds (shuffled order; one warm-up and one timed run "
                      "each per round); ms = median over rounds, speedup = median of the per-round ratios"}, rows


def write_table(path: Path, command: str, dense: dict, acc_rows, thr_meta, thr_rows, test_images: int) -> None:
    lines = ["# Token merging: ToMe vs DFE vs DFE+LGTM at equal FLOPs targets\n",
             f"Command: `{command}`\n",
             f"Accuracy: digits reference ViT (65 tokens, 12 blocks), training-free, top-1 over {test_images} test "
             f"images through the merged ONNX graph in ONNX Runtime (twin top-1 alongside). Dense: "
             f"{dense['top1_onnx'] * 100:.2f} %.\n"]
    if thr_meta:
        lines.append(f"Throughput: {thr_meta['model']} (random weights), batch {thr_meta['batch']}, ONNX Runtime on "
                     f"{thr_meta['device']}; rounds per point: {thr_meta['iterations']}; {thr_meta['method']}.\n")
    lines.append("| FLOPs target | config | digits r | digits FLOPs | top-1 ONNX | Δ top-1 | top-1 twin | "
                 "deit r | deit FLOPs | speedup | speedup × FLOPs fraction |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    thr = {(r["config"], r["target"]): r for r in thr_rows}
    for r in acc_rows:
        t = thr.get((r["config"], r["target"]))
        tail = (f"{t['r']} | {t['flops_fraction']:.3f} | {t['speedup']:.3f}× | {t['speedup_over_flops_reduction']:.3f}"
                if t else "– | – | – | –")
        lines.append(f"| {r['target']} | {r['config']} | {r['r']} (skip {r['skip']}"
                     f"{', w ' + str(r['window']) if r['window'] else ''}) | {r['flops_fraction']:.3f} | "
                     f"{r['top1_onnx'] * 100:.2f} % | {(r['top1_onnx'] - dense['top1_onnx']) * 100:+.2f} | "
                     f"{r['top1_twin'] * 100:.2f} % | {tail} |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, dense: dict, acc_rows, thr_meta, thr_rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = {(r["config"], r["target"]): r for r in thr_rows}
    panels = 2 if thr_rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4))
    axes = np.atleast_1d(axes)
    for name in CONFIGS:
        rows = [r for r in acc_rows if r["config"] == name]
        axes[0].plot([r["flops_fraction"] for r in rows], [r["top1_onnx"] * 100 for r in rows], "o-", label=name)
        if thr_rows:
            pts = [(thr[(name, r["target"])]["speedup"], r["top1_onnx"] * 100) for r in rows if (name, r["target"]) in thr]
            axes[1].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    axes[0].axhline(dense["top1_onnx"] * 100, color="gray", ls="--", label="dense")
    axes[0].set_xlabel("FLOPs fraction kept (digits ViT)")
    axes[0].set_ylabel("digits top-1 (%)")
    axes[0].invert_xaxis()
    if thr_rows:
        axes[1].axhline(dense["top1_onnx"] * 100, color="gray", ls="--", label="dense")
        axes[1].set_xlabel(f"{thr_meta['model']} speedup over dense (ORT CPU, batch {thr_meta['batch']})")
        axes[1].set_ylabel("digits top-1 (%) at the same FLOPs target")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


SWEEP_FILES = ("tome_sweep.md", "tome_sweep.json", "tome_sweep.png", "tome_merges.png")


def check_sweep_dir(out: Path | None, force: bool) -> Path:
    """``out`` can take the sweep's files: a directory that exists or can be made, holding none of them unless
    ``force`` (other files are left alone: the recorded run writes into benchmarks/results)."""
    if out is None:
        raise VitrtError("no output directory: pass -o OUT (the recorded sweep: -o benchmarks/results)")
    out = Path(out)
    check_writable_dir(out)  # other files may stay
    for name in SWEEP_FILES if out.is_dir() else ():  # each written after the sweep: a directory in the way now
        check_output_file(out / name, "-o")
    existing = [name for name in SWEEP_FILES if (out / name).exists()]
    if existing and not force:
        raise VitrtError(f"-o {out} already holds {', '.join(existing)}: pass --force to replace them or choose "
                         "another -o")
    return out


def run(config: TomeBenchConfig, argv: list[str] | None = None) -> dict:
    from vitrt.compiler.progress import Progress
    from vitrt.transforms.tome.report import merge_figure

    progress = Progress(enabled=not config.quiet)
    targets = parse_targets(config.targets)
    if config.iters < 1 or config.batch < 1 or (config.threads is not None and config.threads < 1):
        raise VitrtError("--iters, --batch and --threads must be >= 1")
    out = check_sweep_dir(config.out, config.force)
    if not config.no_throughput:  # its model is timed after the digits sweep: refused before it, not after
        from vitrt.compiler.known_models import check_model_name

        check_model_name(config.model)
    command = "vitrt tome-bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[2:]))
    dense, acc_rows, extra = digits_points(targets, progress)
    thr_meta, thr_rows = ({}, []) if config.no_throughput else throughput_points(config, targets, progress)
    result = {"command": command, "digits_dense": dense, "digits": acc_rows, "throughput": thr_meta,
              "throughput_rows": thr_rows}
    out.mkdir(parents=True, exist_ok=True)  # only now: a sweep that fails leaves no empty OUT
    (out / "tome_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    write_table(out / "tome_sweep.md", command, dense, acc_rows, thr_meta, thr_rows, extra["test_images"])
    plot(out / "tome_sweep.png", dense, acc_rows, thr_meta, thr_rows)
    middle = min(targets, key=lambda t: abs(t - 0.6))
    merge_figure(out / "tome_merges.png", [(extra["twins"][(name, middle)], f"{name}, FLOPs ≤ {middle}")
                                          for name in CONFIGS])
    print((out / "tome_sweep.md").read_text())
    return result


def main(config: TomeBenchConfig) -> int:
    run(config)
    return 0


def add_subcommands(sub) -> None:
    add_command(sub, "tome-bench", TomeBenchConfig, main, "token merging: accuracy (digits) vs throughput (deit) for "
                                                             "ToMe, DFE, DFE+LGTM at equal FLOPs targets")
