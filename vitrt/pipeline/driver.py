"""``compile()``: timm ViT -> canonical ONNX -> passes -> backend artifact + manifest, written atomically.

    OUT/model.onnx        the compiled graph (canonical names, ViTSpec in metadata_props)
    OUT/<artifact>        the backend's artifact (model.ort.onnx for ort, model.plan for trt)
    OUT/manifest.json     what ran and what it measured (see README: "The manifest")
    OUT/twin/             with --keep-twin: the canonical twin and every plan (vitrt.pipeline.replay)

The compile runs in phases, each finished before the next begins:

1. **check** the options, the output directory, the backend and the latency table (nothing loaded yet);
2. **load** the model and canonicalise it into the torch twin; every stage checks its options against the
   spec; the whole pass schedule (all stages) is checked;
3. **plan** every stage in STAGES order on the twin the stages before it left (importance, schedules, masks,
   calibration, fine-tuning);
4. **rewrite**: lower the original twin once and run one pass manager over every stage's pass (with
   ``--verify``, each pass is checked against the equally transformed twin and against its declared graph
   properties);
5. **build** the backend artifact, write the reports, benchmark (the dense model timed side by side when the
   function changed), and rename the staging directory into OUT.

The caller's model is never modified: twin transforms return new twins.
"""

from __future__ import annotations

import copy
import datetime
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from vitrt._version import __version__
from vitrt.compiler.backends import BuildOptions, get_backend
from vitrt.compiler.cost import vit_flops, vit_params
from vitrt.compiler.distributed import is_writer
from vitrt.compiler.errors import OptionError, VitrtError
from vitrt.compiler.known_models import DIGITS_MODEL, is_digits_model
from vitrt.compiler.graph import GraphView
from vitrt.compiler.lower import lower, model_opset
from vitrt.compiler.models import (canonicalize, check_supported, checkpoint_classes, load_timm_model, model_spec,
                                   read_checkpoint, spec_of_timm)
from vitrt.compiler.spec import ViTSpec
from vitrt.compiler.options import from_options
from vitrt.compiler.output import atomic_output_dir, write_json
from vitrt.compiler.pass_manager import FP32_TOLERANCE, OpCountInstrument, PassContext, PassManager
from vitrt.compiler.progress import Progress
from vitrt.compiler.timing import Timing, interleaved, synced
from vitrt.compiler.trt_lint import check_trt, lint
from vitrt.compiler.twin import CanonicalViT
from vitrt.compiler.verify import VerifyInstrument, compare, decision_modules, verification_inputs, verify_artifact
from vitrt.pipeline.config import CompileConfig
from vitrt.pipeline.estimate import artifact_accuracy
from vitrt.pipeline.feedback import add_prediction, open_for_compile, refine_after_compile
from vitrt.pipeline.replay import RECORD_DIR, save_record
from vitrt.pipeline.stages import FINAL_PASSES, active_stages, stage_options
from vitrt.transforms.base import Finished, PlanContext, ReportContext

VERIFY_BATCHES = 2
DENSE_ROUNDS = 5  # interleaved rounds of the dense-vs-compiled comparison


@dataclass
class CompileResult:
    out: Path
    manifest: dict
    twin: torch.nn.Module  # the twin after every stage (the verification reference)
    plans: dict = field(default_factory=dict)  # every stage's plan, by transform name

    @property
    def onnx_path(self) -> Path:
        return self.out / "model.onnx"

    @property
    def artifact_path(self) -> Path | None:
        """The backend's artifact; None for a ``--no-build`` compile."""
        artifact = self.manifest["artifact"]
        return None if artifact is None else self.out / artifact


def make_config(model=None, out=None, config: CompileConfig | None = None, options: dict | None = None
                ) -> CompileConfig:
    """The CompileConfig for :func:`compile`'s arguments (``options``: flat option names, as on the CLI)."""
    options = dict(options or {})
    if isinstance(model, str):
        options["model"] = model
    elif model is not None and config is not None and config.model is not None:
        options["model"] = None  # a module is compiled as it is: a config's model name would label it wrongly
    if out is not None:
        options["out"] = Path(out).expanduser()  # "~/x" from Python, as a shell expands it on the command line
    if config is None:
        return from_options(CompileConfig, options)
    return config.replace(**options) if options else config


