"""``vitrt sparsity-digits``: top-1 of the digits reference before and after 2:4 sparsity and sparse fine-tuning.

Compiles the shipped digits reference ViT with ``--sparsity 2:4`` (one-shot masks, then with N epochs of sparse
fine-tuning; each with and without channel permutation), verifies every ONNX against its twin, and measures
top-1 on the digits test split through the compiled ONNX Runtime artifact. Prints one table; ``-o`` also
writes it as JSON.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import add_command, option
from vitrt.compiler.progress import Progress


@dataclass(frozen=True)
class SparsityDigitsConfig:
    epochs: int = option(5, "epochs of sparse fine-tuning", type=int, metavar="N")
    out: Path | None = option(None, "write the table as JSON here",
                              writes="file", flag="-o/--out", type=Path, metavar="FILE")
    permute: str = option("both", "variants without channel permutation, with it, or both",
                          choices=("without", "with", "both"))
    quiet: bool = option(False, "no progress output")

    def validate(self) -> "SparsityDigitsConfig":
        if self.epochs < 1:
            raise VitrtError(f"--epochs must be >= 1 (the one-shot rows are always measured), got {self.epochs}")
        return self

    def variants(self) -> list[tuple[str, bool, int]]:
        """(row name, permute, fine-tuning epochs) of every compiled row."""
        out = []
        if self.permute in ("without", "both"):
            out += [("2:4 one-shot", False, 0), ("2:4 + fine-tune", False, self.epochs)]
        if self.permute in ("with", "both"):
            out += [("2:4 permuted one-shot", True, 0), ("2:4 permuted + fine-tune", True, self.epochs)]
        return out


def run(config: SparsityDigitsConfig) -> dict:
    from vitrt.calib.digits import digits_split
    from vitrt.calib.evaluate import accuracy, runner_accuracy
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.pipeline.driver import compile

    config.validate()
    progress = Progress(enabled=not config.quiet)
    model, info = load_reference(progress=progress)
    _, test = digits_split(info["recipe"]["img_size"])
    backend = get_backend("ort")
    rows = [{"variant": "dense fp32", "torch_top1": accuracy(model, test), "compiled_top1": None}]
    with tempfile.TemporaryDirectory(prefix="vitrt-sparsity-digits-") as work:
        for name, permute, epochs in config.variants():
            out = Path(work) / name.replace(" ", "_").replace(":", "").replace("+", "ft")
            result = compile(model, out, batch=64, verify=True, sparsity="2:4", permute=permute,
                             sparse_finetune_epochs=epochs, sparse_data="digits" if epochs else None,
                             quiet=config.quiet, progress=progress)
            runner = backend.load(result.artifact_path, BuildOptions())
            sparsity = result.manifest["sparsity"]
            row = {"variant": name, "epochs": epochs, "torch_top1": accuracy(result.twin, test),
                   "compiled_top1": runner_accuracy(runner, test),
                   "max_abs_err": result.manifest["verify"]["max_abs_err"],
                   "eligible_layers": sparsity["eligible"], "skipped_layers": sparsity["skipped"],
                   "fp16_saved_eligible": sparsity["storage"]["fp16"]["eligible_saved"],
                   "fp16_saved_model": sparsity["storage"]["fp16"]["saved"]}
            if "permutation" in sparsity:
                row["retained_without"] = sparsity["permutation"]["mean_retained_without"]
                row["retained_with"] = sparsity["permutation"]["mean_retained_with"]
            if sparsity.get("finetune"):
                row["finetune_seconds"] = sparsity["finetune"]["seconds"]
                row["per_feature_losses"] = sparsity["finetune"]["per_feature_losses"]
            rows.append(row)
    print_table(rows, len(test))
    table = {"test_images": len(test), "reference": info, "rows": rows}
    if config.out:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(table, indent=2))
    return table


def print_table(rows: list[dict], test_images: int) -> None:
    dense = rows[0]["torch_top1"]
    print(f"\ndigits reference ViT, {test_images} test images; 2:4 on all eligible layers (ONNX Runtime artifact)")
    print(f"{'variant':<26} {'epochs':>6} {'torch top-1':>11} {'ONNX top-1':>10} {'Δ vs dense':>10} {'max |err|':>9}")
    for r in rows:
        onnx_top1 = r["compiled_top1"]
        delta = "" if onnx_top1 is None else f"{(onnx_top1 - dense) * 100:+.2f}"
        print(f"{r['variant']:<26} {r.get('epochs', ''):>6} {r['torch_top1'] * 100:>10.2f}% "
              f"{'' if onnx_top1 is None else f'{onnx_top1 * 100:.2f}%':>10} {delta:>10} "
              f"{'' if 'max_abs_err' not in r else format(r['max_abs_err'], '.1e'):>9}")


def main(config: SparsityDigitsConfig) -> int:
    run(config)
    return 0


def add_subcommands(sub) -> None:
    add_command(sub, "sparsity-digits", SparsityDigitsConfig, main,
                "top-1 of the digits reference with 2:4 sparsity, before and after sparse fine-tuning")
