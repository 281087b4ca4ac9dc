"""The seed spread of recorded DC-ViT comparisons: rows of several ``dcvit_sweep`` results at one baseline, together.

    python -m vitrt.benchmarks.dcvit_seeds --results A.json,B.json --baseline 0.67 -o benchmarks/results/OUT

Reads the rows of every ``--results`` file (``dcvit_sweep`` runs with ``--seeds`` / ``--first-seed``) at
``--baseline`` and writes, per method, the top-1 of every seed with its mean and sample standard deviation
(n − 1), and the paired difference of DC-ViT (either structure rule, or the ``mlp_only`` ablation) and whole
blocks seed by seed (the same few-shot images and fine-tuning seed), with and without fine-tuning: in top-1, and
as the ratio of their KL to the dense model on the test images where the rows carry it. Each paired difference
comes with its 95 % confidence interval (Student t over the seeds) and a verdict: *ahead* or *behind* only where
the interval excludes 0, a *tie* otherwise (450 test images move top-1 in 0.22-point steps: a mean of a few tenths
is not a win by itself); the KL count with its two-sided sign-test p-value. ``--whole-blocks-at G`` pairs DC-ViT
at the baseline with the whole-block rows of the runs at G (whole blocks reach only steps of one block: 0.751 or
0.668 of the MACs of the digits reference, never 0.7). Nothing is trained or compiled. Files of different
settings (epochs, few-shot images, metric set, fine-tuning lr or feature) are refused: their seeds are not the
same experiment — except with ``--choose-lr`` / ``--choose-feature``: the files may then differ in the fine-tuning's
learning rate / the feature it mimics, and each method keeps, seed by seed, the run whose *metric loss* (on the
synthetic metric set, no label) is lowest — every method with its own fine-tuning, chosen without labels, as DC-ViT
chooses blocks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import module_main, option
from vitrt.transforms.prune.dcvit_structure import FINETUNE_LR

PAIRED = ("dcvit", "mlp_only")  # the methods paired with whole blocks: every DC-ViT rule and the MLP-only ablation
SAME = ("few_shot", "metric_set", "epochs", "score_epochs", "preferred_mlp", "dense_top1", "lr", "feature")
CHOSEN = ("lr", "feature")  # what a method may choose by the metric loss (--choose-lr, --choose-feature)
# what a result recorded before a setting existed ran with (the fine-tuning's peak lr and feature were fixed then)
RECORDED_BEFORE = {"lr": FINETUNE_LR, "feature": "block"}


def setting(result: dict, key: str):
    """``result``'s value of the setting ``key``, with what results recorded before it existed ran with."""
    return result.get(key, RECORDED_BEFORE.get(key))


def untrained(row: dict) -> bool:
    """A row with no fine-tuning: the same model whatever the learning rate."""
    return row.get("epochs") == 0 or row["method"].endswith("_no_finetune")