@dataclass
class Source:
    """What the compile starts from, known before any weights are created: the spec and the checkpoint's state."""

    spec: ViTSpec
    module: torch.nn.Module | None = None  # a model handed to the Python API
    state: dict | None = None  # the --checkpoint state dict, read once
    num_classes: int | None = None  # the checkpoint's classifier width where it differs from the model's default


def resolve_model(name: str):
    """(module or None, name): the digits reference for ``digits`` (any spelling), else the timm name as given."""
    if is_digits_model(name):
        from vitrt.calib.reference import load_reference

        return load_reference()[0], DIGITS_MODEL
    return None, name


def model_by_name(name: str, img_size: int | None = None) -> torch.nn.Module:
    """The module a model name stands for: the digits reference (its shipped weights, at its trained 32x32 input)
    or timm's model (random weights) at ``img_size``."""
    module, resolved = resolve_model(name)
    if module is None:
        return load_timm_model(resolved, img_size=img_size)
    if img_size is not None:
        raise OptionError("the digits reference runs at its trained 32x32 input: drop --img-size")
    return module


def name_only_options(config: CompileConfig) -> list[str]:
    """The given options that build a model from its timm name (weights, size): none apply to a model object."""
    return [flag for flag, value in (("--checkpoint", config.checkpoint), ("--pretrained", config.pretrained),
                                     ("--img-size", config.img_size)) if value]


def inspect_source(config: CompileConfig, module: torch.nn.Module | None, progress: Progress) -> Source:
    """The spec of what will be compiled — from the Python module, or from the timm name on the meta device
    (no weights) — so every model-dependent option is checked before anything slow happens."""
    if module is not None:
        given = name_only_options(config)
        if given:  # they build a model from its name: a module handed over already has its weights and size
            raise OptionError(f"{' / '.join(given)}: for a model name only; a model object is compiled as it is "
                              "(load the weights into it, or make it at that size, before passing it)")
        if isinstance(module, CanonicalViT):
            return Source(module.spec, module)
        check_supported(module)
        return Source(spec_of_timm(module), module)
    if not config.model:
        raise VitrtError("no model given: pass a timm model name, e.g. vitrt compile deit_small_patch16_224 -o OUT")
    state = read_checkpoint(config.checkpoint) if config.checkpoint is not None else None
    classes = checkpoint_classes(state, config.model, progress) if state is not None else None
    return Source(model_spec(config.model, img_size=config.img_size, num_classes=classes), None, state, classes)


def load_source(config: CompileConfig, source: Source, progress: Progress):
    """The original model (the timm module, copied if it is in training mode; a copy of a given twin) and its
    canonical twin. The caller's module is never modified, not even its training flags."""
    model = source.module
    if model is None:
        with progress.step(f"loading {config.model}"):
            model = load_timm_model(config.model, pretrained=config.pretrained, img_size=config.img_size,
                                    num_classes=source.num_classes, state=source.state, checkpoint=config.checkpoint,
                                    progress=progress)
    if isinstance(model, CanonicalViT):
        twin = copy.deepcopy(model).eval()
        return twin, twin
    check_supported(model)
    if any(m.training for m in model.modules()):  # eval() would flip the caller's training flags: use a copy
        model = copy.deepcopy(model)
    return model.eval(), canonicalize(model)


@dataclass
class Planned:
    """Every active stage planned: plans by transform name, (stage, plan, twin before, twin after) in order, the
    planners' adjustment notes, and the twin after the last stage."""

    plans: dict
    reports: list
    adjustments: list
    final: torch.nn.Module


