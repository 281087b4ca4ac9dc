"""Numerical verification: the ONNX graph in ONNX Runtime against a torch reference on the same inputs.

A graph that computes in bfloat16 (``--precision bf16``, for TensorRT) runs in onnx's reference evaluator instead:
ONNX Runtime's CPU provider has no bf16 kernels for MatMul, Add, Erf, Softmax and the like (only data movement),
and the reference evaluator executes the graph as written, rounding every op's result to bf16.
"""

from __future__ import annotations

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
    name = model.graph.input[0].name
    if computes_in_bfloat16(model):
        evaluator = reference_evaluator(model)
        run = lambda x: evaluator.run(None, {name: x})[0]  # noqa: E731
    else:
        session = ort_session(model, level="basic")
        run = lambda x: session.run(None, {name: x})[0]  # noqa: E731
    step = batch or len(images)
    return np.concatenate([run(images[i:i + step]) for i in range(0, len(images), step)])


@torch.no_grad()
def run_torch(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    return model.eval()(torch.from_numpy(images)).float().numpy()


@dataclass
class Verification:
    max_abs_err: float
    reference: str
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tolerance

    def to_dict(self) -> dict:
        return {"max_abs_err": self.max_abs_err, "reference": self.reference, "tolerance": self.tolerance,
                "ok": self.ok}


def compare(model: onnx.ModelProto, reference: torch.nn.Module, images: np.ndarray, batch: int | None,
            reference_name: str, tolerance: float = FP32_TOLERANCE) -> Verification:
    err = float(np.max(np.abs(run_onnx(model, images, batch) - run_torch(reference, images))))
    return Verification(err, reference_name, tolerance)


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
        if not check.ok:
            raise VitrtError(f"pass '{p.name}' broke numerical equivalence with the torch twin: max abs error "
                             f"{check.max_abs_err:.3g} > {tolerance:g}")
