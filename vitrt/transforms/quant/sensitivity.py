"""Per-layer quantization sensitivity on the torch twin: how much the output moves when only one layer is quantized
(and, optionally, when only that layer stays float).

A *layer* is what ``--quant-exclude`` names and what a scale table's entries group under: the patch-embedding Conv,
every linear layer (``blocks.3.attn.q``, ``blocks.3.mlp.fc2``, ``head``) and, with ``--quantize-attention``, the
attention matmuls (``blocks.3.attn.qk``, ``blocks.3.attn.av``). One fake-quant twin is built under the full table and
its layers are switched between float and quantized in place (:class:`LayerSwitch`): modelopt's quantizers pass
values through when their quantization is off; INT4 weight-only layers swap their weights.

Scores, per layer, on the same images:

    kl        KL(p_float ‖ p_only_this_layer_quantized), mean over images (label-free; the ranking key)
    agree     top-1 agreement of that model with the float twin   top1  its top-1, with labels
    kl_float_one / top1_float_one   the same with every layer quantized but this one (``float_one``)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitrt.compiler.progress import QUIET
from vitrt.transforms.quant.fakequant import _quantizer_table_name, apply_scale_table
from vitrt.transforms.quant.scale_table import ScaleTable


def layer_of(entry_name: str) -> str:
    """Scale-table entry -> its layer (``blocks.3.attn.q.input`` -> ``blocks.3.attn.q``)."""
    return entry_name.rpartition(".")[0]


def table_layers(table: ScaleTable) -> list[str]:
    """The layers ``table`` quantizes, in graph order."""
    return list(dict.fromkeys(layer_of(name) for name in table.entries))


class LayerSwitch:
    """A fake-quant copy of ``twin`` under ``table`` whose layers can each be float or quantized."""

    def __init__(self, twin, table: ScaleTable, quantize_attention: bool = False):
        self.layers = table_layers(table)
        self.model = apply_scale_table(twin, table, quantize_attention=quantize_attention).eval()
        self.quantizers: dict[str, list] = {}
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if table.precision == "int4w":  # weight-only: the fake-quant weight or the twin's own
            for layer in self.layers:
                self.weights[layer] = (twin.get_submodule(layer).weight.detach().clone(),
                                       self.model.get_submodule(layer).weight.detach().clone())
        else:
            from modelopt.torch.quantization.nn import TensorQuantizer

            for name, module in self.model.named_modules():
                key = _quantizer_table_name(name) if isinstance(module, TensorQuantizer) else None
                if key in table.entries:
                    self.quantizers.setdefault(layer_of(key), []).append(module)

    @torch.no_grad()
    def only(self, quantized) -> torch.nn.Module:
        """The model with exactly the layers in ``quantized`` quantized (the others float)."""
        quantized = set(quantized)
        for layer, quantizers in self.quantizers.items():
            for q in quantizers:
                q.enable_quant() if layer in quantized else q.disable_quant()
        for layer, (float_w, quant_w) in self.weights.items():
            self.model.get_submodule(layer).weight.copy_(quant_w if layer in quantized else float_w)
        return self.model


@dataclass
class Scored:
    layer: str
    kl: float
    agree: float
    top1: float | None = None
    kl_float_one: float | None = None
    agree_float_one: float | None = None
    top1_float_one: float | None = None

    def to_dict(self) -> dict:
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in vars(self).items() if v is not None}


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    p = reference.double().log_softmax(-1)
    q = logits.double().log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@torch.no_grad()
def score_layers(twin, table: ScaleTable, images: torch.Tensor, labels: torch.Tensor | None = None, *,
                 quantize_attention: bool = False, float_one: bool = False, progress=QUIET,
                 batch: int = 256) -> tuple[list[Scored], dict]:
    """Every layer of ``table`` scored on ``images`` (most sensitive first, by ``kl``), and the float and fully
    quantized twins' figures on the same images."""
    switch = LayerSwitch(twin, table, quantize_attention)

    def logits(quantized) -> torch.Tensor:
        model = switch.only(quantized)
        return torch.cat([model(images[i:i + batch]).float() for i in range(0, len(images), batch)])

    def top1(out) -> float | None:
        return float((out.argmax(-1) == labels).double().mean()) if labels is not None else None

    reference = logits(())
    everything = logits(switch.layers)

    def agree(out) -> float:
        return float((out.argmax(-1) == reference.argmax(-1)).double().mean())

    summary = {"layers": len(switch.layers), "images": len(images), "top1_float": top1(reference),
               "top1_quantized": top1(everything), "kl_quantized": _kl(reference, everything),
               "agree_quantized": agree(everything)}
    scored = []
    with progress.bar(len(switch.layers) * (2 if float_one else 1), "layer sensitivity") as bar:
        for layer in switch.layers:
            alone = logits([layer])
            row = Scored(layer, _kl(reference, alone), agree(alone), top1(alone))
            bar.update(1)
            if float_one:
                but = logits([other for other in switch.layers if other != layer])
                row.kl_float_one, row.agree_float_one, row.top1_float_one = _kl(reference, but), agree(but), top1(but)
                bar.update(1)
            scored.append(row)
    return sorted(scored, key=lambda r: -r.kl), summary

