"""The shape every transform has, and what its planner and report may read.

A transform is one sub-package of :mod:`vitrt.transforms` with

* a **plan**: plain data, frozen, validated when built or loaded, ``to_dict`` / ``from_dict`` round-tripping
  through JSON (tensors a planner computed — fine-tuned weights, 2:4 masks — travel as numpy arrays beside it);
* a **planner** ``plan(twin, ctx, options) -> Plan``: every data-driven step (importance and search, schedule
  solving, masks and sparse fine-tuning, calibration and QAT) happens here, on the torch twin, with the
  shared trainer; it never modifies ``twin``;
* a **graph pass** ``Pass(plan)``: stateless, ``run(view, ctx)`` rewrites the ONNX, ``apply_to_twin(twin)``
  returns a new twin with the same change (the verification reference, and what the next stage plans on);
* a **report** (optional): the manifest section and OUT files (plots, the plan as JSON) — made from the plan
  and the twins, never by the pass;
* its **options** (a frozen config class, one section of :class:`vitrt.pipeline.config.CompileConfig`) and a
  test file with the common recipe.

A :class:`Transform` value ties these together; :data:`vitrt.pipeline.stages.STAGES` orders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from vitrt.compiler.pass_manager import Pass
from vitrt.compiler.progress import QUIET, Progress
from vitrt.compiler.target import TargetConfig

FileWriter = Callable[[Path], None]


@dataclass(frozen=True)
class PlanContext:
    """What a planner may read besides the twin it plans on and its own options."""

    target: TargetConfig
    teacher: Any  # the dense twin as loaded, before any stage (never modified; the distillation teacher)
    plans: Mapping[str, Any] = field(default_factory=dict)  # the plans of the stages before, by transform name
    lut: Any = None  # the --lut LatencyTable, if one was given (checked against the target)
    lut_path: Path | None = None
    model: str = ""
    seed: int = 0
    progress: Progress = QUIET
    preprocessing: Mapping[str, Any] | None = None  # the model's input pipeline (the manifest's section)

    def data(self, source: str, split: str = "train", limit: int | None = None, labelled: bool = False):
        """A :class:`~vitrt.calib.data.Dataset` of ``source`` (digits, synthetic, synth:SET or an ImageFolder path,
        whose images go through ``preprocessing``); ``labelled``: its labels are used (training with the hard
        label, top-1), so an ImageFolder must have the model's classes."""
        from vitrt.calib.data import load_data

        spec = self.teacher.spec
        return load_data(source, spec.img, split=split, limit=limit, seed=self.seed, preprocessing=self.preprocessing,
                         num_classes=spec.num_classes if labelled else None, in_chans=spec.in_chans)


@dataclass(frozen=True)
class ReportContext:
    """What a report may read: the twins around its stage, the target and the model name."""

    twin_before: Any
    twin_after: Any
    target: TargetConfig
    model: str = ""
    progress: Progress = QUIET


@dataclass
class StageReport:
    manifest: dict = field(default_factory=dict)  # the transform's manifest section
    files: dict[str, FileWriter] = field(default_factory=dict)  # OUT file name -> writer(path)


@dataclass(frozen=True)
class Finished:
    """What the compile knows once the artifact is built (and, with --bench, measured)."""

    out: Path  # the staging directory that becomes OUT
    build: Mapping[str, Any]  # the backend's build information (e.g. TensorRT's sparse-tactic layers)
    versus_dense: Mapping[str, Any] | None  # dense vs compiled, timed side by side (None without --bench)


@dataclass(frozen=True)
class Transform:
    name: str  # the key of its plan among earlier plans, e.g. "prune"
    manifest_key: str  # its manifest section, e.g. "pruning"
    section: str | None  # the CompileConfig attribute holding its options (None: target options only)
    enabled: Callable[[Any, TargetConfig], bool]  # (options, target) -> whether the compile runs this stage
    plan: Callable[[Any, PlanContext, Any], Any]  # (twin, ctx, options) -> plan
    graph_pass: type[Pass]  # constructed with the plan: graph_pass(plan)
    report: Callable[[Any, ReportContext], StageReport] | None = None
    finish: Callable[[Any, dict, Finished], dict[str, FileWriter]] | None = None  # (plan, section, results)
