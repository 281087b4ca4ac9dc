"""``vitrt study MODEL -o OUT``: the empirical study (seed paper: "Empirical Study of Model Compression and Speed up
for Vision Transformer") on one model — every method alone and stacks of them, compiled by ``vitrt compile`` and
measured side by side in one run.

    OUT/study.md, study.json, study.png    one table: test top-1 (real labelled data), latency on the single-thread
                                           CPU clock and the wall clock with speedups over dense fp32 (interleaved
                                           rounds), parameters, FLOPs, ONNX size, verification error
    OUT/engines/<row>/                     every compile output (a row the compiler refuses is listed with why);
                                           a rerun into the same OUT (without --force) reuses the rows compiled

Rows (``--rows`` picks a subset by name): PTQ int8 / fp8 / int4w, QAT, fp16, low rank (two energies, one
fine-tuned), knowledge distillation after merging, NViT pruning with fine-tuning, 2:4 with sparse fine-tuning, ToMe,
DFE, DFE + LGTM, and stacks. Training rows get ``--epochs`` epochs on ``--data``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.known_models import check_model
from vitrt.compiler.options import add_command, command_line, option
from vitrt.compiler.timing import NOISE_NOTE
from vitrt.search.measure import noise_marks
from vitrt.search.space import lgtm_window, merge_step

DENSE = "dense"


def rows(data: str, epochs: int, lut, spec=None) -> dict[str, tuple[str, dict]]:
    """name -> (label, flat compile options) of every study row; merge rows scale with ``spec``'s tokens."""
    calib = {"calib_data": data, "calib_images": 128}
    prune = {"prune": 0.5, "lut": lut, "data": data, "importance": "magnitude", "finetune_epochs": epochs}
    deep_prune = {**prune, "prune": 0.3}
    # the search's merge sizes for ``spec``; without one (option checking) the digits reference's: r=2, window 4
    step = merge_step(spec) if spec is not None else 2
    window = (lgtm_window(spec) if spec is not None else None) or 4
    dfe = {"tome": str(2 * step)}
    return {
        DENSE: ("dense fp32", {}),
        "int8": ("PTQ int8 (max calibration)", {"precision": "int8", **calib}),
        "qat": (f"QAT int8 ({epochs} epoch(s))", {"precision": "int8", **calib, "qat_epochs": epochs}),
        "fp8": ("PTQ fp8", {"precision": "fp8", **calib}),
        "int4w": ("int4 weight-only", {"precision": "int4w"}),
        "fp16": ("fp16", {"precision": "fp16"}),
        "lowrank90": ("low rank, 0.9 energy", {"lowrank": 0.9, "lowrank_align": 8}),
        "lowrank70": (f"low rank, 0.7 energy + fine-tune ({epochs})",
                      {"lowrank": 0.7, "lowrank_align": 8, "lowrank_finetune_epochs": epochs,
                       "lowrank_data": data if epochs else None}),  # data only trains: none at --epochs 0
        "prune": (f"NViT prune 0.5 + fine-tune ({epochs})", prune),
        "sparse": (f"2:4 + sparse fine-tune ({epochs})",
                   {"sparsity": "2:4", "sparse_finetune_epochs": epochs, "sparse_data": data if epochs else None}),
        "tome": (f"ToMe r={step}", {"tome": str(step), "dfe_skip": 0}),
        "dfe": (f"DFE r={2 * step}", dfe),
        "lgtm": (f"DFE + LGTM (window {window}) r={2 * step}", {**dfe, "lgtm_window": window}),
        "dfe_kd": (f"DFE r={2 * step} + distillation ({epochs})",
                   {**dfe, "distill_epochs": epochs, "distill_data": data if epochs else None}),
        "prune_int8": ("prune 0.5 + int8", {**prune, "precision": "int8", **calib}),
        "prune_dfe_int8": (f"prune 0.5 + DFE r={2 * step} + int8", {**prune, **dfe, "precision": "int8", **calib}),
        "prune30_dfe": (f"prune 0.3 + DFE r={2 * step}", {**deep_prune, **dfe}),
        "prune30_dfe_int8": (f"prune 0.3 + DFE r={2 * step} + int8",
                             {**deep_prune, **dfe, "precision": "int8", **calib}),
    }


