"""The compile's configuration: the model and output, the target, the checks, and one section per stage.

Nested and frozen; the ``vitrt compile`` flags and the keyword options of :func:`vitrt.compile` are derived
from it (:mod:`vitrt.compiler.options`). A stage's section belongs to its transform sub-package.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from vitrt.calib.synthesis_config import SET_METADATA, SYNTH_PREFIX
from vitrt.compiler.errors import DataError, OptionError
from vitrt.compiler.options import get, leaves, option, replace_options, section
from vitrt.compiler.target import TargetConfig
from vitrt.compiler.timing import CLOCKS, check_clock, default_clock
from vitrt.transforms.distill.config import DistillConfig
from vitrt.transforms.lowrank.config import LowRankConfig
from vitrt.transforms.prune.config import PruneConfig
from vitrt.transforms.quant.config import QUANT_PRECISIONS, QuantConfig
from vitrt.transforms.sparsity.config import SparsityConfig
from vitrt.transforms.tome.config import TomeConfig


@dataclass(frozen=True)
class CheckConfig:
    """What to verify and measure after the build."""

    verify: bool = option(False, "check the ONNX against the torch twin after every pass and at the end")
    bench: bool = option(False, "benchmark the built artifact (median / p90 / p99 latency, per-block times)")
    bench_iters: int = option(50, "timed iterations for --bench", type=int, metavar="N")
    bench_warmup: int = option(10, "warm-up iterations for --bench", type=int, metavar="N")
    bench_clock: str | None = option(None, "clock of --bench: wall (default on the CPU), cpu (least single-thread "
                                     "CPU time: steady on a shared machine, needs --threads 1; for a cpu-clock "
                                     "--lut) or cuda (CUDA events, default on a GPU)", choices=CLOCKS)
    lut: Path | None = option(None, "latency table (vitrt lut build): add its prediction as latency.predicted_ms "
                              "(needs --bench); also steers --prune", type=Path, metavar="LUT")
    refine_lut: bool = option(False, "after a successful compile, fold the measured per-block latency into --lut")
    metric_set: str | None = option(None, "data-free accuracy estimate: the artifact's metric loss on this set "
                                    "(synth:SET from vitrt synth) in the manifest's accuracy section", metavar="DATA")
    eval_data: str | None = option(None, "real accuracy: the artifact's top-1 on this labelled data's test split "
                                   "(digits or an ImageFolder PATH) in the manifest's accuracy section",
                                   metavar="DATA")
    keep_twin: bool = option(False, "also write OUT/twin/ (the canonical twin's weights and every stage's plan, no "
                                    "pickles) so that vitrt compare can rebuild the verification reference")

    def validate(self) -> "CheckConfig":
        if self.bench_iters < 1 or self.bench_warmup < 0:
            raise OptionError("--bench-iters must be >= 1 and --bench-warmup >= 0")
        if self.refine_lut and self.lut is None:
            raise OptionError("--refine-lut needs --lut LUT (the table to update)")
        if self.refine_lut and not self.bench:
            raise OptionError("--refine-lut folds --bench's measurement into --lut: add --bench")
        return self


# The options that name a data source (digits, synthetic, synth:SET or an ImageFolder directory)
DATA_OPTIONS = frozenset({"data", "calib_data", "distill_data", "lowrank_data", "sparse_data", "eval_data",
                          "metric_set", "dcvit_metric"})


@dataclass(frozen=True)
class CompileConfig:
    model: str | None = option(None, "timm model name (e.g. deit_small_patch16_224)", positional=True)
    out: Path | None = option(None, "output directory (must not exist or be empty unless --force)", flag="-o/--out",
                              type=Path, metavar="OUT")
    img_size: int | None = option(None, "input image size (default: the model's)", type=int, metavar="N")
    checkpoint: Path | None = option(None, "state dict to load (read with torch.load(weights_only=True))",
                                     type=Path, metavar="PATH")
    pretrained: bool = option(False, "download timm's pretrained weights (needs a reachable model hub)")
    force: bool = option(False, "replace a non-empty output directory that vitrt wrote")
    seed: int = option(0, "seed for verification inputs and data-driven passes", type=int, metavar="N")
    quiet: bool = option(False, "no progress output")
    recipe: Path | None = option(None, "replay a recipe (OUT/recipe.json of vitrt optimize): its options and plans, "
                                 "nothing planned again; only output and check options may be added",
                                 type=Path, metavar="RECIPE")
    target: TargetConfig = section(TargetConfig)
    checks: CheckConfig = section(CheckConfig)
    prune: PruneConfig = section(PruneConfig)
    tome: TomeConfig = section(TomeConfig)
    distill: DistillConfig = section(DistillConfig)
    lowrank: LowRankConfig = section(LowRankConfig)
    sparsity: SparsityConfig = section(SparsityConfig)
    quant: QuantConfig = section(QuantConfig)

    def validate(self) -> "CompileConfig":
        """Option-level checks, before any model is loaded (one-line VitrtError naming the flag)."""
        if self.img_size is not None and self.img_size < 1:
            raise OptionError(f"--img-size must be positive, got {self.img_size}")
        if self.seed < 0:  # numpy's generators take none below 0
            raise OptionError(f"--seed must be >= 0, got {self.seed}")
        self.target.validate()
        self.checks.validate()
        self.prune.validate()
        self.tome.validate()
        self.distill.validate()
        self.lowrank.validate()
        self.sparsity.validate()
        self.quant.validate(self.target.precision)
        self.check_parents()  # after the sections' own checks, whose messages are more specific
        if self.distill.enabled and not (self.prune.enabled or self.tome.enabled):
            # distillation runs after pruning and merging and before low rank, sparsity and quantization: with
            # nothing before it, it would fine-tune the dense model and recover nothing the later stages lose
            raise OptionError("--distill-epochs fine-tunes a pruned or token-merged model (--prune, --prune-plan, "
                              "--revit, --dcvit-macs, --tome...): nothing before it compresses; low rank, 2:4 and "
                              "int8 have their own (--lowrank-finetune-epochs, --sparse-finetune-epochs, --qat-epochs)")
        if self.checks.lut is not None and not self.checks.bench and self.prune.fraction is None \
                and self.tome.latency is None:
            raise OptionError("--lut needs --bench (or --prune, --tome-latency): the prediction is recorded beside the "
                              "measured latency")
        if self.checks.bench_clock is not None:
            if not self.checks.bench:
                raise OptionError("--bench-clock sets the clock of --bench: add --bench")
            check_clock(self.checks.bench_clock, self.target.backend, self.target.threads, self.target.device,
                        flag="--bench-clock")
        if self.target.no_build and (self.checks.bench or self.checks.refine_lut):
            raise OptionError("--no-build builds no engine to benchmark: drop --bench / --refine-lut, or --no-build")
        if self.target.no_build and (self.checks.metric_set is not None or self.checks.eval_data is not None):
            raise OptionError("--no-build builds no engine to measure: drop --metric-set / --eval-data, or --no-build")
        if self.prune.fraction is not None and self.checks.lut is None:
            raise OptionError("--prune needs --lut LUT (build one with: vitrt lut build --backend ort --grid coarse "
                             "--batch N -o LUT)")
        if self.lowrank.enabled and (self.sparsity.enabled or self.target.precision != "fp32"):
            raise OptionError("--lowrank composes with --prune and token merging at --precision fp32: factored layers "
                              "are not masked (--sparsity), quantized or typed (--precision) yet")
        self.check_paths()
        return self

    # Options that act only through another: given (not at their default) without it, they would be ignored.
    # (section, option names, whether what they act through is on, how to turn it on)
    PARENTS = (
        ("checks", ("bench_iters", "bench_warmup"), lambda c: c.checks.bench, "--bench"),
        ("prune", ("data", "importance", "eta", "samples"), lambda c: c.prune.enabled,
         "--prune, --prune-plan, --revit or --dcvit-macs"),
        # a given --prune-plan is planned already: what plans (and scores importance) has nothing to act on
        ("prune", ("eta",), lambda c: c.prune.fraction is not None, "--prune (the latency-aware search)"),
        ("prune", ("samples",), lambda c: c.prune.fraction is not None or c.prune.revit,
         "--prune or --revit (importance scoring)"),
        ("prune", ("importance",), lambda c: c.prune.fraction is not None or c.prune.revit
         or c.prune.dcvit_macs is not None, "--prune, --revit or --dcvit-macs (a --prune-plan is planned already)"),
        ("prune", ("data",), lambda c: c.prune.fraction is not None or c.prune.revit or c.prune.dcvit_macs is not None
         or c.prune.finetune_epochs > 0, "--prune, --revit, --dcvit-macs or --finetune-epochs"),
        ("distill", ("data",), lambda c: c.distill.enabled, "--distill-epochs"),
        ("tome", ("lut",), lambda c: c.tome.latency is not None, "--tome-latency"),
        ("lowrank", ("layers", "align"), lambda c: c.lowrank.energy is not None or c.lowrank.budget is not None,
         "--lowrank or --lowrank-budget (a --lowrank-plan names its layers and ranks)"),
        ("lowrank", ("data",), lambda c: c.lowrank.enabled, "--lowrank, --lowrank-budget or --lowrank-plan"),
        ("lowrank", ("data",), lambda c: c.lowrank.finetune_epochs > 0, "--lowrank-finetune-epochs"),
        ("sparsity", ("data", "min_weights"), lambda c: c.sparsity.enabled, "--sparsity 2:4"),
        ("sparsity", ("data",), lambda c: c.sparsity.finetune_epochs > 0, "--sparse-finetune-epochs"),
        ("quant", ("calib_method", "calib_images"), lambda c: c.target.precision in QUANT_PRECISIONS,
         "--precision int8 or fp8"),
        ("target", ("timing_cache",), lambda c: c.target.backend == "trt", "--backend trt"),
    )

    def check_parents(self) -> None:
        """Refuse an option given without what it acts through (:attr:`PARENTS`), naming both."""
        from vitrt.compiler.options import leaves

        flags = {leaf.path: leaf.flags[0] for leaf in leaves(CompileConfig)}
        for section_name, names, on, parent in self.PARENTS:
            section = getattr(self, section_name)
            defaults = {f.name: f.default for f in dataclasses.fields(section)}
            given = [n for n in names if getattr(section, n) != defaults[n]]
            if given and not on(self):
                flag = flags[(section_name, given[0])]
                raise OptionError(f"{flag} acts only with {parent}; without it, drop {flag}")

    @property
    def bench_clock(self) -> str:
        """The clock ``--bench`` measures on: ``--bench-clock``, else CUDA events on a GPU (trt, torch on cuda) and
        the wall clock on the CPU."""
        return self.checks.bench_clock or default_clock(self.target.backend, self.target.device)

    def check_paths(self) -> None:
        """Every file and data source an option names exists (cheap: nothing is read yet)."""
        for flag, path in (("--checkpoint", self.checkpoint), ("--prune-plan", self.prune.plan),
                           ("--scale-table", self.quant.scale_table), ("--lut", self.checks.lut),
                           ("--tome-lut", self.tome.lut),
                           ("--lowrank-plan", self.lowrank.plan), ("--recipe", self.recipe)):
            if path is not None and not Path(path).is_file():
                raise OptionError(f"{flag} '{path}' does not exist or is not a file")
        used = [("--data", self.prune.data, self.prune.enabled and (self.prune.fraction is not None or self.prune.revit
                                                                    or self.prune.finetune_epochs > 0)),
                ("--sparse-data", self.sparsity.data, self.sparsity.finetune_epochs > 0),
                ("--lowrank-data", self.lowrank.data, self.lowrank.finetune_epochs > 0),
                ("--distill-data", self.distill.data, self.distill.epochs > 0),
                ("--calib-data", self.quant.calib_data, self.quant.calib_data is not None),
                ("--data", self.prune.data, self.prune.dcvit_macs is not None),
                ("--dcvit-metric", self.prune.dcvit_metric, self.prune.dcvit_macs is not None),
                ("--metric-set", self.checks.metric_set, True), ("--eval-data", self.checks.eval_data, True)]
        if self.checks.eval_data is not None:  # first: its choices are fewer (no synthetic, no synth:SET)
            check_real_labels("--eval-data", self.checks.eval_data, "it measures real top-1")
        for flag, source, needed in used:
            if needed and source is not None:
                check_data_source(flag, source, labelled=flag == "--eval-data")
        if self.force and self.out is not None:
            self.check_inputs_outside_out()

    def check_inputs_outside_out(self) -> None:
        """``--force`` replaces OUT: no file or data the compile reads (a recipe, a plan, a checkpoint, a table, a
        data directory) may lie inside it, or the compile would delete its own input."""
        for leaf_ in leaves(type(self)):
            value = get(self, leaf_)
            is_input = leaf_.name in DATA_OPTIONS or Path in typing.get_args(leaf_.annotation)
            if leaf_.name != "out" and is_input:
                check_outside_out(leaf_.flag, value, self.out)

    def check_against(self, spec) -> None:
        """Every stage's options checked against the spec that stage will meet, before any weights exist.

        Sections are checked in STAGES order; a section's ``check(spec, target)`` returns the spec after its stage
        when that is known without planning (a given pruning plan, an explicit merge schedule), else None — later
        sections then check what needs no spec, and their planners the rest.
        """
        for options in (self.prune, self.tome, self.sparsity, self.quant):
            check = getattr(options, "check", None)
            if check is not None and section_enabled(options, self.target):
                spec = check(spec, self.target)

    def replace(self, **options) -> "CompileConfig":
        """A copy with options changed by their flat names (``batch=8``, ``prune=0.5``)."""
        return replace_options(self, **options)

    def with_sections(self, **sections) -> "CompileConfig":
        return dataclasses.replace(self, **sections)


def section_enabled(options, target) -> bool:
    """Whether the stage a section configures runs (the quantization stage follows the target's precision)."""
    enabled = getattr(options, "enabled", None)
    return enabled if enabled is not None else target.precision in QUANT_PRECISIONS


def check_outside_out(flag: str, value, out) -> None:
    """The input ``flag`` names (a file, a directory or a ``synth:`` set; None: not given) does not lie inside
    ``out``, which ``--force`` replaces."""
    from vitrt.compiler.output import check_outside_out as check_path

    if value is not None:
        check_path(flag, str(value).removeprefix(SYNTH_PREFIX), out, shown=value)


def check_real_labels(flag: str, source: str, why: str) -> None:
    """``source`` has real labels: not ``synthetic`` (none) and not a ``synth:`` set (labels assigned before the
    images were grown from them, so nearly every variant classifies them all "correctly")."""
    if source == "synthetic" or source.startswith(SYNTH_PREFIX):
        hint = f"; its data-free estimate is --metric-set {source}" if source.startswith(SYNTH_PREFIX) else ""
        raise OptionError(f"{flag} must be labelled data (digits or an ImageFolder PATH): {why}{hint}")


def check_data_source(flag: str, source: str, *, labelled: bool = False) -> None:
    """``digits``, ``synthetic``, ``synth:DIR`` (a synthetic metric set) or an ImageFolder directory; a set named
    without ``synth:`` or by its ``images`` folder gets a hint. ``labelled``: the option takes real labels only
    (:func:`check_real_labels`), so the refusal names only those sources. A set must be finished and an ImageFolder
    must hold a class folder with a file in it — found now, not after the work before the data is read; only
    directory entries and a set's metadata are read."""
    if source in ("digits", "synthetic"):
        return
    synth = source.startswith(SYNTH_PREFIX)
    path = Path(source.removeprefix(SYNTH_PREFIX))
    if not path.is_dir():
        if labelled:
            raise DataError(f"{flag} '{source}' is neither digits nor an existing directory (an ImageFolder: "
                            "PATH/<class>/<images>)")
        raise DataError(f"{flag} '{source}' is neither digits, synthetic nor an existing directory (an ImageFolder: "
                        "PATH/<class>/<images>; a synthetic metric set: synth:SET)")
    is_set = (path / SET_METADATA).is_file()
    if synth and not is_set:
        hint = (f"; the set is its parent: synth:{path.parent}" if (path.parent / SET_METADATA).is_file()
                else f": make one with vitrt synth MODEL -o {path}")
        raise DataError(f"{flag} '{source}' is not a synthetic metric set (no {SET_METADATA}){hint}")
    if not synth and is_set:
        raise DataError(f"{flag} '{source}' is a synthetic metric set, not an ImageFolder: name it synth:{source}")
    if synth:
        from vitrt.calib.synthesis import finished_metadata

        try:
            finished_metadata(path)
        except DataError as exc:
            raise DataError(f"{flag}: {exc}") from None
    else:
        check_image_folder(flag, source, path)


def check_image_folder(flag: str, source: str, path: Path) -> None:
    """``path`` holds a class folder with a file in it, as torchvision's ImageFolder needs (it looks at any depth
    below the class folder); the walk stops at the first file, so a large tree costs a few directory listings."""
    import os

    classes = sorted(entry.path for entry in os.scandir(path) if entry.is_dir())
    if not classes:
        raise DataError(f"{flag} '{source}' holds no class folder: an ImageFolder is PATH/<class>/<image files>")
    if not any(files for folder in classes for _, _, files in os.walk(folder, followlinks=True)):
        raise DataError(f"{flag} '{source}' holds class folders but no file in them: an ImageFolder is "
                        "PATH/<class>/<image files>")
