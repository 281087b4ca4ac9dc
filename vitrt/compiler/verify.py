"""Numerical verification: the ONNX graph in ONNX Runtime against a torch reference on the same inputs.

A graph that computes in bfloat16 (``--precision bf16``, for TensorRT) runs in onnx's reference evaluator instead:
ONNX Runtime's CPU provider has no bf16 kernels for MatMul, Add, Erf, Softmax and the like (only data movement),
and the reference evaluator executes the graph as written, rounding every op's result to bf16.

Discrete decisions (which tokens a merge picks) are compared apart from the arithmetic. Computed in fp16 or on
int8-rounded activations, a near tie between two candidates can go one way in the graph and the other in the twin,
and one image's logits then differ by a whole merge — not a defect of either. A twin submodule that makes such
decisions declares them (``decision_tensors``: the int64 graph tensors that hold them; it reads them from its
``forced`` dict and marks the images it would have decided otherwise in ``disagree``); the graph is run with those
tensors as extra outputs, the twin is run with its decisions forced to the graph's, and the logits are compared
under equal decisions. How many images the two would have decided differently is reported beside
(``decision_flips``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from vitrt.compiler.backends.ort import ort_session
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.pass_manager import FP32_TOLERANCE, Instrument, Pass, PassRecord, PassResult


def verification_inputs(spec, batch: int, seed: int = 0, count: int = 1) -> np.ndarray:
    """Deterministic N(0, 1) images shaped for ``spec``; ``count`` batches stacked along axis 0."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count * batch, spec.in_chans, spec.img, spec.img)).astype(np.float32)


def computes_in_bfloat16(model: onnx.ModelProto) -> bool:
    """Whether any tensor of ``model`` is bfloat16 (ONNX Runtime's CPU provider cannot run such a graph)."""
    bf16 = onnx.TensorProto.BFLOAT16
    graph = model.graph
    return any(t.data_type == bf16 for t in graph.initializer) or any(
        vi.type.tensor_type.elem_type == bf16 for vi in list(graph.value_info) + list(graph.output))


def reference_evaluator(model: onnx.ModelProto):
    """onnx's ReferenceEvaluator for ``model``, with GatherElements as the ONNX spec defines it: onnx 1.23's own
    mishandles a negative axis and indices narrower than the data along the axis-free dims (token merging uses
    both), so it is replaced by numpy's take_along_axis on the data cut to the indices' extent."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        op_domain = ""

        def _run(self, data, indices, axis=0):
            axis = axis % data.ndim
            extent = tuple(slice(None) if d == axis else slice(0, n) for d, n in enumerate(indices.shape))
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data[extent], indices, axis=axis),)

    return ReferenceEvaluator(model, new_ops=[GatherElements])


def run_onnx(model: onnx.ModelProto, images: np.ndarray, batch: int | None) -> np.ndarray:
    """Run ``model`` over ``images`` in chunks of ``batch``: in ONNX Runtime (CPU, basic optimisations only), or
    in onnx's reference evaluator when the graph computes in bfloat16."""
    return np.concatenate([outputs[0] for outputs in _run_chunks(model, images, batch)])


def _runner(model: onnx.ModelProto, extra: tuple[str, ...] = ()):
    """images -> every output of ``model`` (the logits, then the ``extra`` tensors made outputs), one session."""
    if extra:  # decision tensors: int64 indices
        copied = onnx.ModelProto()
        copied.CopyFrom(model)
        copied.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, None) for n in extra)
        model = copied
    name = model.graph.input[0].name
    if computes_in_bfloat16(model):
        evaluator = reference_evaluator(model)
        return lambda x: evaluator.run(None, {name: x})
    session = ort_session(model, level="basic")
    return lambda x: session.run(None, {name: x})


def _run_chunks(model: onnx.ModelProto, images: np.ndarray, batch: int | None, extra: tuple[str, ...] = ()):
    """Every output of ``model`` (the logits, then the ``extra`` tensors made outputs) per chunk of ``batch``."""
    run = _runner(model, extra)
    step = batch or len(images)
    return [run(images[i:i + step]) for i in range(0, len(images), step)]


