"""Recipes: a compile written down so that ``vitrt compile MODEL --recipe recipe.json -o OUT`` replays it bit for bit.

A recipe is the compile's options *and* every stage's plan (what the planners computed: kept indices and fine-tuned
weights, the merge schedule, low-rank factors, 2:4 masks, the scale table and QAT weights), so a replay plans
nothing: it loads the plans and runs the same passes, and the same inputs give the same ``model.onnx`` bytes.

    recipe.json                 {"format": "vitrt.recipe", "version": 1, "model": ..., "options": {...},
                                 "plans": {"prune": "recipe/prune.json", ...}, "meta": {...}}
    recipe/<stage>.json (.npz)  each plan's JSON and its arrays

``options`` are flat compile options (as the CLI and :func:`vitrt.compile` take them) that select the target and
switch the stages on; a stage that needs a file to be switched on (``--prune-plan``, ``--lowrank-plan``) names
its plan file in the recipe directory. ``meta`` says how the plans were made (e.g. the search that chose them).

The model ``digits`` is the shipped digits reference (:func:`vitrt.calib.reference.load_reference`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.jsonfile import read_json
from vitrt.compiler.known_models import is_digits_model
from vitrt.pipeline.plan_codecs import STAGES_WITH_PLANS, stage_codec

FORMAT, VERSION = "vitrt.recipe", 1
# Options a replay may set on top of a recipe: where to write and what to check, not what to compile.
REPLAY_OPTIONS = ("model", "out", "force", "quiet", "verify", "bench", "bench_iters", "bench_warmup", "bench_clock",
                  "lut", "refine_lut", "threads", "timing_cache", "recipe", "eval_data", "metric_set", "keep_twin")


class RecipeError(VitrtError):
    """A malformed or mismatched recipe (one line, exit code 2)."""


# --- plans <-> files -----------------------------------------------------------------------------------------
def codec(stage: str) -> tuple[Callable, Callable]:
    """(plan -> (JSON dict, arrays), (JSON dict, arrays) -> plan or twin -> plan) for the stage's plan type."""
    found = stage_codec(stage)
    if found is None:
        raise RecipeError(f"recipe names an unknown stage '{stage}' (known: {', '.join(STAGES_WITH_PLANS)})")
    return found


