"""``vitrt export triton --preprocess``: an ensemble that takes raw images, so clients need not know the model's
input size or normalisation.

    REPO/<name>_preprocess/   Python backend: raw uint8 [H, W, 3] (any size) -> float32 [3, S, S]
    REPO/<name>_ensemble/     raw -> <name>_preprocess -> <name> -> logits

The step resizes to the engine's input size (bilinear, half-pixel centres: ``torch.nn.functional.interpolate(...,
mode="bilinear", align_corners=False)``, no crop), scales to [0, 1] and normalises with the model's mean and std:
the manifest's recorded ``preprocessing`` (timm's data config of the compiled model); for an OUT compiled before
vitrt recorded it, timm's pretrained configuration of the model name, (0.5, 0.5, 0.5) for the digits reference,
ImageNet's otherwise. The functions below are the implementation: ``model.py`` is written from their
source, so what the tests check here is what Triton runs (numpy only: the Python backend has nothing else).
"""

from __future__ import annotations

import inspect

import numpy as np


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """[B, H, W, C] float32 -> [B, size, size, C], bilinear with half-pixel centres (no antialiasing)."""

    def axis(n_in: int):
        coord = np.clip((np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5, 0.0, n_in - 1)
        low = np.floor(coord).astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (coord - low).astype(np.float32)

    y0, y1, wy = axis(images.shape[1])
    x0, x1, wx = axis(images.shape[2])
    rows = images[:, y0] * (1.0 - wy)[None, :, None, None] + images[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1.0 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def preprocess(raw: np.ndarray, size: int, mean, std) -> np.ndarray:
    """Raw uint8 images [B, H, W, 3] -> normalised float32 [B, 3, size, size]; an empty image is a ValueError."""
    if raw.ndim != 4 or raw.shape[1] < 1 or raw.shape[2] < 1 or raw.shape[3] != 3:
        raise ValueError(f"expected images [batch, height >= 1, width >= 1, 3], got shape {list(raw.shape)}")
    images = resize_bilinear(raw.astype(np.float32) / 255.0, size)
    images = (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


MODEL_PY = '''"""Triton Python backend: raw images -> the engine's input (vitrt export triton --preprocess)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

{functions}

class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.size = int(parameters["size"]["string_value"])
        self.mean = json.loads(parameters["mean"]["string_value"])
        self.std = json.loads(parameters["std"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "{raw}").as_numpy()
            try:
                images = preprocess(raw, self.size, self.mean, self.std)
            except ValueError as exc:  # a bad image is this request's error, not the model's crash
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("{images}", images)]))
        return responses
'''

RAW_INPUT = "raw"


def normalisation(model: str, preprocessing: dict | None = None) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where they come from): the manifest's ``preprocessing`` record where it has them (what the model
    was compiled with, whatever its name), else from the manifest's model name (OUTs compiled before vitrt recorded
    them)."""
    if preprocessing and "mean" in preprocessing and "std" in preprocessing:
        return (tuple(float(m) for m in preprocessing["mean"]), tuple(float(s) for s in preprocessing["std"]),
                "the manifest's preprocessing (the model's timm data config)")
    if model.startswith("digits"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "the digits reference's data pipeline"
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    if cfg is not None:
        return tuple(cfg.mean), tuple(cfg.std), f"timm's pretrained configuration of {model}"
    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), "ImageNet's (no timm configuration)"


def model_py(input_name: str) -> str:
    functions = "\n\n".join(inspect.getsource(f) for f in (resize_bilinear, preprocess))
    return MODEL_PY.format(functions=functions, raw=RAW_INPUT, images=input_name)
