"""nvidia-modelopt's fake quantizers on the torch twin: PTQ calibration, the scale table read from them, and
the fake-quant twin rebuilt from a table.

    twin (fp32, maybe pruned / 2:4) ──mtq.quantize + calibrate──► fake-quant twin ──QAT (qat.py)──►
        fake-quant twin ──table_from_twin──► ScaleTable (JSON) ──► QuantPlan ──► Q/DQ pass (ONNX)

INT8 and FP8 E4M3: modelopt ``TensorQuantizer``s on every Linear and the patch-embedding Conv — weights per
output channel (axis 0 of torch's [out, in] = axis 1 of ONNX's B[K, N]; INT8 on the narrow range [-127, 127] of
the integer initializers), activations per tensor, symmetric — plus, with ``quantize_attention``, four per-tensor quantizers on the attention matmul inputs
(:class:`QuantAttention`); at FP8 the Softmax output's range is fixed at 1 (scale 1/448, Model Optimizer's
pattern), not calibrated. Calibrators: max (modelopt's MaxCalibrator) or percentile / entropy / mse
(modelopt's HistogramCalibrator); weights always use max.

INT4 weight-only (block-wise along K) is plain torch here, not modelopt: modelopt 0.47's static INT4 block
quantizer (``StaticBlockScaleQuantizer``) uses two-level scaling (block scales re-quantized against a global
amax), which ONNX's single-level block DequantizeLinear cannot express, and its dynamic block mode keeps no
amax, so a user's scale table could not be loaded into it. Weight-only quantization needs no data: the twin
simply holds the dequantized weights.

modelopt is imported inside the functions (``import vitrt`` stays light), and only under
:func:`quiet_modelopt`: its import and its conversion print and warn, which must not reach vitrt's output.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import numpy as np
import torch
from torch import nn

from vitrt.calib.data import take_images
from vitrt.compiler.errors import VitrtError
from vitrt.compiler.progress import QUIET, Progress
from vitrt.compiler.twin import CanonicalAttention, CanonicalViT
from vitrt.transforms.quant.config import CALIB_METHODS
from vitrt.transforms.quant.scale_table import (PRECISION_DTYPES, QMAX, ScaleEntry, ScaleTable, expected_entries,
                                                fixed_amax, fused_attention_ok, int4_block_size, linear_layers)

ATTENTION_QUANTIZERS = {"qk_a_input_quantizer": "qk.input_a", "qk_b_input_quantizer": "qk.input_b",
                        "av_a_input_quantizer": "av.input_a", "av_b_input_quantizer": "av.input_b"}


class QuantAttention(CanonicalAttention):
    """CanonicalAttention with per-tensor quantizers on both inputs of QKᵀ and of ·V (TensorRT's fused-MHA
    placement: q and k before QKᵀ, the softmax output and v before ·V). Same op order as the lowering."""

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q = self.qk_a_input_quantizer(self.split_heads(self.q(x), self.qk_dim))
        k = self.qk_b_input_quantizer(self.split_heads(self.k(x), self.qk_dim))
        v = self.av_b_input_quantizer(self.split_heads(self.v(x), self.v_dim))
        logits = q @ k.transpose(-2, -1)  # q carries the attention scale (see CanonicalAttention)
        if attn_bias is not None:
            logits = logits + attn_bias
        out = self.av_a_input_quantizer(logits.softmax(dim=-1)) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.v_dim))


def _add_attention_quantizers(twin: CanonicalViT, precision: str, method: str) -> None:
    """Per-tensor activation quantizers on the attention matmuls of blocks whose fused attention allows it
    (added after ``mtq.quantize``: modelopt converts only nn modules it knows, and refuses a model that
    already holds quantizers)."""
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    act = modelopt_config(precision, method)["quant_cfg"][2]["cfg"]
    for i, block in enumerate(twin.blocks):
        if block.attn is not None and fused_attention_ok(twin.spec, i, "int8"):
            block.attn.__class__ = QuantAttention
            for attr in ATTENTION_QUANTIZERS:
                setattr(block.attn, attr, TensorQuantizer(QuantizerAttributeConfig(**act)))


def modelopt_config(precision: str, method: str) -> dict:
    """The mtq config: symmetric, weights per output channel, activations per tensor; histogram calibrator for
    the activation quantizers unless ``method`` is max."""
    bits = {"int8": 8, "fp8": (4, 3)}[precision]
    # Activations: [-128, 127] like ONNX QuantizeLinear and TensorRT. Weights: narrow, symmetric [-127, 127], like
    # the integer initializers the Q/DQ pass stores; after PTQ |w| <= amax anyway, but QAT trains the weights
    # against a fixed amax, and a weight beyond it must clip to -127 in the twin as in the graph, not to -128.
    act = {"num_bits": bits, "axis": None, "narrow_range": False}
    weight = {"num_bits": bits, "axis": 0, "narrow_range": precision == "int8"}
    if method != "max":
        act["calibrator"] = "histogram"
    return {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                          {"quantizer_name": "*weight_quantizer", "cfg": weight},
                          {"quantizer_name": "*input_quantizer", "cfg": act},
                          # LayerNorm (and Softmax, GELU) stay in higher precision: TensorRT's placement rules.
                          {"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False}],
            "algorithm": None}


def _quantizers(model: nn.Module):
    from modelopt.torch.quantization.nn import TensorQuantizer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, TensorQuantizer) and m.is_enabled]


# modelopt's own logger, and torch's C++-extension logger that modelopt's import wakes ("No CUDA runtime is found").
NOISY_LOGGERS = ("modelopt", "torch.utils.cpp_extension")


@contextlib.contextmanager
def quiet_modelopt():
    """Keep modelopt's chatter out of vitrt's output: its prints ("Inserted N quantizers"), its warnings
    (e.g. torch.jit.script deprecation on import) and its log records below ERROR.

    stdout / stderr are captured and the warning filters restored on exit; the loggers' levels are changed only
    inside and restored afterwards (never globally).
    """
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def fake_quantize(model: nn.Module, precision: str, method: str, quantize_attention: bool) -> None:
    """Insert modelopt's fake quantizers into ``model`` in place (quietly), attention quantizers if asked."""
    with quiet_modelopt():
        import modelopt.torch.quantization as mtq  # the first import of modelopt in a process is noisy too

        mtq.quantize(model, modelopt_config(precision, method), forward_loop=None)
    if quantize_attention:
        _add_attention_quantizers(model, precision, method)


