"""What a compiled OUT offers an inference server: its backend artifact, the input and output tensors read from
that artifact itself, and its batch (static, or dynamic up to the engine's limit).

The tensors come from the engine, never from vitrt's conventions, so that a model configuration written from
them matches what the server will load:

* ``ort``: the inputs (initializers excluded) and outputs of ``model.ort.onnx``;
* ``torch``: those of ``model.torch.onnx``, the graph the torch runner imports (served by ``vitrt serve`` only:
  Triton has no native backend for it, see :func:`vitrt.serving.repository.check_exportable`);
* ``trt``: the engine's I/O tensors and its optimisation profile, through TensorRT's documented API
  (``num_io_tensors``, ``get_tensor_name / mode / dtype / shape``, ``get_tensor_profile_shape``). Reading a
  plan needs TensorRT and a CUDA device; without them the tensors come from ``OUT/model.onnx``, the network the
  ONNX parser turned into that plan (same names, data types and shapes; a dynamic batch gets the profile the
  compile built it with, ``manifest['batch_profile']``), and :attr:`CompiledArtifact.io_source` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.backends import BACKEND_NAMES
from vitrt.compiler.errors import BackendUnavailableError, VitrtError
from vitrt.compiler.jsonfile import read_json
from vitrt.compiler.output import artifact_in

NOT_AN_OUT_HINT = "pass the OUT directory written by vitrt compile MODEL -o OUT"
# what Triton accepts as a model (directory) name; use fullmatch ("$" would let a trailing newline through)
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class TensorIO:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", ...
    shape: tuple[int, ...]  # the engine's full shape, batch first; -1 marks a dynamic dimension

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class CompiledArtifact:
    out: Path
    model: str  # the manifest's model name
    backend: str  # "ort" | "trt" | "torch"
    path: Path  # the backend artifact (model.ort.onnx, model.plan, model.torch.onnx)
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    static_batch: int | None  # the batch baked into the engine; None: dynamic
    batch_limit: int | None  # the largest batch a dynamic engine accepts (TensorRT profile max); None: no limit
    io_source: str  # where inputs and outputs were read from
    preprocessing: dict | None = None  # the manifest's record of the model's input pipeline (mean, std, ...)
    batch_min: int = 1  # the smallest batch a dynamic engine accepts (TensorRT profile min, --min-batch)

    @property
    def num_classes(self) -> int:
        return self.outputs[0].shape[-1]

    def default_name(self) -> str:
        """A Triton model name from the manifest's model name (characters Triton refuses become '_')."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.model) or "vitrt_model"

    def check_single_io(self) -> None:
        """vitrt's runners take one image tensor and return one logits tensor; anything else was not compiled here."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise VitrtError(f"'{self.path}' has {len(self.inputs)} inputs and {len(self.outputs)} outputs; vitrt "
                             "serves engines with one image input and one logits output")


def open_artifact(out) -> CompiledArtifact:
    """The compiled artifact in ``out``; anything that is not a vitrt compile output is a one-line VitrtError."""
    out = Path(out)
    if not out.is_dir():
        raise VitrtError(f"'{out}' is not a vitrt compile output: not a directory; {NOT_AN_OUT_HINT}")
    if not (out / "manifest.json").is_file():
        raise VitrtError(f"'{out}' is not a vitrt compile output: it has no manifest.json; {NOT_AN_OUT_HINT}")
    manifest = read_json(out / "manifest.json", "manifest", NOT_AN_OUT_HINT)
    missing = [k for k in ("model", "backend", "artifact", "input_shape") if not isinstance(manifest, dict)
               or k not in manifest]
    if missing:
        raise VitrtError(f"'{out}/manifest.json' lacks '{missing[0]}': it was not written by vitrt compile; "
                         f"{NOT_AN_OUT_HINT}")
    backend = manifest["backend"]
    if backend not in BACKEND_NAMES:
        raise VitrtError(f"'{out}/manifest.json' names backend '{backend}'; vitrt serves {', '.join(BACKEND_NAMES)}")
    path = artifact_in(out, manifest)
    if backend in ("ort", "torch"):  # both artifacts are ONNX graphs: their I/O is what the runner takes
        inputs, outputs, (smallest, limit), source = *onnx_io(path), (1, None), path.name
    else:
        inputs, outputs, (smallest, limit), source = trt_io(path, out / "model.onnx", manifest.get("batch_profile"))
    if not inputs or not outputs:
        raise VitrtError(f"'{path}' declares no inputs or no outputs")
    first = inputs[0].shape[0] if inputs[0].shape else -1
    static = first if first > 0 else None
    declared = manifest["input_shape"][0] if manifest["input_shape"] else None
    if static != (declared if isinstance(declared, int) else None):
        raise VitrtError(f"'{out}' is inconsistent: the manifest's input batch is {declared} but {source} has "
                         f"{first}; compile OUT again")
    preprocessing = manifest.get("preprocessing")
    preprocessing = preprocessing if isinstance(preprocessing, dict) else None
    return CompiledArtifact(out, str(manifest["model"]), backend, path, inputs, outputs, static,
                            None if static else limit, source, preprocessing, 1 if static else smallest)


def onnx_io(path: Path) -> tuple[tuple[TensorIO, ...], tuple[TensorIO, ...]]:
    """Graph inputs (initializers excluded) and outputs of an ONNX model, as the runtime will see them."""
    import onnx

    from vitrt.compiler.onnx_file import read_onnx

    model = read_onnx(path)
    initializers = {t.name for t in model.graph.initializer}

    def tensor(value) -> TensorIO:
        t = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorIO(value.name, dtype, shape)

    return (tuple(tensor(v) for v in model.graph.input if v.name not in initializers),
            tuple(tensor(v) for v in model.graph.output))


def trt_io(plan: Path, onnx_path: Path, batch_profile=None):
    """(inputs, outputs, (smallest, largest batch), source) of a TensorRT plan; from ``onnx_path`` and the
    compile's recorded ``batch_profile`` (min, opt, max) where the plan cannot be read (largest None: no profile)."""
    try:
        return (*_engine_io(plan), plan.name)
    except BackendUnavailableError as exc:
        if not onnx_path.is_file():
            raise VitrtError(f"cannot read the TensorRT plan '{plan}' ({exc}) and '{onnx_path}' is missing") from None
        inputs, outputs = onnx_io(onnx_path)
        bounds = (int(batch_profile[0]), int(batch_profile[2])) if batch_profile else (1, None)
        return inputs, outputs, bounds, f"{onnx_path.name} (the network {plan.name} was built from; TensorRT cannot " \
            "read the plan on this machine)"


