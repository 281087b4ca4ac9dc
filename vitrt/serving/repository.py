"""``vitrt export triton``: a Triton model repository entry for a compiled OUT, for Triton's native backends.

    REPO/<name>/config.pbtxt     ModelConfig (tritonclient's protobuf, text format)
    REPO/<name>/1/model.plan     platform tensorrt_plan     (trt artifacts)
    REPO/<name>/1/model.onnx     platform onnxruntime_onnx  (ort artifacts: model.ort.onnx as built)
    REPO/<name>/labels.txt       one class label per line (the logits output's label_filename)
    REPO/<name>/vitrt.json       provenance: the OUT, its manifest's model and backend, where the I/O was read
    with --preprocess: REPO/<name>_preprocess/ and REPO/<name>_ensemble/ (raw images in; vitrt.serving.preprocess)

Inputs and outputs are the engine's own (:mod:`vitrt.serving.artifact`). Batching follows the engine:

* a **dynamic-batch** engine gets ``max_batch_size`` (default: the TensorRT profile's max, 32 for ONNX Runtime),
  ``dims`` without the batch dimension and ``dynamic_batching`` (queue delay, preferred sizes);
* a **static-batch** engine cannot be batched by Triton (it accepts exactly its compiled shape): it gets
  ``max_batch_size: 0`` and the full shape as ``dims``; batching options are refused.

The same :class:`Batching` drives ``vitrt serve``, so a client written against ``vitrt serve`` sends the same
tensors to the exported repository in the production container.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.errors import OutputError, VitrtError
from vitrt.compiler.options import option, section
from vitrt.compiler.output import atomic_output_dir, write_json
from vitrt.compiler.target import DEFAULT_MAX_BATCH  # for engines without a batch limit of their own (ONNX Runtime)
from vitrt.serving.artifact import MODEL_NAME, CompiledArtifact, class_labels

DEFAULT_QUEUE_DELAY_US = 100
PLATFORMS = {"trt": ("tensorrt_plan", "model.plan", "KIND_GPU"), "ort": ("onnxruntime_onnx", "model.onnx", "KIND_CPU")}
SERVE_HINT = "install the serving extra: pip install 'vitrt[serve]'"


@dataclass(frozen=True)
class BatchingOptions:
    """The batching flags shared by ``vitrt export triton`` and ``vitrt serve`` (None: the default)."""

    max_batch: int | None = option(None, "largest batch Triton forms (dynamic-batch engines; default: the TensorRT "
                                   "profile's max, or 32)", type=int, metavar="B")
    preferred_batch: str | None = option(None, "comma-separated batch sizes the dynamic batcher prefers, e.g. 4,8",
                                         metavar="B1,B2,..")
    queue_delay_us: int | None = option(None, "how long the dynamic batcher waits to fill a batch, microseconds "
                                        "(default 100)", type=int, metavar="U")
    instances: int = option(1, "model instances (engine copies executing batches concurrently)", type=int,
                            metavar="K")


@dataclass(frozen=True)
class Batching:
    """Validated batching of one served engine."""

    max_batch_size: int  # 0: no batching by Triton; requests carry the engine's full static shape
    preferred: tuple[int, ...]
    queue_delay_us: int
    instances: int

    @property
    def dynamic(self) -> bool:
        return self.max_batch_size > 0

    def to_dict(self) -> dict:
        return {"max_batch_size": self.max_batch_size, "preferred_batch_size": list(self.preferred),
                "max_queue_delay_microseconds": self.queue_delay_us, "instances": self.instances}


def batching_for(artifact: CompiledArtifact, options: BatchingOptions) -> Batching:
    """The batching ``options`` ask for, checked against the engine; one-line VitrtError otherwise."""
    if options.instances < 1:
        raise VitrtError(f"--instances must be >= 1, got {options.instances}")
    if artifact.static_batch is not None:
        asked = [flag for flag, value in (("--max-batch", options.max_batch), ("--preferred-batch",
                 options.preferred_batch), ("--queue-delay-us", options.queue_delay_us)) if value is not None]
        if asked:
            raise VitrtError(f"{asked[0]} needs a dynamic-batch engine, but '{artifact.out}' was compiled for static "
                             f"batch {artifact.static_batch} (Triton serves it with max_batch_size 0, requests of "
                             f"exactly that batch); compile with --dynamic-batch to batch requests")
        return Batching(0, (), 0, options.instances)
    if artifact.batch_min > 1:  # Triton has no minimum batch: it forms and forwards any batch from 1 up
        raise VitrtError(f"'{artifact.out}' was built for batches of at least {artifact.batch_min} (--min-batch "
                         f"{artifact.batch_min}), but Triton sends any batch from 1 to max_batch_size (its warm-up "
                         "and lone requests included); compile with --min-batch 1 to serve it")
    limit = artifact.batch_limit
    max_batch = options.max_batch if options.max_batch is not None else (limit or DEFAULT_MAX_BATCH)
    if max_batch < 1:
        raise VitrtError(f"--max-batch must be >= 1, got {max_batch}")
    if limit is not None and max_batch > limit:
        raise VitrtError(f"--max-batch {max_batch} exceeds the engine's optimisation profile (batch <= {limit}); "
                         f"choose --max-batch <= {limit}")
    preferred = _parse_sizes(options.preferred_batch)
    if any(b < 1 or b > max_batch for b in preferred):
        raise VitrtError(f"--preferred-batch sizes must lie in 1..{max_batch} (the max batch), got "
                         f"'{options.preferred_batch}'")
    delay = DEFAULT_QUEUE_DELAY_US if options.queue_delay_us is None else options.queue_delay_us
    if delay < 0:
        raise VitrtError(f"--queue-delay-us must be >= 0, got {delay}")
    return Batching(max_batch, preferred, delay, options.instances)


def _parse_sizes(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        sizes = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise VitrtError(f"--preferred-batch must be comma-separated integers, e.g. 4,8; got '{text}'") from None
    if list(sizes) != sorted(set(sizes)):
        raise VitrtError(f"--preferred-batch sizes must be ascending without repeats, got '{text}'")
    return sizes


def check_model_name(name: str) -> str:
    """``name`` as a Triton model name: one directory inside the repository (never '.' or '..', which would
    replace the repository itself or its parent)."""
    if not MODEL_NAME.fullmatch(name) or set(name) == {"."}:
        raise VitrtError(f"model name {name!r} is not valid for Triton: use letters, digits, '_', '.' and '-' (not "
                         "only dots)")
    return name


def triton_dtype(dtype: str) -> str:
    """numpy dtype name -> ModelConfig data type ("float32" -> "TYPE_FP32")."""
    import numpy as np
    from tritonclient.utils import np_to_triton_dtype

    name = np_to_triton_dtype(np.dtype(dtype))
    if name is None:
        raise VitrtError(f"Triton has no data type for the engine's {dtype} tensors")
    return "TYPE_" + ("STRING" if name == "BYTES" else name)


def model_config(artifact: CompiledArtifact, name: str, batching: Batching, labels: str | None = "labels.txt"):
    """The ModelConfig protobuf of ``artifact`` for Triton's native backend (tritonclient's ``model_config_pb2``)."""
    mc = _model_config_pb2()
    platform, filename, kind = PLATFORMS[artifact.backend]
    config = mc.ModelConfig(name=check_model_name(name), platform=platform, max_batch_size=batching.max_batch_size,
                            default_model_filename=filename)
    dims = (lambda t: t.shape[1:]) if batching.dynamic else (lambda t: t.shape)
    # Triton's classification reads the label file along the last axis of one image's output: a static engine
    # of batch > 1 returns [B, classes] per request, where class indices would be flattened across images
    labels = labels if artifact.static_batch in (None, 1) else None
    for tensor in artifact.inputs:
        config.input.add(name=tensor.name, data_type=triton_dtype(tensor.dtype), dims=dims(tensor))
    for i, tensor in enumerate(artifact.outputs):
        config.output.add(name=tensor.name, data_type=triton_dtype(tensor.dtype), dims=dims(tensor),
                          label_filename=labels if labels and i == 0 else "")
    if batching.dynamic:
        config.dynamic_batching.max_queue_delay_microseconds = batching.queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(batching.preferred)
    config.instance_group.add(count=batching.instances, kind=kind)
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    for tensor in artifact.inputs:
        warmup.inputs[tensor.name].data_type = triton_dtype(tensor.dtype)
        warmup.inputs[tensor.name].dims.extend(dims(tensor))
        warmup.inputs[tensor.name].zero_data = True
    return config


def ensemble_configs(artifact: CompiledArtifact, name: str, batching: Batching, mean, std):
    """(preprocess config, ensemble config) ModelConfig protobufs around the engine's entry ``name``
    (``--preprocess``, :mod:`vitrt.serving.preprocess`)."""
    from vitrt.serving.preprocess import RAW_INPUT

    if not batching.dynamic:
        raise VitrtError("--preprocess needs a dynamic-batch engine (raw images of any size are batched by Triton); "
                         "compile with --dynamic-batch")
    mc = _model_config_pb2()
    image, logits = artifact.inputs[0], artifact.outputs[0]
    channels, size = image.shape[1], image.shape[-1]
    if channels != 3 or image.shape[-2] != size:
        raise VitrtError(f"--preprocess expects square RGB inputs [3, S, S]; '{image.name}' is {list(image.shape[1:])}")
    pre = mc.ModelConfig(name=f"{name}_preprocess", backend="python", max_batch_size=batching.max_batch_size)
    pre.input.add(name=RAW_INPUT, data_type="TYPE_UINT8", dims=[-1, -1, 3])
    pre.output.add(name=image.name, data_type=triton_dtype(image.dtype), dims=image.shape[1:])
    pre.instance_group.add(count=1, kind="KIND_CPU")
    pre.dynamic_batching.max_queue_delay_microseconds = batching.queue_delay_us
    for key, value in (("size", str(size)), ("mean", json.dumps(list(mean))), ("std", json.dumps(list(std)))):
        pre.parameters[key].string_value = value
    ens = mc.ModelConfig(name=f"{name}_ensemble", platform="ensemble", max_batch_size=batching.max_batch_size)
    ens.input.add(name=RAW_INPUT, data_type="TYPE_UINT8", dims=[-1, -1, 3])
    ens.output.add(name=logits.name, data_type=triton_dtype(logits.dtype), dims=logits.shape[1:],
                   label_filename="labels.txt")
    first = ens.ensemble_scheduling.step.add(model_name=pre.name, model_version=-1)
    first.input_map[RAW_INPUT] = RAW_INPUT
    first.output_map[image.name] = "preprocessed"
    second = ens.ensemble_scheduling.step.add(model_name=name, model_version=-1)
    second.input_map[image.name] = "preprocessed"
    second.output_map[logits.name] = logits.name
    return pre, ens


def config_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str):
    """A config.pbtxt parsed into tritonclient's ModelConfig (raises on anything the protobuf refuses)."""
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_pb2().ModelConfig())


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise VitrtError(f"writing a Triton model configuration needs tritonclient: {SERVE_HINT}") from None
    return model_config_pb2