CALIB_BATCH = 64  # images per calibration forward pass


@torch.no_grad()
def _calibrate(model: nn.Module, batches, method: str, percentile: float, total_batches: int,
               progress: Progress = QUIET) -> None:
    """Collect statistics over ``batches`` (a progress bar of ``total_batches``) and load amax: max for weights,
    ``method`` for activations (a second bar over the quantizers)."""
    from modelopt.torch.quantization.calib import MaxCalibrator
    from modelopt.torch.quantization.model_calib import enable_stats_collection

    enable_stats_collection(model)
    model.eval()
    with progress.bar(total_batches, "calibration batches") as bar:
        for images in batches:
            model(images)
            bar.update(1)
    quantizers = _quantizers(model)
    with progress.bar(len(quantizers), f"{method} ranges") as bar:  # entropy / mse take minutes on large models
        for _, q in quantizers:
            if isinstance(q._calibrator, MaxCalibrator):
                q.load_calib_amax()
            elif method == "percentile":
                q.load_calib_amax("percentile", percentile=percentile)
            else:  # entropy / mse sweep candidate amax over the histogram; stride 8 keeps it ~8x cheaper on CPU
                q.load_calib_amax(method, stride=8)
            q.enable_quant()
            q.disable_calib()
            bar.update(1)


def calibration_batches(data, batch_size: int = CALIB_BATCH, max_images: int = 512):
    """The first ``max_images`` images of ``data`` (a Dataset, streamed) in batches."""
    return take_images(data, max_images, batch_size)