@dataclass(frozen=True)
class StudyConfig:
    model: str | None = option(None, "the model: digits (the shipped digits reference) or a timm model name",
                               positional=True)
    out: Path | None = option(None, "output directory", flag="-o/--out", type=Path, metavar="OUT")
    data: str = option("digits", "labelled data for calibration, fine-tuning and top-1 (digits: its 450 test "
                       "images)", metavar="digits|PATH")
    lut: Path | None = option(None, "latency table for the pruning rows (vitrt lut build); without it they are left "
                              "out", type=Path, metavar="LUT")
    rows: str | None = option(None, "comma-separated subset of the rows (default: all)", metavar="LIST")
    epochs: int = option(1, "fine-tuning epochs of the training rows", type=int, metavar="N")
    batch: int = option(8, "static batch size", type=int, metavar="N")
    rounds: int = option(5, "interleaved timing rounds", type=int, metavar="N")
    seed: int = option(0, "seed", type=int, metavar="N")
    force: bool = option(False, "replace a non-empty OUT")
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "StudyConfig":
        if not self.model:
            raise OptionError("no model: pass digits or a timm model name")
        if self.out is None:
            raise OptionError("no output directory: pass -o OUT")
        check_model(self.model)
        if self.epochs < 0 or self.batch < 1 or self.rounds < 1 or self.seed < 0:
            raise OptionError("--epochs and --seed must be >= 0, --batch and --rounds >= 1")
        from vitrt.pipeline.config import check_data_source, check_real_labels

        check_real_labels("--data", self.data, "the study measures top-1")
        if self.lut is not None:  # missing, or another file kind (a manifest): refused now, not rows later
            from vitrt.compiler.lut import LatencyTable

            LatencyTable.load(self.lut)
        # the names asked, before the rows a missing --lut leaves out: "prune50" is unknown, not a pruning row
        unknown = sorted(set(self.asked_rows) - set(rows(self.data, self.epochs, self.lut)))
        if unknown:
            raise OptionError(f"--rows: unknown row(s) {', '.join(unknown)} (known: "
                              f"{', '.join(rows(self.data, 0, None))})")
        needs_lut = [r for r in self.asked_rows if "prune" in r] if self.rows is not None else []
        if needs_lut and self.lut is None:
            raise OptionError(f"--rows {', '.join(needs_lut)} prune to a latency target: add --lut LUT (vitrt lut "
                              "build), or leave those rows out")
        from vitrt.compiler.output import check_writable_dir, refuse_foreign_dir

        check_data_source("--data", self.data, labelled=True)
        out = Path(self.out)
        if is_study(out):  # a study made here: resumed with the same settings, or started over
            recorded = read_settings(out)
            differ = ["MODEL" if k == "model" else f"--{k.replace('_', '-')}" for k, v in self.settings().items()
                      if recorded.get(k, v) != v]
            if differ and not self.force:
                raise OptionError(f"'{out}' holds a study made with other settings ({', '.join(differ)}), whose "
                                  "engines would be reused: rerun with its settings, pass --force to start over, or "
                                  "choose another -o")
        else:  # not a study: never deleted, even with --force
            refuse_foreign_dir(out, False, command="study", what="study")
            check_writable_dir(out)
        return self

    def settings(self) -> dict:
        """What the engines of a study depend on (a resumed study must share them)."""
        return {"model": self.model, "data": self.data, "epochs": self.epochs, "batch": self.batch,
                "seed": self.seed, "lut": None if self.lut is None else str(Path(self.lut).resolve())}

    @property
    def asked_rows(self) -> list[str]:
        every = list(rows(self.data, self.epochs, self.lut))
        return every if self.rows is None else [r.strip() for r in self.rows.split(",") if r.strip()]

    @property
    def row_names(self) -> list[str]:
        chosen = self.asked_rows
        if self.lut is None:  # the default set without a table: the pruning rows are left out (said in --help)
            chosen = [r for r in chosen if "prune" not in r]
        return [DENSE] + [r for r in chosen if r != DENSE]


SETTINGS_FILE = "settings.json"  # OUT/engines/settings.json: what the study's engines were compiled with


def is_study(out: Path) -> bool:
    """``out`` holds a study (its engines' settings): a folder that merely has an ``engines`` directory is not one,
    and is never resumed into or deleted."""
    return (Path(out) / "engines" / SETTINGS_FILE).is_file()


def read_settings(out: Path) -> dict:
    from vitrt.compiler.jsonfile import read_json

    return read_json(out / "engines" / SETTINGS_FILE, "study settings")