def _engine_io(plan: Path):
    """I/O tensors and the first optimisation profile's (min, max) batch, from the deserialized engine."""
    from vitrt.compiler.backends.trt import require_tensorrt

    require_tensorrt()
    import tensorrt as trt
    import torch

    from vitrt.compiler.backends.trt_runner import dims

    if not torch.cuda.is_available():
        raise BackendUnavailableError("reading a TensorRT plan needs a CUDA device")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise VitrtError(f"TensorRT could not deserialize '{plan}' (built by another TensorRT version?)")
    inputs: list[TensorIO] = []
    outputs: list[TensorIO] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        tensor = TensorIO(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
                          dims(engine.get_tensor_shape(name)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(tensor)
    bounds: tuple[int, int | None] = (1, None)
    if inputs and inputs[0].shape[0] == -1:
        smallest, _, largest = engine.get_tensor_profile_shape(inputs[0].name, 0)  # min, opt, max shapes
        bounds = (int(smallest[0]), int(largest[0]))
    return tuple(inputs), tuple(outputs), bounds


def class_labels(model: str, num_classes: int) -> list[str]:
    """One label per class: the digit for the digits reference, ImageNet's names for 1000 classes, else class_i."""
    if model.startswith("digits") and num_classes == 10:
        return [str(i) for i in range(10)]
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class_{i}" for i in range(num_classes)]