def quantize_twin(twin: CanonicalViT, precision: str, data=None, *, method: str = "max",
                  quantize_attention: bool = False, block_size: int | None = None, percentile: float = 99.99,
                  max_images: int = 512, progress: Progress = QUIET) -> tuple[CanonicalViT, ScaleTable]:
    """PTQ: a fake-quant copy of ``twin`` calibrated on the first ``max_images`` images of ``data`` (a Dataset)
    and its scale table; ``progress`` shows a bar over the calibration batches.

    ``twin`` itself is not changed. INT4 weight-only needs no data.
    """
    if precision not in PRECISION_DTYPES:
        raise VitrtError(f"cannot quantize to '{precision}'; use one of {sorted(PRECISION_DTYPES)}")
    if method not in CALIB_METHODS:
        raise VitrtError(f"unknown calibration method '{method}'; use one of {CALIB_METHODS}")
    if precision == "int4w":
        table = int4_table(twin, block_size)
        return apply_scale_table(twin, table), table
    if data is None or len(data) == 0:
        raise VitrtError(f"{precision} calibration needs data: pass --calib-data digits|synthetic|PATH")
    model = copy.deepcopy(twin).eval()
    fake_quantize(model, precision, method, quantize_attention)
    images = min(len(data), max_images)
    _calibrate(model, calibration_batches(data, max_images=max_images), method, percentile,
               total_batches=-(-images // CALIB_BATCH), progress=progress)
    _fix_ranges(model, precision)
    source = f"calibration:{method}" + (f"@{percentile}" if method == "percentile" else "")
    return model, table_from_twin(model, precision, quantize_attention=quantize_attention, source=source,
                                  meta={"calib_images": images})


def _fix_ranges(model: nn.Module, precision: str) -> None:
    """Replace the calibrated range of every quantizer whose range is fixed at ``precision`` (the FP8 Softmax
    output: amax 1, scale 1/448)."""
    for name, q in _quantizers(model):
        key = _quantizer_table_name(name)
        amax = None if key is None else fixed_amax(precision, key)
        if amax is not None:
            q.amax = torch.full_like(q.amax, amax)


def _quantizer_table_name(module_name: str) -> str | None:
    """modelopt quantizer path -> canonical scale-table name (None for quantizers vitrt does not place)."""
    layer, _, attr = module_name.rpartition(".")
    if attr == "input_quantizer":
        return f"{layer}.input"
    if attr == "weight_quantizer":
        return f"{layer}.weight"
    if attr in ATTENTION_QUANTIZERS:
        return f"{layer}.{ATTENTION_QUANTIZERS[attr]}"
    return None


def table_from_twin(model: CanonicalViT, precision: str, *, quantize_attention: bool = False,
                    source: str = "calibration", meta: dict | None = None, exclude=()) -> ScaleTable:
    """Read every quantizer's amax into a ScaleTable (names and shapes checked against the spec; the layers in
    ``exclude`` stay float)."""
    expected = expected_entries(model.spec, precision, quantize_attention=quantize_attention, exclude=exclude)
    entries = {}
    for name, q in _quantizers(model):
        key = _quantizer_table_name(name)
        if key is None or key not in expected:
            continue
        dtype, shape, axis, block = expected[key]
        amax = q.amax.detach().float().cpu().numpy().reshape(shape)
        entries[key] = ScaleEntry(dtype, np.maximum(amax, np.float32(1e-8)), axis, block)
    missing = [k for k in expected if k not in entries]
    if missing:
        raise VitrtError(f"quantized twin has no calibrated quantizer for '{missing[0]}'")
    return ScaleTable(precision, {k: entries[k] for k in expected}, source, dict(meta or {}))


def int4_table(twin: CanonicalViT, block_size: int | None = None) -> ScaleTable:
    """INT4 weight-only ranges: max |w| of every block of ``block`` consecutive input channels (along K)."""
    block = int4_block_size(twin.spec, block_size)
    entries = {}
    for name in linear_layers(twin.spec):
        w = twin.get_submodule(name).weight.detach().float().T  # B[K, N]
        k, n = w.shape
        amax = w.abs().reshape(k // block, block, n).amax(dim=1).numpy()
        entries[f"{name}.weight"] = ScaleEntry("int4-block", np.maximum(amax, INT4_AMAX_FLOOR), 0, block)
    return ScaleTable("int4w", entries, "weights:max", {"block_size": block})


# The smallest block range kept: its scale amax / 7 is FP16's smallest normal number, so the scale survives the
# W4A16 typing (an all-zero or tiny block's scale would become 0 or subnormal in FP16); weights of such a block
# are below 4.3e-4 and quantize to 0 or ±1 step either way.
INT4_AMAX_FLOOR = np.float32(QMAX["int4-block"] * 2.0 ** -14)


def fake_quant_int4(weight_kn: torch.Tensor, amax: np.ndarray, block: int) -> torch.Tensor:
    """Quantize-dequantize B[K, N] block-wise along K with ``scale = amax / 7`` (round half to even)."""
    scale = torch.from_numpy(np.repeat(amax / np.float32(QMAX["int4-block"]), block, axis=0))
    return torch.clamp(torch.round(weight_kn / scale), -8, 7) * scale


def apply_scale_table(twin: CanonicalViT, table: ScaleTable, *, quantize_attention: bool = False) -> CanonicalViT:
    """The fake-quant twin of ``twin`` under ``table`` (a copy): what the Q/DQ graph computes."""
    model = copy.deepcopy(twin).eval()
    if table.precision == "int4w":
        with torch.no_grad():
            for name, entry in table.entries.items():
                layer = model.get_submodule(name.rpartition(".")[0])
                layer.weight.copy_(fake_quant_int4(layer.weight.float().T, entry.amax, entry.block_size).T)
        return model
    fake_quantize(model, table.precision, "max", quantize_attention)
    for name, q in _quantizers(model):
        key = _quantizer_table_name(name)
        if key in table.entries:
            entry = table.entries[key]
            if q.amax is None:
                q.amax = torch.from_numpy(entry.amax.reshape(_modelopt_shape(model, name, entry)))
            else:
                q.amax = torch.from_numpy(entry.amax).reshape(q.amax.shape)
            q.enable_quant()
            q.disable_calib()
        else:
            q.disable()
    return model


def _modelopt_shape(model, quantizer_name: str, entry: ScaleEntry) -> tuple[int, ...]:
    """modelopt keeps per-channel amax with the weight's rank ([out, 1] or [out, 1, 1, 1])."""
    if entry.axis is None:
        return ()
    weight = model.get_submodule(quantizer_name.rpartition(".")[0]).weight
    return (weight.shape[0],) + (1,) * (weight.dim() - 1)