def run(config: StudyConfig) -> dict:
    from vitrt.calib.data import load_data
    from vitrt.compiler.progress import progress_for
    from vitrt.pipeline.driver import compile, preprocessing
    from vitrt.search.holdout import in_memory
    from vitrt.search.measure import measure
    from vitrt.search.optimize import load_model

    config = config.validate()
    progress = progress_for(config)
    out = Path(config.out)
    if is_study(out) and config.force:  # validate() let --force through only for a study
        from vitrt.compiler.output import start_over
        from vitrt.pipeline.config import check_outside_out  # a synth:SET too

        for flag, path in (("--lut", config.lut), ("--data", config.data)):
            check_outside_out(flag, path, out)
        start_over(out)
    (out / "engines").mkdir(parents=True, exist_ok=True)
    (out / "engines" / SETTINGS_FILE).write_text(json.dumps(config.settings(), indent=1) + "\n")
    started = time.perf_counter()
    module, twin = load_model(config.model, progress)
    table = rows(config.data, config.epochs, config.lut, twin.spec)
    outs, results = {}, {}
    for name in config.row_names:
        label, options = table[name]
        start = time.perf_counter()
        done = out / "engines" / name / "manifest.json"
        if done.is_file():  # compiled by the interrupted run this one resumes
            outs[name] = done.parent
            results[name] = {"label": label, "options": _jsonable(options), "compile_seconds": None,
                             "verify": json.loads(done.read_text()).get("verify", {})}
            continue
        with progress.step(f"compiling {label}"):
            try:
                result = compile(module, out / "engines" / name, name=config.model, batch=config.batch,
                                 threads=1, verify=True, quiet=True, seed=config.seed, **options)
            except VitrtError as exc:
                results[name] = {"label": label, "options": _jsonable(options), "refused": str(exc)}
                continue
        outs[name] = out / "engines" / name
        results[name] = {"label": label, "options": _jsonable(options), "compile_seconds":
                         round(time.perf_counter() - start, 1), "verify": result.manifest.get("verify", {})}
    test = in_memory(load_data(config.data, twin.spec.img, split="test" if config.data == "digits" else "train",
                               preprocessing=preprocessing(module, twin.spec), num_classes=twin.spec.num_classes))
    measured = measure(outs, DENSE, test=test, rounds=config.rounds, iterations=5, threads=1, seed=config.seed,
                       progress=progress)
    for name, m in measured.items():
        results[name]["measured"] = m.to_dict()
    report = {"command": command_line(), "model": config.model, "data": config.data, "test_images": len(test),
              "batch": config.batch, "epochs": config.epochs, "rows": results,
              "seconds": round(time.perf_counter() - started, 1),
              "method": "single-thread CPU time of ONNX Runtime (1 intra-op thread) and wall clock, least of 5 runs "
                        "per round, interleaved rounds, median over rounds; speedup: median of per-round ratios to "
                        "dense fp32 in the same run; top-1 of the built engine on the test images"}
    write_report(out, report)
    return report


def _jsonable(options: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "study.md").write_text(markdown(report) + "\n")
    plot(report, out / "study.png")


def markdown(report: dict) -> str:
    dense = report["rows"][DENSE]["measured"]
    lines = [f"# vitrt study: {report['model']}", "", "Command:", "", "```bash", report["command"], "```", "",
             f"Batch {report['batch']}, ONNX Runtime CPU; {report['method']}. Top-1 on {report['test_images']} "
             f"{report['data']} test images. Whole run {report['seconds'] / 60:.1f} min.", "",
             "| method | test top-1 | drop (pt) | cpu ms | speedup (cpu) | wall ms | speedup (wall) | params | GFLOPs | "
             "ONNX KB | verify max err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    noisy = False
    for row in report["rows"].values():
        if "measured" not in row:
            lines.append(f"| {row['label']} | refused: {row['refused']} |" + "|" * 9)  # 11 cells, as the header
            continue
        m, v = row["measured"], row.get("verify") or {}
        err = f"{v['max_abs_err']:.1e}" if "max_abs_err" in v else "—"
        marks = noise_marks(dense, m)
        noisy = noisy or any(marks.values())
        lines.append(f"| {row['label']} | {100 * m['top1']:.2f} % | {100 * (dense['top1'] - m['top1']):.2f} | "
                     f"{m['cpu_ms']:.3f} | {m['speedup_cpu']:.2f}x{marks['cpu']} | {m['wall_ms']:.3f} | "
                     f"{m['speedup_wall']:.2f}x{marks['wall']} | {m['params']:,} | {m['flops'] / 1e9:.4f} | "
                     f"{m['onnx_bytes'] / 1024:.0f} | {err} |")
    return "\n".join(lines + (["", NOISE_NOTE] if noisy else []))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in report["rows"].values():
        if "measured" in row:
            m = row["measured"]
            ax.scatter(m["speedup_cpu"], 100 * m["top1"], s=18)
            ax.annotate(row["label"], (m["speedup_cpu"], 100 * m["top1"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="speedup over dense fp32 (single-thread CPU time, side by side)", ylabel="test top-1 %",
           title=f"vitrt study: {report['model']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(config: StudyConfig) -> int:
    report = run(config)
    print(f"wrote {config.out}/study.md ({len(report['rows'])} rows)")
    return 0


def add_subcommands(sub) -> None:
    add_command(sub, "study", StudyConfig, _run,
                "the empirical study: every compression method alone and stacked, one table of top-1, latency side "
                "by side, parameters, FLOPs and size")