def check_exportable(artifact: CompiledArtifact) -> None:
    """Only ort and trt artifacts have a Triton native backend. A torch OUT's artifact is an ONNX graph that vitrt's
    torch runner imports with its own kernel choices (2:4 / int8 GEMMs, CUDA graphs): handing it to Triton's
    onnxruntime backend would serve a different runtime than the one compiled and benchmarked, so it is refused
    (one line) and ``vitrt serve`` — Triton in front of that runner — is named instead."""
    if artifact.backend not in PLATFORMS:
        raise VitrtError(f"'{artifact.out}' was compiled with --backend {artifact.backend}, which no Triton native "
                         f"backend runs: serve it with vitrt serve {artifact.out} (Triton in front of vitrt's "
                         f"{artifact.backend} runner), or compile with --backend ort or trt to export it")


@dataclass(frozen=True)
class ExportTritonConfig:
    out: Path = option(None, "the compiled OUT directory (vitrt compile MODEL -o OUT)", positional=True, type=Path,
                       metavar="OUT")
    repo: Path = option(None, "the Triton model repository to write REPO/<name>/ into (other models in REPO are left "
                        "alone)", flag="-o/--repo", type=Path, metavar="REPO")
    name: str | None = option(None, "model name in the repository (default: the manifest's model name)", metavar="N")
    batching: BatchingOptions = section(BatchingOptions)
    preprocess: bool = option(False, "also write REPO/<name>_preprocess and REPO/<name>_ensemble: clients send raw "
                              "uint8 images [H, W, 3] of any size (dynamic-batch engines)")
    force: bool = option(False, "replace an existing, non-empty REPO/<name> (and remove the <name>_preprocess / "
                         "<name>_ensemble an earlier --preprocess export left, unless --preprocess writes them again)")