def plan_stages(config: CompileConfig, twin: torch.nn.Module, *, lut=None, name: str = "",
                progress: Progress | None = None, given: dict | None = None, context=PlanContext,
                preprocessing: dict | None = None) -> Planned:
    """Plan every stage ``config`` runs, in STAGES order, each on the twin the stages before it left.

    ``given``: plans by transform name used instead of planning that stage (a replayed recipe, a search's cached
    prefix); a value may also be a callable ``twin -> plan`` (a plan that must be read against the spec it meets).
    ``context``: the PlanContext class the planners get (a search supplies one whose ``data`` holds out a split).
    ``preprocessing``: the model's input pipeline (:func:`preprocessing`), for ImageFolder data.
    ``twin`` is never modified.
    """
    progress = progress or Progress(enabled=False)
    stages = active_stages(config)
    given = dict(given or {})
    unknown = sorted(set(given) - {s.name for s in stages})
    if unknown:
        raise VitrtError(f"plans given for stage(s) {', '.join(unknown)} that these options do not run")
    plans, reports, adjustments, final = {}, [], [], twin
    teacher = copy.deepcopy(twin).eval().requires_grad_(False)
    for stage in stages:
        if stage.name in given:
            plan = given[stage.name]
            plan = plan(final) if callable(plan) else plan
        else:
            ctx = context(target=config.target, teacher=teacher, plans=dict(plans), lut=lut, lut_path=config.checks.lut,
                          model=name, seed=config.seed, progress=progress, preprocessing=preprocessing)
            plan = stage.plan(final, ctx, stage_options(config, stage))
        after = stage.graph_pass(plan).apply_to_twin(final)
        for note in plan_notes(plan):
            progress.log(note)
            adjustments.append({"stage": stage.name, "note": note})
        plans[stage.name] = plan
        reports.append((stage, plan, final, after))
        final = after
    return Planned(plans, reports, adjustments, final)