def pick_runs(rows: list[dict], choose: tuple[str, ...] = ()) -> dict[tuple[str, int], dict]:
    """One run per (method, seed).

    ``choose`` names the fine-tuning settings the runs may differ in (``lr``, ``feature``; :data:`CHOSEN`). Without
    any, a (method, seed) in two rows is refused. With them, the runs of one (method, seed) must differ in those
    settings (the same ones twice are refused), and the run of lowest metric loss is kept — a diverged run (loss not
    finite) never over a finite one, the lower rate (then the block feature) on a tie, so the files' order does not
    matter; the kept row lists what it was chosen from (``lr_candidates``, ``feature_candidates``). An untrained row
    is kept once, with no setting."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["seed"]), []).append(row)
    picked = {}
    for (method, seed), runs in groups.items():
        if choose and untrained(runs[0]):
            picked[method, seed] = {**runs[0], **dict.fromkeys(choose), "lr_candidates": [],
                                    "feature_candidates": []}
            continue
        variants = [tuple(run[key] for key in choose) for run in runs]
        if len(runs) > 1 and (not choose or len(set(variants)) < len(variants)):
            raise VitrtError(f"{method} seed {seed} is in more than one result"
                             + (f" with the same {' and '.join(choose)}" if choose else ""))
        picked[method, seed] = {**min(runs, key=label_free_rank), "lr_candidates": sorted({r["lr"] for r in runs}),
                                "feature_candidates": sorted({r["feature"] for r in runs})}
    return picked


def label_free_rank(run: dict) -> tuple:
    """The metric set decides: lowest metric loss first, a diverged run (loss not finite) last, the lower rate (then
    the block feature) on a tie."""
    finite = math.isfinite(run["metric_loss"])
    return not finite, run["metric_loss"] if finite else 0.0, run["lr"], run["feature"]


def whole_blocks_for(method: str) -> str:
    """The whole-block row a paired method (a DC-ViT rule with or without the refit, or the MLP-only ablation) is
    compared with: the untuned one for an untuned method."""
    return "whole_blocks_no_finetune" if method.endswith("_no_finetune") else "whole_blocks"


@dataclass(frozen=True)
class DcvitSeedsConfig:
    results: str = option("", "dcvit_sweep result files (.json), comma-separated; required", metavar="A.json,B.json")
    baseline: float | None = option(None, "the --baseline of those runs; required", type=float, metavar="F")
    whole_blocks_at: float | None = option(None, "take the whole-block rows from the runs at this --baseline instead "
                                           "(DC-ViT at F against a larger or smaller whole-block model)",
                                           type=float, metavar="G")
    choose_lr: bool = option(False, "the results differ in the fine-tuning lr: per method and seed keep the run with "
                             "the lowest metric loss (label-free selection)")
    choose_feature: bool = option(False, "the results differ in the feature the fine-tuning mimics (block, final): per "
                                  "method and seed keep the run with the lowest metric loss (with --choose-lr: over "
                                  "both)")
    out: Path | None = option(None, "write OUT.md and OUT.json",
                              writes=".json", flag="-o/--out", type=Path, metavar="OUT")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "DcvitSeedsConfig":
        if not self.paths or self.baseline is None:
            raise VitrtError("pass --results A.json,B.json and --baseline F")
        return self

    @property
    def paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.results.split(",") if p.strip()]


def _spread(values: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def paired_interval(diff: list[float]) -> tuple[float, float] | None:
    """The 95 % confidence interval of the mean of paired differences (Student t, n − 1 degrees of freedom);
    None with fewer than two seeds."""
    if len(diff) < 2:
        return None
    from scipy import stats

    mean, std = _spread(diff)
    half = float(stats.t.ppf(0.975, len(diff) - 1)) * std / len(diff) ** 0.5
    return mean - half, mean + half


def verdict(interval: tuple[float, float] | None) -> str:
    """ahead / behind where the 95 % interval lies above / below zero, tie where it contains zero."""
    if interval is None:
        return "one seed"
    return "ahead" if interval[0] > 0 else "behind" if interval[1] < 0 else "tie"


def sign_test(successes: int, trials: int) -> float:
    """Two-sided sign-test p-value of ``successes`` in ``trials`` (ties left out) against a coin toss."""
    from scipy import stats

    return float(stats.binomtest(successes, trials).pvalue) if trials else 1.0


def combine(results: list[dict], baseline: float, whole_blocks_at: float | None = None,
            choose_lr: bool = False, choose_feature: bool = False) -> dict:
    """Per method at ``baseline`` (whole blocks at ``whole_blocks_at`` where given): seeds, top-1 per seed, mean and
    sample std; the paired differences. ``choose_lr`` / ``choose_feature``: results may differ in the fine-tuning lr
    / mimicked feature, and each (method, seed) keeps the run of lowest metric loss."""
    choose = tuple(key for key, on in zip(CHOSEN, (choose_lr, choose_feature)) if on)
    for key in SAME:
        if key not in choose and len({json.dumps(setting(r, key)) for r in results}) > 1:
            raise VitrtError(f"the results differ in {key}: their seeds are not one experiment")
    def target(method: str) -> float:
        return whole_blocks_at if whole_blocks_at is not None and method.startswith("whole_blocks") else baseline

    rows = [{**row, **{key: row.get(key, setting(r, key)) for key in CHOSEN}} for r in results for row in r["rows"]
            if row["target"] == target(row["method"])]
    if not rows:
        raise VitrtError(f"no rows at --baseline {baseline:g} in these results")
    by = pick_runs(rows, choose)
    rows = list(by.values())
    methods = []
    for method in dict.fromkeys(row["method"] for row in rows):
        picked = sorted((row for row in rows if row["method"] == method), key=lambda row: row["seed"])
        mean, std = _spread([row["top1"] for row in picked])
        methods.append({"method": method, "macs_fraction": picked[0]["macs_fraction"],
                        "seeds": [row["seed"] for row in picked],
                        **{key: [row[key] for row in picked] for key in CHOSEN},
                        **{f"{key}_candidates": sorted({v for row in picked for v in row.get(f"{key}_candidates", [])})
                           for key in CHOSEN},
                        "top1": [row["top1"] for row in picked],
                        "top1_mean": mean, "top1_std": std,
                        "metric_loss_mean": _spread([row["metric_loss"] for row in picked])[0]})
    pairs = []
    for a, b in ((m, whole_blocks_for(m)) for m in dict.fromkeys(m for m, _ in by) if m.startswith(PAIRED)):
        seeds = sorted(s for m, s in by if m == a and (b, s) in by)
        if seeds:
            diff = [by[a, s]["top1"] - by[b, s]["top1"] for s in seeds]
            mean, std = _spread(diff)
            interval = paired_interval(diff)
            pair = {"methods": [a, b], "seeds": seeds, "difference": diff, "mean": mean, "std": std,
                    "ci95": interval, "verdict": verdict(interval),
                    "ahead": sum(d > 1e-9 for d in diff), "tied": sum(abs(d) <= 1e-9 for d in diff),
                    "behind": sum(d < -1e-9 for d in diff)}
            if all("test_kl" in by[m, s] for m in (a, b) for s in seeds):  # rows recorded since it is measured
                ratio = [by[a, s]["test_kl"] / max(by[b, s]["test_kl"], 1e-12) for s in seeds]
                closer = sum(r < 1 for r in ratio)
                pair.update({"test_kl_ratio": ratio, "test_kl_closer": closer,
                             "test_kl_sign_p": sign_test(closer, sum(r != 1 for r in ratio))})
            pairs.append(pair)
    first = results[0]
    return {"baseline": baseline, "whole_blocks_at": whole_blocks_at, "choose_lr": choose_lr,
            "choose_feature": choose_feature, "methods": methods, "pairs": pairs,
            "dense_top1": first["dense_top1"],
            **{key: setting(first, key) for key in SAME if key != "dense_top1"},
            **{k: v for key in choose
               for k, v in ((key, None), (f"{key}_candidates", sorted({setting(r, key) for r in results})))}}


def p_value(p: float) -> str:
    """A p-value as the table prints it."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _setting_text(value) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _chosen_cell(method: dict, choose: list[str]) -> str:
    """The settings a method chose per seed, with what they were chosen from: ``3e-05, 0.0002 (of 3e-05, 0.0002)``,
    or ``0.0002 final, …`` for two settings."""
    per_seed = ", ".join(" ".join(_setting_text(method[key][i]) for key in choose) for i in range(len(method["seeds"])))
    candidates = "; ".join(", ".join(map(_setting_text, method[f"{key}_candidates"])) for key in choose
                           if method[f"{key}_candidates"])
    return per_seed + (f" (of {candidates})" if candidates else "")