@torch.no_grad()
def run_torch(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    return model.eval()(torch.from_numpy(images)).float().numpy()


@dataclass
class Verification:
    max_abs_err: float
    reference: str
    tolerance: float
    decision_flips: int | None = None  # images the twin would have decided differently (None: no decisions)

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tolerance

    def to_dict(self) -> dict:
        flips = {} if self.decision_flips is None else {
            "decision_flips": self.decision_flips,
            "decisions": "the twin ran with the graph's token-merge decisions (near ties can go either way in "
                         "reduced precision); decision_flips counts the images it would have decided differently"}
        return {"max_abs_err": self.max_abs_err, "reference": self.reference, "tolerance": self.tolerance,
                "ok": self.ok, **flips}


def decision_modules(reference: torch.nn.Module) -> list[torch.nn.Module]:
    """The reference's submodules that make discrete decisions the graph also makes (``decision_tensors``)."""
    return [m for m in reference.modules() if getattr(m, "decision_tensors", ())]


def compare(model: onnx.ModelProto, reference: torch.nn.Module, images: np.ndarray, batch: int | None,
            reference_name: str, tolerance: float = FP32_TOLERANCE) -> Verification:
    deciders = decision_modules(reference)
    if not deciders:
        err = float(np.max(np.abs(run_onnx(model, images, batch) - run_torch(reference, images))))
        return Verification(err, reference_name, tolerance)
    names = tuple(n for m in deciders for n in m.decision_tensors)
    step = batch or len(images)
    err, flips = 0.0, 0
    for start, outputs in zip(range(0, len(images), step), _run_chunks(model, images, batch, names)):
        chunk = images[start:start + step]
        with pinned(deciders, dict(zip(names, outputs[1:])), len(chunk)) as flipped:
            expected = run_torch(reference, chunk)
        flips += flipped()
        err = max(err, float(np.max(np.abs(outputs[0] - expected))))
    return Verification(err, reference_name, tolerance, flips)


@contextlib.contextmanager
def pinned(deciders: list[torch.nn.Module], values: dict[str, np.ndarray], images: int):
    """Run the twin's ``deciders`` with the graph's decisions (``values``: tensor name -> array) on ``images``
    images; yields a function that, after the run, counts the images they would have decided otherwise."""
    try:
        for m in deciders:
            m.forced = {n: torch.from_numpy(np.asarray(values[n])) for n in m.decision_tensors}
            m.disagree = torch.zeros(images, dtype=torch.bool)
        counts: list[int] = []
        yield lambda: counts[0] if counts else 0
        counts.append(int(torch.stack([m.disagree for m in deciders]).any(0).sum()))
    finally:
        for m in deciders:
            m.forced = m.disagree = None


def verify_artifact(runner, model: onnx.ModelProto, images: np.ndarray, batch: int | None, tolerance: float,
                    decisions: bool) -> dict:
    """The built artifact (what ships: ONNX Runtime's optimised graph, the torch import, the TensorRT engine) on
    the verification images against the verified ``model``. ``decisions``: the graph merges tokens in reduced
    precision, where the runtime's own rewrites can tip a near tie the other way — the difference is recorded
    then, not failed; a non-finite output never is (a decision tipping the other way moves logits by a finite
    amount: NaN or inf is a broken artifact, an fp16 overflow)."""
    step = batch or len(images)
    built = np.concatenate([runner.infer(images[i:i + step]) for i in range(0, len(images), step)])
    err = float(np.max(np.abs(built - run_onnx(model, images, batch))))
    return {"max_abs_err": err, "against": "the verified graph", "tolerance": tolerance,
            "ok": err <= tolerance or (decisions and bool(np.isfinite(err))),
            **({"note": "token-merge decisions may differ between the runtimes near ties; recorded, not failed"}
               if decisions and err > tolerance and np.isfinite(err) else {})}


class VerifyInstrument(Instrument):
    """After every modifying pass, check the graph against the (equally transformed) twin.

    A pass that breaks equivalence stops the compile with an error naming the pass and the error size. A pass
    that changes precision declares a looser tolerance; later passes are compared with that reduced-precision
    twin, so the tolerance stays raised.
    """

    def __init__(self, images: np.ndarray, batch: int | None, tolerance: float = FP32_TOLERANCE):
        self.images, self.batch, self.tolerance = images, batch, tolerance

    def after_pass(self, p: Pass, result: PassResult, twin, record: PassRecord) -> None:
        if not result.modified or twin is None:
            return
        tolerance = self.tolerance = max(self.tolerance, record.tolerance)
        check = compare(result.view.to_onnx(), twin, self.images, self.batch, "torch twin", tolerance)
        record.stats["verify_max_abs_err"] = check.max_abs_err
        if check.decision_flips is not None:
            record.stats["verify_decision_flips"] = check.decision_flips
        if not check.ok:
            raise VitrtError(f"pass '{p.name}' broke numerical equivalence with the torch twin: max abs error "
                             f"{check.max_abs_err:.3g} > {tolerance:g}")
