"""Numerical verification: the ONNX graph in ONNX Runtime against a torch reference on the same inputs."""

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


def run_onnx(model: onnx.ModelProto, images: np.ndarray, batch: int | None) -> np.ndarray:
    """Run ``model`` in ONNX Runtime (CPU, basic optimisations only) over ``images`` in chunks of ``batch``."""
    session = ort_session(model, level="basic")
    name = session.get_inputs()[0].name
    step = batch or len(images)
    return np.concatenate([session.run(None, {name: images[i:i + step]})[0] for i in range(0, len(images), step)])


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