def format_table(result: dict) -> str:
    dense = result["dense_top1"]
    choose = [key for key in CHOSEN if result.get(f"choose_{key}")]
    lines = ["| method | MACs | seeds |" + (f" {' and '.join(choose)} chosen by the metric loss, per seed (of) |"
                                               if choose else "")
             + " top-1 per seed | mean ± std (n − 1) | Δ points (mean) |",
             "|---|---:|---|" + ("---|" if choose else "") + "---|---:|---:|"]
    for m in result["methods"]:
        lines.append(f"| {m['method']} | {m['macs_fraction']:.3f} | {', '.join(map(str, m['seeds']))} | "
                     + (f"{_chosen_cell(m, choose)} | " if choose else "")
                     + f"{', '.join(f'{t * 100:.2f}' for t in m['top1'])} | {m['top1_mean'] * 100:.2f} ± "
                     f"{m['top1_std'] * 100:.2f} % | {(m['top1_mean'] - dense) * 100:+.2f} |")
    if result["pairs"]:
        lines += ["", "| paired, seed by seed | seeds | top-1 difference per seed (points) | mean ± std | 95 % CI | "
                  "top-1 verdict | ahead / tied / behind | test KL to dense, ratio per seed | closer to dense (sign "
                  "test p) |", "|---|---|---|---:|---:|---|---|---|---|"]
        for p in result["pairs"]:
            kl = (", ".join(f"{r:.2f}" for r in p["test_kl_ratio"]), f"{p['test_kl_closer']} of {len(p['seeds'])}"
                  + (f" ({p_value(p['test_kl_sign_p'])})" if "test_kl_sign_p" in p else "")) \
                if "test_kl_ratio" in p else ("–", "–")
            ci = "–" if p["ci95"] is None else f"[{p['ci95'][0] * 100:+.2f}, {p['ci95'][1] * 100:+.2f}]"
            lines.append(f"| {p['methods'][0]} − {p['methods'][1]} | {', '.join(map(str, p['seeds']))} | "
                         f"{', '.join(f'{d * 100:+.2f}' for d in p['difference'])} | {p['mean'] * 100:+.2f} ± "
                         f"{p['std'] * 100:.2f} | {ci} | {p['verdict']} | {p['ahead']} / {p['tied']} / "
                         f"{p['behind']} | {kl[0]} | {kl[1]} |")
    return "\n".join(lines)