def compile(model: torch.nn.Module | str | None = None, out: str | Path | None = None,
            config: CompileConfig | None = None, progress: Progress | None = None, name: str | None = None,
            plans: dict | None = None, replay_of: str | Path | None = None, **options) -> CompileResult:
    """Compile ``model`` (a timm model name, a timm ViT module or a CanonicalViT) into ``out``.

    ``config`` and/or keyword ``options`` (the CLI's option names: ``batch=8``, ``prune=0.5``, ``tome="13"``)
    select backend, batch, stages and checks; ``name`` is what the manifest calls a module passed as ``model``;
    ``plans`` (transform name -> plan, see :func:`plan_stages`) replaces those stages' planning (a recipe replay;
    ``replay_of``: the recipe they came from, named in the manifest).
    Raises VitrtError for bad input; on any failure nothing is written to ``out``. ``model`` itself is never
    modified.
    """
    if model is not None and not isinstance(model, (str, torch.nn.Module)):
        raise OptionError(f"model must be a timm model name, a timm ViT module or a CanonicalViT, got "
                          f"{type(model).__name__}")
    for what, value, kinds, expected in (("out", out, (str, os.PathLike), "a path (str or Path)"),
                                         ("config", config, (CompileConfig,), "a CompileConfig"),
                                         ("progress", progress, (Progress,), "a vitrt Progress"),
                                         ("name", name, (str,), "a str")):
        if value is not None and not isinstance(value, kinds):
            raise OptionError(f"{what} must be {expected}, got {type(value).__name__}")
    if options.get("recipe") is not None:
        raise OptionError("a recipe is replayed by vitrt.pipeline.recipe.compile_recipe (vitrt.compile(..., "
                          "recipe=PATH) and vitrt compile --recipe call it)")
    config = make_config(model, out, config, options).validate()
    module = model if isinstance(model, torch.nn.Module) else None
    if module is None and is_digits_model(config.model):  # the shipped digits reference: real weights, real data
        for flag in name_only_options(config):
            raise OptionError(f"{flag} does not apply to digits (the shipped digits reference has its own "
                              "weights and 32x32 input); pass a timm model name to use it")
        module, resolved = resolve_model(config.model)
        name, config = name or resolved, config.replace(model=None)
    if config.out is None:
        raise VitrtError("no output directory: pass -o OUT")
    progress = progress or Progress(enabled=not config.quiet)
    target, checks = config.target, config.checks
    with atomic_output_dir(config.out, config.force) as staging:
        # fails fast (before any work) when its runtime is missing; --no-build needs none
        backend = None if target.no_build else get_backend(target.backend, target.device)
        refining = backend is not None and checks.lut is not None and checks.refine_lut
        lut = open_for_compile(config, device=backend.device_name() if refining else None)
        source = inspect_source(config, module, progress)
        if lut is not None and checks.refine_lut:  # the measurement will go into the table: its stem / head must fit
            lut.check_spec(source.spec)
        stages = active_stages(config)
        config.check_against(source.spec)
        PassManager([s.graph_pass for s in stages] + list(FINAL_PASSES))  # the whole schedule, before any work
        original, twin = load_source(config, source, progress)
        prep = preprocessing(original, source.spec)

        # Plan every stage on the twin the stages before it left.
        planned = plan_stages(config, twin, lut=lut, name=name or config.model or "", progress=progress, given=plans,
                              preprocessing=prep)
        reports, adjustments, final, plans = planned.reports, planned.adjustments, planned.final, planned.plans

        # One pass manager over every stage's pass.
        batch = target.static_batch
        with progress.step("lowering to canonical ONNX"):
            view = GraphView.from_onnx(lower(twin, batch=batch, opset=target.opset))
        spec_before = view.spec
        images = verification_inputs(spec_before, target.batch, seed=config.seed, count=VERIFY_BATCHES)
        instruments = [OpCountInstrument()] + ([VerifyInstrument(images, batch)] if checks.verify else [])
        passes = [stage.graph_pass(plan) for stage, plan, _, _ in reports] + [p() for p in FINAL_PASSES]
        manager = PassManager(passes, instruments, check_properties=checks.verify)
        with progress.step("running the passes"):
            result = manager.run(view, PassContext(seed=config.seed), twin=twin if checks.verify else None,
                                 progress=lambda name: progress.log(f"pass {name}"))
        view = result.view
        final_onnx = view.to_onnx()
        trt_lint = check_trt(final_onnx) if target.backend == "trt" else lint(final_onnx)  # trt: errors fail here
        if trt_lint.findings:
            progress.log(trt_lint.summary())
        onnx_path = staging / "model.onnx"
        onnx.save(final_onnx, str(onnx_path))
        if checks.keep_twin:
            save_record(staging / RECORD_DIR, twin, plans, target, config.seed)

        manifest = {
            "vitrt_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": name or config.model or f"{type(original).__name__} (Python object)",
            "input_shape": ["batch" if batch is None else batch, view.spec.in_chans, view.spec.img, view.spec.img],
            "batch_profile": list(target.batch_profile) if target.batch_profile else None,
            "backend": target.backend,
            "opset": model_opset(final_onnx),  # --opset, or above it where a pass needs more (Q/DQ forms)
            "artifact": None if backend is None else backend.artifact_name,
            "spec_before": spec_before.to_dict(),
            "spec_after": view.spec.to_dict(),
            "passes": [r.to_dict() for r in result.records],
            "params": {"before": vit_params(spec_before), "after": vit_params(view.spec)},
            "flops": {"before": vit_flops(spec_before), "after": vit_flops(view.spec)},
            "adjustments": adjustments,
            **({"replay_of": {"recipe": str(replay_of), "note": "plans read from the recipe, nothing planned again: "
                              "each stage's section says how its plan was made (calibration, fine-tuning) when the "
                              "recipe was"}} if replay_of is not None else {}),
            "io": graph_io(final_onnx),
            "preprocessing": prep,
            "trt_lint": trt_lint.to_dict(),
        }
        if checks.verify:
            with progress.step("verifying the compiled ONNX"):
                manifest["verify"] = verify_final(final_onnx, original, final, result.changes_function, images,
                                                  batch, result.tolerance)
            if not manifest["verify"]["ok"]:
                raise VitrtError(f"verification failed: max abs error {manifest['verify']['max_abs_err']:.3g} against "
                                 f"the {manifest['verify']['reference']} exceeds {manifest['verify']['tolerance']:g}")

        build_options = target.build_options(sparse_weights=bool(result.build_hints.get("sparse_weights")))
        if backend is None:
            manifest["engine_build"] = engine_build_later(final_onnx, build_options)
            progress.log(f"no engine built (--no-build); build it on the GPU machine with: "
                         f"{manifest['engine_build']['command']}")
            for need in manifest["engine_build"].get("requires", []):
                progress.log(f"  it needs {need}")
        else:
            with progress.step(f"building the {target.backend} artifact"):
                backend.build(onnx_path, staging, build_options)
            if checks.verify or checks.bench or checks.metric_set is not None or checks.eval_data is not None:
                runner = backend.load(staging / backend.artifact_name, build_options)  # once, for every check
            if checks.verify:  # what ships, not only the graph it was built from
                with progress.step("verifying the built artifact"):
                    merges = bool(decision_modules(final)) and result.tolerance > FP32_TOLERANCE
                    check = verify_artifact(runner, final_onnx, images, batch, result.tolerance, decisions=merges)
                manifest["verify"]["artifact"] = check
                if not check["ok"]:
                    raise VitrtError(f"the built {target.backend} artifact differs from the verified graph by "
                                     f"{check['max_abs_err']:.3g} > {check['tolerance']:g} (the runtime's own graph "
                                     "rewrites changed the result)")
            if checks.metric_set is not None or checks.eval_data is not None:
                with progress.step("measuring the artifact's accuracy"):
                    manifest["accuracy"] = artifact_accuracy(runner, twin, metric_set=checks.metric_set,
                                                             eval_data=checks.eval_data, seed=config.seed,
                                                             preprocessing=prep)
        stage_reports = {}
        for stage, plan, before, after in reports:
            if stage.report is None:
                continue
            report = stage.report(plan, ReportContext(before, after, target, name or config.model or "", progress))
            manifest[stage.manifest_key] = report.manifest
            stage_reports[stage.name] = report
            for file_name, writer in report.files.items():  # not `name`: the model's name is read above
                writer(staging / file_name)
        versus_dense = None
        if checks.bench:
            bench_images = images[: target.batch]
            load_before = os.getloadavg()[0]
            with progress.bar(checks.bench_iters, f"benchmarking ({config.bench_clock} clock)") as bar:
                stats = runner.benchmark(bench_images, warmup=checks.bench_warmup, iterations=checks.bench_iters,
                                         progress=bar.update, clock=config.bench_clock)
            manifest["latency"] = {**stats.to_dict(), **machine_state(target, load_before, stats.clock)}
            if "load_warning" in manifest["latency"]:
                progress.log(manifest["latency"]["load_warning"])
            if result.changes_function:
                versus_dense = time_against_dense(twin, runner, bench_images, config, backend, build_options,
                                                  progress)
                # the whole compile against the dense model: every stage's report says so, with the FLOPs of both
                versus_dense.update(stages=[stage.name for stage, _, _, _ in reports],
                                    flops_dense=manifest["flops"]["before"], flops_compiled=manifest["flops"]["after"])
                manifest["latency"]["versus_dense"] = versus_dense
            add_prediction(lut, config, view.spec, manifest)
            least = f"least CPU time {stats.typical:.2f} ms, " if stats.clock == "cpu" else ""
            progress.log(f"latency: {least}median {stats.median_ms:.2f} ms, p90 {stats.p90_ms:.2f} ms, "
                         f"{stats.images_per_s:.1f} images/s (batch {target.batch}, {stats.clock} clock)")
        finished = Finished(staging, build_info(staging), versus_dense)
        for stage, plan, _, _ in reports:
            if stage.finish is not None:
                section = manifest.setdefault(stage.manifest_key, {})
                for file_name, writer in stage.finish(plan, section, finished).items():
                    writer(staging / file_name)
        write_json(staging / "manifest.json", manifest)
    progress.log(f"wrote {config.out}")
    if is_writer():  # under torchrun only rank 0 writes
        refine_after_compile(config, manifest, progress)  # --refine-lut: a separate atomic write after OUT
    return CompileResult(Path(config.out), manifest, final, plans)