def write_plan(stage: str, plan, directory: Path) -> str:
    """Write ``plan`` as ``directory/<stage>.json`` (+ ``.npz``); returns the JSON's name. The prune and low-rank
    plans are written in their own file format, which ``--prune-plan`` / ``--lowrank-plan`` read."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stage}.json"
    if stage in ("prune", "lowrank"):
        plan.save(path)
        return path.name
    data, arrays = codec(stage)[0](plan)
    if arrays:
        with open(path.with_suffix(".npz"), "wb") as f:
            np.savez(f, **arrays)
        data = {**data, "arrays_file": path.with_suffix(".npz").name}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path.name


def read_plan(stage: str, path: Path):
    """The plan in ``path`` (or, for the scale table, a function of the twin the stage meets)."""
    import zipfile

    if stage == "prune":
        from vitrt.transforms.prune.plan import PruningPlan

        return PruningPlan.load(path)
    if stage == "lowrank":
        from vitrt.transforms.lowrank.plan import LowRankPlan

        return LowRankPlan.load(path)
    data = read_json(path, f"{stage} plan", "the recipe directory is incomplete", error=RecipeError)
    arrays = {}
    if isinstance(data, dict) and data.get("arrays_file"):
        try:
            with np.load(path.parent / Path(data["arrays_file"]).name, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise RecipeError(f"cannot read the arrays of the {stage} plan '{path}': {exc}") from None
    return codec(stage)[1](data, arrays)


# --- the recipe ----------------------------------------------------------------------------------------------
@dataclass
class Recipe:
    model: str
    options: dict  # flat compile options that select the target and switch the stages on
    plan_files: dict[str, str]  # stage -> plan JSON, relative to the recipe file
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def plans(self) -> dict[str, Any]:
        base = self.path.parent if self.path is not None else Path(".")
        return {stage: read_plan(stage, base / name) for stage, name in self.plan_files.items()}

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "options": self.options,
                "plans": self.plan_files, "meta": self.meta}


def write_recipe(path: Path, model: str, options: dict, plans: dict[str, Any], meta: dict | None = None) -> Recipe:
    """Write ``recipe.json`` at ``path`` and the plans under ``path``'s stem directory (``recipe/``).

    ``options`` are the compile options the plans were made with; options that name a plan file are pointed at the
    written plan, and those only planning needs are left out (they are in ``meta``)."""
    from vitrt.compiler.options import leaves
    from vitrt.pipeline.config import CompileConfig

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = path.with_suffix("")
    files = {stage: f"{directory.name}/{write_plan(stage, plan, directory)}" for stage, plan in plans.items()}
    known = {leaf.name for leaf in leaves(CompileConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise RecipeError(f"recipe options {unknown} are not compile options")
    replay = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in options.items()
              if k not in PLANNING_ONLY and k not in REPLAY_OPTIONS}
    if "prune" in plans:  # an NViT or a DC-ViT plan: either way the replay loads it
        replay.pop("prune", None)
        replay.pop("dcvit_macs", None)
        replay["prune_plan"] = files["prune"]
    if "lowrank" in plans:
        for key in ("lowrank", "lowrank_budget"):
            replay.pop(key, None)
        replay["lowrank_plan"] = files["lowrank"]
    recipe = Recipe(model, replay, files, dict(meta or {}), path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(recipe.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return recipe


# Options only the planners read: a replay plans nothing, so they are recorded in meta, not in options. The token-merge
# targets (--tome-flops, --tome-latency) stay: with the recipe's merge plan given they only switch the stage on.
PLANNING_ONLY = ("data", "importance", "eta", "prune_samples", "finetune_epochs", "revit", "tome_lut",
                 "sparse_finetune_epochs", "sparse_data", "permute", "calib_data", "calib_method",
                 "calib_images", "qat_epochs", "scale_table", "lowrank_finetune_epochs", "lowrank_data", "lowrank_layers",
                 "lowrank_align", "prune_plan", "lowrank_plan", "distill_data", "few_shot", "dcvit_metric", "dcvit_mlp",
                 "dcvit_epochs", "dcvit_score_epochs", "dcvit_lr", "dcvit_whole_blocks", "dcvit_mlp_only",
                 "dcvit_refit")


def read_recipe(path) -> Recipe:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise RecipeError(f"recipe must be the path of a recipe.json (a str or path), got {path!r}")
    path = Path(path)
    data = read_json(path, "recipe", "write one with vitrt optimize (OUT/recipe.json)", error=RecipeError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecipeError(f"'{path}' is not a vitrt recipe (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise RecipeError(f"recipe '{path}' has version {data.get('version')!r}; this vitrt reads version {VERSION}")
    try:
        recipe = Recipe(str(data["model"]), dict(data["options"]), dict(data["plans"]), dict(data.get("meta") or {}),
                        path)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecipeError(f"recipe '{path}' is malformed: missing or invalid field {exc}") from None
    for stage, name in recipe.plan_files.items():
        codec(stage)
        if (not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts
                or not (path.parent / name).is_file()):
            raise RecipeError(f"recipe '{path}': the {stage} plan '{name}' is not a file beside it")
    return recipe


def replay_config(recipe: Recipe, overrides: dict):
    """The CompileConfig of ``recipe`` with ``overrides`` (only the options in REPLAY_OPTIONS may be given)."""
    from vitrt.compiler.options import from_options, leaves
    from vitrt.pipeline.config import CompileConfig

    overrides = {k: v for k, v in overrides.items() if v is not None}  # None: not given (config=None from Python)
    known = {leaf_.name for leaf_ in leaves(CompileConfig)}
    unknown = sorted(k for k in overrides if k not in known and k != "recipe")
    if unknown:
        raise OptionError(f"unknown option '{unknown[0]}' for a recipe replay (it takes only output and check "
                          "options)")
    refused = sorted(k for k in overrides if k not in REPLAY_OPTIONS)
    if refused:
        raise OptionError(f"--recipe sets what is compiled; drop --{refused[0].replace('_', '-')} (a replay takes only "
                          f"output and check options)")
    base = recipe.path.parent if recipe.path is not None else Path(".")
    options = dict(recipe.options)
    for key in ("prune_plan", "lowrank_plan", "scale_table"):
        if key in options:
            options[key] = base / options[key]
    options.update({k: v for k, v in overrides.items() if k != "recipe"})
    return from_options(CompileConfig, options)


def compile_recipe(recipe_path, model: str | None = None, progress=None, module=None, name: str | None = None,
                   **overrides):
    """``vitrt compile MODEL --recipe recipe.json -o OUT``: the recipe's options and plans, nothing planned again.

    ``module``: the model itself (Python API), for a recipe made for a module rather than a name; ``name``: what the
    manifest calls it (default: the recipe's model). The same model weights and recipe give the same ``model.onnx``
    bytes (a timm name without --checkpoint has timm's initialisation under a fixed seed: the same weights too)."""
    from vitrt.pipeline.config import check_outside_out
    from vitrt.pipeline.driver import compile, resolve_model

    recipe = read_recipe(recipe_path)
    same = model == recipe.model or (is_digits_model(model) and is_digits_model(recipe.model))
    if model is not None and not same:
        raise RecipeError(f"recipe '{recipe_path}' was made for model '{recipe.model}', not '{model}'")
    label = recipe.model
    if module is None:
        module, label = resolve_model(recipe.model)
    config = replay_config(recipe, overrides)
    if config.force and config.out is not None:  # the replay's config does not carry the recipe's own path
        check_outside_out("--recipe", recipe_path, config.out)
    if module is not None:
        config = config.replace(model=None)
    return compile(module if module is not None else label, config=config, progress=progress, name=name or label,
                   plans=recipe.plans(), replay_of=recipe_path)
