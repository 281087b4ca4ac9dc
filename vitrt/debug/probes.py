"""Running a graph or a twin so that every probe point comes back: ``probe(images) -> {point name: array}``.

* a graph: its probe tensors are marked as graph outputs (:func:`mark_outputs`) and it runs in ONNX Runtime through
  :func:`~vitrt.compiler.backends.ort.ort_session` at the level the ort runner uses, so ONNX Runtime's fusions
  happen wherever a marked tensor does not stop them; other backends run the same marked graph (:func:`graph_probe`);
* a twin: forward hooks on the modules of the points, and — for the attention logits and probabilities, which are
  no module's input or output — a torch function mode that records the softmax computed inside each attention
  module (the canonical attention, the fake-quant one, the fp16 one: whichever way it calls softmax).

Batches are cut to the graph's static batch (the last one padded, the padding dropped again), so any number of
images can be probed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from vitrt.compiler.errors import VitrtError
from vitrt.debug.config import PROBE_BACKENDS
from vitrt.debug.points import Point

Probe = Callable[[np.ndarray], dict]
TWIN_BATCH = 64  # images per twin forward pass


def mark_outputs(model: onnx.ModelProto, points: list[Point]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are its own outputs plus every point's tensor (element types from shape
    inference; shapes left open). A point on the graph's input (a float graph's ``patch_embed.input``) is not marked:
    the probe hands the images back."""
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    points = [p for p in points if p.tensor not in {i.name for i in model.graph.input}]
    types = {v.name: v.type.tensor_type.elem_type for v in marked.graph.value_info}
    if any(p.tensor not in types for p in points):
        inferred = onnx.shape_inference.infer_shapes(marked)
        types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info})
    present = {o.name for o in marked.graph.output}
    for point in points:
        if point.tensor in present:
            continue
        if point.tensor not in types:
            raise VitrtError(f"probe point '{point.name}': the graph's tensor '{point.tensor}' has no inferred type")
        marked.graph.output.append(onnx.helper.make_tensor_value_info(point.tensor, types[point.tensor], None))
        present.add(point.tensor)
    return marked


def graph_batch(model: onnx.ModelProto) -> int | None:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def in_batches(run: Callable[[np.ndarray], dict], images: np.ndarray, step: int | None, pad: bool = True) -> dict:
    """``run`` over ``images`` in chunks of ``step`` (a static batch: the last chunk zero-padded unless not
    ``pad``), results concatenated."""
    step = step or len(images)
    parts: dict[str, list] = {}
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        valid = len(chunk)
        if pad and valid < step:
            chunk = np.concatenate([chunk, np.zeros((step - valid, *chunk.shape[1:]), dtype=chunk.dtype)])
        for name, value in run(chunk).items():
            parts.setdefault(name, []).append(np.asarray(value, dtype=np.float32)[:valid])
    return {name: np.concatenate(values) for name, values in parts.items()}


def ort_probe(model: onnx.ModelProto, points: list[Point], threads: int | None = None) -> Probe:
    """The graph in ONNX Runtime (CPU) with every point as an output."""
    from vitrt.compiler.backends.ort import ort_session

    bf16 = onnx.TensorProto.BFLOAT16
    if any(t.data_type == bf16 for t in model.graph.initializer) or any(
            a.name == "to" and a.i == bf16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute):
        raise VitrtError("ONNX Runtime has no bfloat16 kernels on CPU, so it cannot run this bf16 graph: probe it "
                         "with --backend torch")
    session = ort_session(mark_outputs(model, points), threads=threads, level="all")
    input_name = session.get_inputs()[0].name
    names = list(dict.fromkeys(p.tensor for p in points if p.tensor != input_name))

    def run(images):
        images = np.ascontiguousarray(images, np.float32)
        values = dict(zip(names, session.run(names, {input_name: images})), **{input_name: images})
        return {p.name: values[p.tensor] for p in points}

    batch = graph_batch(model)
    return lambda images: in_batches(run, images, batch, pad=batch is not None)


def torch_probe(model: onnx.ModelProto, points: list[Point], threads: int | None = None) -> Probe:
    """The graph with every point as an output, imported node for node into torch.fx as the torch backend runs it
    (on CPU; a marked intermediate keeps the attention out of SDPA, whose inside it would hide)."""
    from vitrt.compiler.backends.torch_import import import_onnx

    if threads:
        torch.set_num_threads(threads)
    marked = mark_outputs(model, points)
    imported = import_onnx(marked, "cpu")
    module = imported.module.eval()
    names = [o.name for o in marked.graph.output]
    input_name = marked.graph.input[0].name

    def run(images):
        images = np.ascontiguousarray(images, np.float32)
        with torch.inference_mode():
            out = module(torch.from_numpy(images))
        out = out if isinstance(out, (tuple, list)) else (out,)
        values = {name: value.float().numpy() for name, value in zip(names, out)}
        values[input_name] = images
        return {p.name: values[p.tensor] for p in points}

    return lambda images: in_batches(run, images, imported.batch, pad=imported.batch is not None)


