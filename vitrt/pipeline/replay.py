"""The twin record: what a compile keeps (``--keep-twin``) so that its verification reference can be rebuilt later.

    OUT/twin/record.json   spec of the canonical twin, the target, the stages in order and each stage's plan (JSON)
    OUT/twin/arrays.npz    the canonical twin's parameters (``twin/<name>``) and the plans' arrays (``<stage>/<key>``)

Nothing is pickled: the JSON is read with :func:`~vitrt.compiler.jsonfile.read_json`, the arrays with
``np.load(allow_pickle=False)``. Loading rebuilds the canonical twin, then every plan from its JSON on the spec its
stage planned on, so :func:`Record.twin_after` gives the same twins the compile had (the last one is what
``--verify`` compared the graph with) and :func:`Record.rewrite` the same graph from the same (or changed) plans —
what ``vitrt compare`` and its bisection run.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import onnx

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.jsonfile import read_json
from vitrt.compiler.spec import ViTSpec
from vitrt.compiler.target import TargetConfig
from vitrt.pipeline.plan_codecs import stage_codec

RECORD_DIR = "twin"
RECORD_FORMAT = 1
TARGET_FIELDS = ("backend", "batch", "dynamic_batch", "precision", "opset")


def load_plan(stage: str, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray], spec: ViTSpec):
    """A stage's plan from its JSON and arrays, validated against the spec its stage planned on: the recipe's
    decoder of that stage (:mod:`vitrt.pipeline.plan_codecs`, one reader for recipes and records alike)."""
    found = stage_codec(stage)
    if found is None:
        raise VitrtError(f"twin record: no loader for the plan of stage '{stage}' (made by a newer vitrt?)")
    plan = found[1](data, arrays)
    if not hasattr(plan, "to_dict"):  # decoded against the spec its stage meets (the scale table's shapes)
        plan = plan(SimpleNamespace(spec=spec))
    return plan


def save_record(directory: Path, twin, plans: Mapping[str, Any], target: TargetConfig, seed: int = 0) -> None:
    """Write the canonical ``twin`` (before any stage) and the ``plans`` (stage name -> plan, in STAGES order)."""
    from vitrt.compiler.weights import parameter_state

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"twin/{k}": v for k, v in parameter_state(twin).items()}
    encoded = {}
    for stage, plan in plans.items():  # the codec :func:`load_plan` decodes with: one format for recipes and records
        found = stage_codec(stage)
        if found is None:
            raise VitrtError(f"twin record: no codec for the plan of stage '{stage}'")
        encoded[stage], plan_arrays = found[0](plan)
        arrays.update({f"{stage}/{k}": np.asarray(v) for k, v in plan_arrays.items()})
    record = {"format": RECORD_FORMAT, "spec": twin.spec.to_dict(), "seed": seed,
              "target": {k: getattr(target, k) for k in TARGET_FIELDS}, "stages": list(plans), "plans": encoded}
    with open(directory / "arrays.npz", "wb") as f:
        np.savez(f, **arrays)
    (directory / "record.json").write_text(json.dumps(record, indent=1) + "\n")


@dataclass
class Record:
    """A compile's canonical twin, target and plans, rebuilt from OUT/twin."""

    twin: Any  # the canonical twin before any stage (a CanonicalViT)
    target: TargetConfig
    plans: dict[str, Any]  # stage name -> plan, in the order the compile ran them
    seed: int = 0
    twins: list = field(default_factory=list)  # twins[i]: before stage i; twins[-1]: after every stage

    @property
    def stages(self) -> list[str]:
        return list(self.plans)

    def twin_after(self, skip: tuple[str, ...] = (), plans: Mapping[str, Any] | None = None):
        """The twin after every stage (the verification reference); stages in ``skip`` left out, ``plans``
        replacing the recorded ones by stage name."""
        plans = {**self.plans, **(plans or {})}
        if not skip and plans == self.plans and self.twins:
            return self.twins[-1]
        twin = self.twin
        for stage in self.stages:
            if stage not in skip:
                twin = stage_row(stage).graph_pass(plans[stage]).apply_to_twin(twin)
        return twin

    def rewrite(self, plans: Mapping[str, Any] | None = None, skip: tuple[str, ...] = ()) -> onnx.ModelProto:
        """The compiled graph made again: the canonical twin lowered for the target and every stage's pass (with
        ``plans`` replacing recorded ones, stages in ``skip`` left out), then cleanup — as compile does it."""
        from vitrt.compiler.graph import GraphView
        from vitrt.compiler.lower import lower
        from vitrt.compiler.pass_manager import PassContext, PassManager
        from vitrt.pipeline.stages import FINAL_PASSES

        plans = {**self.plans, **(plans or {})}
        view = GraphView.from_onnx(lower(self.twin, batch=self.target.static_batch, opset=self.target.opset))
        passes = [stage_row(s).graph_pass(plans[s]) for s in self.stages if s not in skip]
        return PassManager(passes + [p() for p in FINAL_PASSES]).run(view, PassContext(seed=self.seed)).view.to_onnx()


def stage_row(name: str):
    from vitrt.pipeline.stages import STAGES

    for stage in STAGES:
        if stage.name == name:
            return stage
    raise VitrtError(f"twin record: unknown stage '{name}'")


def has_record(out: Path) -> bool:
    return (Path(out) / RECORD_DIR / "record.json").is_file()


def load_record(out: Path) -> Record:
    """The record in ``OUT/twin`` (one-line VitrtError when it is missing or damaged)."""
    from vitrt.compiler.twin import CanonicalViT
    from vitrt.compiler.weights import load_parameter_state

    directory = Path(out) / RECORD_DIR
    if not has_record(out):
        raise VitrtError(f"'{out}' has no twin record ({RECORD_DIR}/record.json): compile it again with --keep-twin")
    data = read_json(directory / "record.json", "twin record", "compile again with --keep-twin")
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise VitrtError(f"twin record '{directory}': format {data.get('format') if isinstance(data, dict) else None!r}"
                         f" is not {RECORD_FORMAT}; compile again with --keep-twin")
    try:
        with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise VitrtError(f"twin record '{directory}': cannot read arrays.npz ({exc})") from None
    try:
        spec = ViTSpec.from_dict(data["spec"])
        target = TargetConfig(**{k: data["target"][k] for k in TARGET_FIELDS})
        stages = list(data["stages"])
        raw_plans = {stage: data["plans"][stage] for stage in stages}
        seed = int(data.get("seed", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise VitrtError(f"twin record '{directory}': missing or invalid field {exc}") from None
    twin = CanonicalViT(spec).eval()
    state = {k[len("twin/"):]: v for k, v in arrays.items() if k.startswith("twin/")}
    missing = sorted(set(dict(twin.named_parameters())) - set(state))
    if missing:
        raise VitrtError(f"twin record '{directory}': no weights for '{missing[0]}' ({len(missing)} missing)")
    load_parameter_state(twin, state)
    record = Record(twin, target, {}, seed, [twin])
    current = twin
    for stage in stages:
        prefix = f"{stage}/"
        plan = load_plan(stage, raw_plans[stage], {k[len(prefix):]: v for k, v in arrays.items()
                                                    if k.startswith(prefix)}, current.spec)
        record.plans[stage] = plan
        current = stage_row(stage).graph_pass(plan).apply_to_twin(current)
        record.twins.append(current)
    return record