def engine_build_later(model: onnx.ModelProto, options: BuildOptions) -> dict:
    """The manifest's ``engine_build`` of a ``--no-build`` compile of ``model``: the trtexec command that builds
    the engine and, when the graph needs more than TensorRT 10.0 on any GPU, what (``requires``)."""
    from vitrt.compiler.backends.trt import trtexec_command
    from vitrt.compiler.trt_lint.requirements import tensorrt_requirements

    inputs = {v["name"]: v["shape"][1:] for v in graph_io(model)["inputs"]}
    needs = tensorrt_requirements(model, options)
    return {"built": False, "command": f"cd OUT && {trtexec_command('model.onnx', inputs, options)}",
            **({"requires": needs} if needs else {})}


def graph_io(model: onnx.ModelProto) -> dict:
    """Names, element types and shapes of the compiled graph's inputs and outputs (what a server binds)."""
    def describe(value):
        tensor = value.type.tensor_type
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim]}
    return {"inputs": [describe(v) for v in model.graph.input], "outputs": [describe(v) for v in model.graph.output]}


def preprocessing(model: torch.nn.Module, spec: ViTSpec) -> dict:
    """How images must be prepared for the engine: the compiled input size, and timm's data config of the model
    (interpolation, crop, mean / std), which a serving pipeline must reproduce."""
    if isinstance(model, CanonicalViT):
        return {"source": "unknown: a CanonicalViT was compiled (no timm data config)"}
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {"source": "timm data config of the model", "input_size": [spec.in_chans, spec.img, spec.img],
            "interpolation": cfg["interpolation"], "crop_pct": cfg["crop_pct"],
            "crop_mode": cfg.get("crop_mode", "center"), "mean": list(cfg["mean"]), "std": list(cfg["std"])}