def graph_probe(model: onnx.ModelProto, points: list[Point], backend: str = "ort", threads: int | None = None
                ) -> Probe:
    """The graph with every point as an output, run by ``backend``."""
    if backend == "ort":
        return ort_probe(model, points, threads)
    if backend == "torch":
        return torch_probe(model, points, threads)
    raise VitrtError(f"backend '{backend}' cannot return intermediate tensors here; use one of "
                     f"{', '.join(PROBE_BACKENDS)}")


# --- the twin -----------------------------------------------------------------------------------------------------

_SOFTMAX = (torch.Tensor.softmax, torch.softmax, torch.nn.functional.softmax, torch.special.softmax)


class _SoftmaxRecorder(torch.overrides.TorchFunctionMode):
    """Records the first softmax (input, output) computed while an attention module runs."""

    def __init__(self):
        super().__init__()
        self.attention: list[str] = []  # the attention modules running (innermost last)
        self.seen: dict[str, tuple] = {}

    def enter(self, path: str) -> None:
        self.attention.append(path)

    def leave(self) -> None:
        self.attention.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.attention and func in _SOFTMAX and self.attention[-1] not in self.seen:
            self.seen[self.attention[-1]] = (args[0], out)
        return out


def twin_root(twin: nn.Module) -> tuple[nn.Module, str]:
    """The canonical model inside ``twin`` (a wrapper such as the fp16 twin holds it as a child) and its path."""
    for name, module in twin.named_modules():
        if isinstance(getattr(module, "blocks", None), nn.ModuleList):
            return module, name
    raise VitrtError(f"{type(twin).__name__} is not a canonical twin: no module with a 'blocks' list")


def _numpy(value) -> np.ndarray:
    if isinstance(value, tuple):
        value = value[0]
    return value.detach().float().cpu().numpy()


def _present(root: nn.Module, point: Point) -> tuple[str | None, str, nn.Module | None]:
    """The first of the point's twin alternatives the twin has: (how, path, module); how is None if none."""
    for how, path in point.twin:
        if how == "result":
            return how, path, root
        try:
            return how, path, root.get_submodule(path)
        except AttributeError:
            continue
    return None, "", None


def twin_probe(twin: nn.Module, points: list[Point]) -> Probe:
    """The twin with hooks on every point it has (points it lacks are left out of the result)."""
    root, _ = twin_root(twin)
    twin = twin.eval()

    def run(images: np.ndarray) -> dict:
        captured: dict[str, np.ndarray] = {}
        recorder = _SoftmaxRecorder()

        def keep(name, value) -> None:  # a hook returning a value would replace the module's input or output
            captured.setdefault(name, _numpy(value))
        handles = []
        try:
            for point in points:
                how, path, module = _present(root, point)
                if how in ("result", None):
                    continue
                if how == "output":
                    handles.append(module.register_forward_hook(
                        lambda m, a, out, name=point.name: keep(name, out)))
                elif how == "output_transposed":  # reported in the graph's layout, whatever the two sizes
                    handles.append(module.register_forward_hook(
                        lambda m, a, out, name=point.name: keep(name, out.transpose(-1, -2))))
                elif how == "input":
                    handles.append(module.register_forward_pre_hook(
                        lambda m, a, name=point.name: keep(name, a[0])))
                elif how == "softmax_input":  # entering / leaving the attention module scopes the recorder
                    handles.append(module.register_forward_pre_hook(
                        lambda m, a, path=path: recorder.enter(path)))
                    handles.append(module.register_forward_hook(lambda m, a, out: recorder.leave()))
            with torch.no_grad(), recorder:
                result = twin(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
        finally:
            for handle in handles:
                handle.remove()
        for point in points:
            how, path, _ = _present(root, point)
            if how == "result":
                captured[point.name] = _numpy(result)
            elif how in ("softmax_input", "softmax_output") and path in recorder.seen:
                captured[point.name] = _numpy(recorder.seen[path][how == "softmax_output"])
        return captured

    return lambda images: in_batches(run, images, TWIN_BATCH, pad=False)