def export_triton(config: ExportTritonConfig, command: str = "") -> Path:
    """Write REPO/<name>/ (and with ``preprocess`` REPO/<name>_preprocess/, REPO/<name>_ensemble/), each entry
    atomically; every check runs before anything is written. Returns REPO/<name>."""
    from vitrt.compiler.output import check_output_dir, check_outside_out
    from vitrt.serving.artifact import open_artifact

    if config.out is None or config.repo is None:
        raise VitrtError("pass the compiled OUT and -o REPO: vitrt export triton OUT -o REPO")
    artifact = open_artifact(config.out)
    check_exportable(artifact)
    name = check_model_name(artifact.default_name() if config.name is None else config.name)
    batching = batching_for(artifact, config.batching)
    header = f"# written by vitrt export triton from {artifact.out.absolute()}\n"
    labels = "\n".join(class_labels(artifact.model, artifact.num_classes)) + "\n"
    provenance = {"out": str(artifact.out.absolute()), "model": artifact.model, "backend": artifact.backend,
                  "artifact": artifact.path.name, "io_source": artifact.io_source, "batching": batching.to_dict(),
                  "inputs": [t.to_dict() for t in artifact.inputs], "outputs": [t.to_dict() for t in artifact.outputs],
                  "command": command}
    configs = {name: model_config(artifact, name, batching)}
    files: dict[str, dict] = {name: {"labels.txt": labels}}
    if config.preprocess:
        from vitrt.serving.preprocess import model_py, normalisation

        mean, std, source = normalisation(artifact.model, artifact.preprocessing)
        pre, ens = ensemble_configs(artifact, name, batching, mean, std)
        configs.update({pre.name: pre, ens.name: ens})
        files[pre.name] = {"1/model.py": model_py(artifact.inputs[0].name)}
        files[ens.name] = {"1/.keep": "", "labels.txt": labels}  # an ensemble's version directory stays empty
        provenance["preprocess"] = {"mean": list(mean), "std": list(std), "source": source,
                                    "models": [pre.name, ens.name]}
    texts = {entry: config_text(c) for entry, c in configs.items()}
    for entry, text in texts.items():
        parse_config(text)  # what Triton will parse, checked before anything is written
        check_outside_out("OUT", artifact.out, Path(config.repo) / entry)  # --force would replace what it exports
        check_output_dir(Path(config.repo) / entry, config.force)
    # an ensemble exported earlier around <name> would route to the new engine, whose batch and input it may not
    # fit — and Triton refuses to load a repository holding such an ensemble: replaced by --preprocess, else removed
    stale = [Path(config.repo) / f"{name}{suffix}" for suffix in ("_preprocess", "_ensemble")
             if f"{name}{suffix}" not in texts and (Path(config.repo) / f"{name}{suffix}").exists()]
    if stale and not config.force:
        raise OutputError(f"{', '.join(str(p) for p in stale)} were exported around an earlier {name}: add "
                          "--preprocess to export them again, or --force to remove them")
    for path in stale:
        check_output_dir(path, True)  # only what vitrt wrote is removed
    for entry, text in texts.items():
        with atomic_output_dir(Path(config.repo) / entry, config.force) as staging:
            (staging / "1").mkdir()
            (staging / "config.pbtxt").write_text(header + text)
            for relative, content in files[entry].items():
                (staging / relative).write_text(content)
            if entry == name:
                shutil.copyfile(artifact.path, staging / "1" / PLATFORMS[artifact.backend][1])
                write_json(staging / "vitrt.json", provenance)
    for path in stale:  # after the new engine is in place: a failed export leaves the old pair as it was
        shutil.rmtree(path)
    return Path(config.repo) / name