def benchmark(config: DcvitSeedsConfig) -> int:
    from vitrt.benchmarks.dcvit_record import record

    config.validate()
    results = []
    for path in config.paths:
        if not path.is_file():
            raise VitrtError(f"no result file {path}")
        results.append(json.loads(path.read_text()))
    result = {**combine(results, config.baseline, config.whole_blocks_at, config.choose_lr, config.choose_feature),
              "results": [str(p) for p in config.paths]}
    table = format_table(result)
    print(table)
    if config.out is not None:
        versus = "" if config.whole_blocks_at is None else f" (whole blocks: the runs at {config.whole_blocks_at:g})"
        lr = (f"peak lr per method and seed, the lowest metric loss of "
              f"{', '.join(f'{v:g}' for v in result['lr_candidates'])}"
              if config.choose_lr else f"peak lr {result['lr']:g}")
        feature = (f"per method and seed the feature of lowest metric loss of {', '.join(result['feature_candidates'])}"
                   if config.choose_feature else f"the {result['feature']} feature")
        record(config.out, "vitrt.benchmarks.dcvit_seeds", f"DC-ViT against whole blocks at {config.baseline:g} of the "
               f"MACs{versus}: seed spread", result, table,
               notes=f"From {', '.join(result['results'])}: {result['epochs']} fine-tuning epochs per compressed "
               f"block ({lr}, mimicking {feature}), {result['few_shot']} "
               f"few-shot images per seed (seed k: training images k·N..(k+1)·N), metric "
               f"set {result['metric_set']}.")
    return 0


def main(argv=None) -> int:
    return module_main(DcvitSeedsConfig, benchmark, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
