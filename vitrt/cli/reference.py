"""``vitrt reference``: the shipped digits reference model — show it, or retrain it and compare bit for bit."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OptionError
from vitrt.compiler.options import add_command, option
from vitrt.compiler.output import check_output_dir


@dataclass(frozen=True)
class ReferenceConfig:
    retrain: bool = option(False, "train the reference again with its recipe and report whether the result matches "
                                  "the shipped weights (about 3.5 minutes on an idle 2-core machine)")
    out: Path | None = option(None, "with --retrain: also write the trained weights and their info here",
                              flag="-o/--out", type=Path, metavar="DIR")
    force: bool = option(False, "replace a non-empty -o DIR that vitrt wrote")
    quiet: bool = option(False, "no progress output")


def run(config: ReferenceConfig) -> int:
    from vitrt.calib.reference import ReferenceRecipe, load_reference, retrain_and_compare, shipped_paths
    from vitrt.compiler.progress import Progress

    recipe = ReferenceRecipe()
    if config.out is not None:  # checked before minutes of training, not after
        if not config.retrain:
            raise OptionError("-o writes retrained weights: add --retrain")
        check_output_dir(config.out, config.force)
    elif config.force:
        raise OptionError("--force replaces -o DIR: add -o (with --retrain)")
    if not config.retrain:
        _, info = load_reference(recipe)
        weights, _ = shipped_paths(recipe)
        print(f"digits reference {recipe.name}: {info['test_top1'] * 100:.2f} % test top-1, weights {weights}")
        return 0
    report = retrain_and_compare(recipe, config.out, Progress(enabled=not config.quiet), force=config.force)
    print(json.dumps(report, indent=2))
    if not report.get("matches_shipped", True):
        print(f"vitrt: the retrained weights differ from the shipped ones (max abs difference "
              f"{report['max_abs_weight_difference']:.3g}; test top-1 {100 * report['test_top1']:.2f} % vs shipped "
              f"{100 * report['shipped_test_top1']:.2f} %)", file=sys.stderr)
        return 1
    return 0


def add_subcommands(sub) -> None:
    add_command(sub, "reference", ReferenceConfig, run, "the digits reference model: show, or --retrain and compare")
