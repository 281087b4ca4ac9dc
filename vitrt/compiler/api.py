"""``compile()``: timm ViT -> canonical ONNX -> passes -> backend artifact + manifest, written atomically.

    OUT/model.onnx        the compiled graph (canonical names, ViTSpec in metadata_props)
    OUT/<artifact>        the backend's artifact (model.ort.onnx for ort, model.plan for trt)
    OUT/manifest.json     what ran and what it measured (see README: "The manifest")
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from .._version import __version__
from ..benchmarks.feedback import add_prediction, open_for_compile, refine_after_compile
from .backends import BuildOptions, get_backend
from .config import CompileConfig
from .cost import vit_flops, vit_params
from .errors import VitrtError
from .graph import GraphView
from .lower import lower
from .models import canonicalize, check_model_name, check_supported, load_timm_model
from .output import atomic_output_dir, write_json
from .pass_manager import OpCountInstrument, PassContext
from .pipeline import run_pipeline
from .progress import Progress
from .twin import CanonicalViT
from .verify import FP32_TOLERANCE, VerifyInstrument, compare, verification_inputs

VERIFY_BATCHES = 2


@dataclass
class CompileResult:
    out: Path
    manifest: dict
    twin: CanonicalViT  # the twin after every pass (the verification reference)

    @property
    def onnx_path(self) -> Path:
        return self.out / "model.onnx"

    @property
    def artifact_path(self) -> Path:
        return self.out / self.manifest["artifact"]


def load_source(config: CompileConfig, model: torch.nn.Module | None, progress: Progress):
    """The original model (timm module or a twin) and its canonical twin."""
    if model is None:
        if not config.model:
            raise VitrtError("no model given: pass a timm model name, e.g. vitrt compile deit_small_patch16_224 -o OUT")
        check_model_name(config.model)
        with progress.step(f"loading {config.model}"):
            model = load_timm_model(config.model, pretrained=config.pretrained, checkpoint=config.checkpoint,
                                    img_size=config.img_size)
    if isinstance(model, CanonicalViT):
        return model.eval(), model
    check_supported(model)
    return model.eval(), canonicalize(model)


def compile(model: torch.nn.Module | str | None = None, out: str | Path | None = None,
            config: CompileConfig | None = None, progress: Progress | None = None, **options) -> CompileResult:
    """Compile ``model`` (a timm model name, a timm ViT module or a CanonicalViT) into ``out``.

    ``config`` (or keyword ``options`` naming CompileConfig fields) selects backend, batch, passes, checks.
    Raises VitrtError for bad input; on any failure nothing is written to ``out``.
    """
    if isinstance(model, str):
        options["model"] = model
        model = None
    if out is not None:
        options["out"] = Path(out)
    config = (config or CompileConfig()).replace(**options).validate()
    if config.out is None:
        raise VitrtError("no output directory: pass -o OUT")
    progress = progress or Progress(enabled=not config.quiet)
    with atomic_output_dir(config.out, config.force) as staging:
        backend = get_backend(config.backend)  # fails fast (before any work) when its runtime is missing
        lut = open_for_compile(config)  # issue 3: a wrong --lut fails before any work
        original, twin = load_source(config, model, progress)
        batch = None if config.dynamic_batch else config.batch
        with progress.step("lowering to canonical ONNX"):
            view = GraphView.from_onnx(lower(twin, batch=batch, opset=config.opset))
        spec_before = view.spec
        images = verification_inputs(view.spec, config.batch, seed=config.seed, count=VERIFY_BATCHES)

        instruments = [OpCountInstrument()]
        if config.verify:
            instruments.append(VerifyInstrument(images, batch))
        ctx = PassContext(twin=twin, options=config, seed=config.seed)
        with progress.step("running the passes"):
            view, records = run_pipeline(config, view, ctx, instruments, progress)
        final = view.to_onnx()
        onnx_path = staging / "model.onnx"
        onnx.save(final, str(onnx_path))

        manifest = {
            "vitrt_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": config.model or type(original).__name__,
            "input_shape": ["batch" if batch is None else batch, view.spec.in_chans, view.spec.img, view.spec.img],
            "backend": config.backend,
            "opset": config.opset,
            "artifact": backend.artifact_name,
            "spec_before": spec_before.to_dict(),
            "spec_after": view.spec.to_dict(),
            "passes": [r.to_dict() for r in records],
            "params": {"before": vit_params(spec_before), "after": vit_params(view.spec)},
            "flops": {"before": vit_flops(spec_before), "after": vit_flops(view.spec)},
        }
        if config.verify:
            with progress.step("verifying the compiled ONNX"):
                tolerance = max([FP32_TOLERANCE] + [r.verify_tolerance for r in records])
                manifest["verify"] = verify_final(final, original, ctx.twin, records, images, batch, tolerance)
            if not manifest["verify"]["ok"]:
                raise VitrtError(f"verification failed: max abs error {manifest['verify']['max_abs_err']:.3g} against "
                                 f"the {manifest['verify']['reference']} exceeds {manifest['verify']['tolerance']:g}")

        with progress.step(f"building the {config.backend} artifact"):
            build_options = BuildOptions(threads=config.threads, timing_cache=config.timing_cache,
                                         sparse_weights=bool(ctx.build.get("sparse_weights")))
            backend.build(onnx_path, staging, build_options)
        for name, writer in ctx.files.items():
            writer(staging / name)
        manifest.update(ctx.manifest)
        if config.bench:
            runner = backend.load(staging / backend.artifact_name, build_options)
            bench_images = images[: config.batch]
            with progress.bar(config.bench_iters, "benchmarking") as bar:
                stats = runner.benchmark(bench_images, warmup=config.bench_warmup, iterations=config.bench_iters,
                                         progress=bar.update)
            manifest["latency"] = stats.to_dict()
            add_prediction(lut, config, view.spec, manifest)  # issue 3: latency.predicted_ms
            progress.log(f"latency: median {stats.median_ms:.2f} ms, p90 {stats.p90_ms:.2f} ms, "
                         f"{stats.images_per_s:.1f} images/s (batch {config.batch})")
        write_json(staging / "manifest.json", manifest)
    progress.log(f"wrote {config.out}")
    refine_after_compile(config, manifest, progress)  # issue 3: --refine-lut, a separate atomic write after OUT
    return CompileResult(Path(config.out), manifest, ctx.twin)


def verify_final(final: onnx.ModelProto, original: torch.nn.Module, twin: CanonicalViT, records, images, batch,
                 tolerance: float = FP32_TOLERANCE) -> dict:
    """Compare against the original model when no pass changed the function, else against the twin."""
    function_changed = any(r.changes_function for r in records)
    reference, name = (twin, "torch twin") if function_changed else (original, "timm model")
    if isinstance(original, CanonicalViT) and not function_changed:
        name = "torch twin"
    result = compare(final, reference, images, batch, name, tolerance).to_dict()
    if not function_changed and reference is not twin:
        result["max_abs_err_twin"] = compare(final, twin, images, batch, "torch twin").max_abs_err
    return result