def machine_state(target, load_before: float, clock: str = "wall") -> dict:
    """Thread settings and machine load while benchmarking; a warning when other work shared the CPU."""
    cores = os.cpu_count() or 1
    load = round(max(load_before, os.getloadavg()[0]), 2)
    state = {"threads": target.threads or f"runtime default ({cores} cores)", "load_average": load, "cores": cores}
    if load > cores:
        advice = ("the least CPU time (typical_ms) is the figure least disturbed; the medians are inflated"
                  if clock == "cpu" else "latencies are inflated (compare variants side by side, or use --threads 1 "
                  "--bench-clock cpu)")
        state["load_warning"] = (f"load average {load} on {cores} cores while benchmarking: other work shared the "
                                 f"CPU, so {advice}")
    return state


def plan_notes(plan) -> list[str]:
    """What a planner changed from what was asked (capped schedules, layers left dense, ...), one line each."""
    notes = getattr(plan, "notes", None)
    return notes() if callable(notes) else []


def build_info(staging: Path) -> dict:
    """What the backend's build left beside the artifact that reports read (TensorRT's inspector JSON)."""
    import json

    inspector = staging / "engine_inspector.json"
    return {"engine_inspector": json.loads(inspector.read_text())} if inspector.is_file() else {}


def time_against_dense(twin, runner, images: np.ndarray, config: CompileConfig, backend, build_options,
                       progress: Progress) -> dict:
    """The dense model (lowered from the untransformed twin) and the compiled artifact timed side by side."""
    target, checks = config.target, config.checks
    with tempfile.TemporaryDirectory(prefix="vitrt-dense-") as tmp, progress.step("timing the dense model side by side"):
        path = Path(tmp) / "model.onnx"
        onnx.save(lower(twin, batch=target.static_batch, opset=target.opset), str(path))
        dense = backend.load(backend.build(path, Path(tmp), build_options), build_options)
        # a GPU's work is timed on the wall clock here (synced): both engines alike, each call waited for
        clock = "cpu" if config.bench_clock == "cpu" else "wall"
        timing = Timing(warmup=min(checks.bench_warmup, 3), iterations=max(2, checks.bench_iters // DENSE_ROUNDS),
                        clock=clock)
        timed = interleaved({"dense": synced(dense, images), "compiled": synced(runner, images)}, timing,
                            rounds=DENSE_ROUNDS, seed=config.seed)
    summary = "least CPU time" if clock == "cpu" else "median"
    return {"dense_median_ms": round(timed.typical("dense"), 4), "compiled_median_ms": round(timed.typical("compiled"), 4),
            "speedup": round(timed.speedup("dense", "compiled"), 4), "rounds": DENSE_ROUNDS,
            "iterations_per_round": timing.iterations, "clock": clock,
            "method": f"dense and compiled artifacts timed in interleaved rounds in one process ({clock} clock, "
                      f"{summary} per artifact); speedup = median of the per-round ratios"}


def verify_final(final: onnx.ModelProto, original: torch.nn.Module, twin: torch.nn.Module, function_changed: bool,
                 images, batch, tolerance: float) -> dict:
    """Compare against the original model when no pass changed the function, else against the twin."""
    reference, name = (twin, "torch twin") if function_changed else (original, "timm model")
    if isinstance(original, CanonicalViT) and not function_changed:
        name = "torch twin"
    result = compare(final, reference, images, batch, name, tolerance).to_dict()
    if not function_changed and reference is not twin:
        result["max_abs_err_twin"] = compare(final, twin, images, batch, "torch twin").max_abs_err
    return result
