"""The one mapping between torch-twin parameters and ONNX initializers.

    twin state name                     ONNX initializer             layout
    blocks.3.attn.q.weight  [out, in]   blocks.3.attn.q.weight       transposed: MatMul B[K, N] = [in, out]
    blocks.3.attn.q.bias                blocks.3.attn.q.bias         as is
    blocks.3.norm1.weight / .bias       blocks.3.norm1.weight / .bias
    patch_embed.weight [M, C, R, S]     patch_embed.weight           as is (Conv)
    cls_token, dist_token [1, 1, E]     prefix_tokens.weight         concatenated along tokens: [1, P, E]
    pos_embed [1, T, E]                 pos_embed.weight             as is

The lowering emits its constants from :func:`module_initializers`; a pass that changes weights (fine-tuning,
2:4 masks, QAT) writes a twin state through :func:`write_state`. The rules live only here.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx_graphsurgeon as gs
import torch
from torch import nn

from vitrt.compiler.errors import SpecError

PREFIX_TOKENS = ("cls_token", "dist_token")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


def module_initializers(module: nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """ONNX initializer values of every Linear, LayerNorm and Conv2d under ``module`` (names under ``prefix``)."""
    values = {}
    for name, sub in module.named_modules():
        name = f"{prefix}.{name}" if prefix and name else (prefix or name)
        if isinstance(sub, nn.Linear):
            values[f"{name}.weight"] = np.ascontiguousarray(_array(sub.weight).T)
            values[f"{name}.bias"] = _array(sub.bias)
        elif isinstance(sub, (nn.LayerNorm, nn.Conv2d)):
            values[f"{name}.weight"], values[f"{name}.bias"] = _array(sub.weight), _array(sub.bias)
    return values


def twin_initializers(twin) -> dict[str, np.ndarray]:
    """Every ONNX initializer the lowering of ``twin`` (a CanonicalViT, possibly wrapped by a transform) holds."""
    values = module_initializers(twin)
    values["pos_embed.weight"] = _array(twin.pos_embed)
    values["prefix_tokens.weight"] = _array(twin.prefix())
    return values


def state_initializers(state: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """A (partial) twin state dict in ONNX initializer names and layouts (see the table above).

    2-D ``*.weight`` tensors are Linear weights; the prefix tokens must come together (class token, and the
    distillation token where the model has one).
    """
    values: dict[str, np.ndarray] = {}
    tokens = {}
    for name, tensor in state.items():
        array = tensor if isinstance(tensor, np.ndarray) else _array(tensor)
        array = np.asarray(array, dtype=np.float32)
        if name in PREFIX_TOKENS:
            tokens[name] = array
        elif name == "pos_embed":
            values["pos_embed.weight"] = array
        elif name.endswith(".weight") and array.ndim == 2:
            values[name] = np.ascontiguousarray(array.T)
        else:
            values[name] = array
    if tokens:
        if "cls_token" not in tokens:
            raise SpecError("a twin state with a distillation token must also hold the class token")
        values["prefix_tokens.weight"] = np.concatenate([tokens[k] for k in PREFIX_TOKENS if k in tokens], axis=1)
    return values


def write_initializers(graph: gs.Graph, values: Mapping[str, np.ndarray]) -> int:
    """Overwrite graph constants by name with ``values`` (same shape required); returns how many were written."""
    constants = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    for name, value in values.items():
        tensor = constants.get(name)
        if tensor is None:
            raise SpecError(f"the graph has no initializer '{name}': it was not lowered from a twin of this structure")
        if tuple(tensor.shape) != tuple(value.shape):
            raise SpecError(f"initializer '{name}' has shape {tuple(tensor.shape)} in the graph but {tuple(value.shape)} "
                            "in the twin state written into it")
        tensor.values = np.ascontiguousarray(value, dtype=np.float32)
    return len(values)


def write_state(graph: gs.Graph, state: Mapping[str, torch.Tensor | np.ndarray]) -> int:
    """Write a (partial) twin state into the graph's initializers (the one way twin weights reach ONNX)."""
    return write_initializers(graph, state_initializers(state))


def parameter_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The twin parameters of ``model`` (Linear / LayerNorm / Conv weights and biases, tokens, position
    embedding) as numpy arrays, by twin state name — what a plan stores when its planner changed weights.

    Works on wrapped twins (token merging, fake quantization): only canonical parameter names are kept.
    """
    state = {}
    for name, sub in model.named_modules():
        if isinstance(sub, (nn.Linear, nn.LayerNorm, nn.Conv2d)):
            state[f"{name}.weight"], state[f"{name}.bias"] = _array(sub.weight), _array(sub.bias)
    for name in PREFIX_TOKENS + ("pos_embed",):
        tensor = getattr(model, name, None)
        if isinstance(tensor, torch.Tensor):
            state[name] = _array(tensor)
    return state


@torch.no_grad()
def load_parameter_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Copy a :func:`parameter_state` into ``model`` (in place; names and shapes must match)."""
    params = dict(model.named_parameters())
    for name, value in state.items():
        target = params.get(name)
        if target is None:
            raise SpecError(f"the twin has no parameter '{name}' to load")
        if tuple(target.shape) != tuple(value.shape):
            raise SpecError(f"parameter '{name}' has shape {tuple(target.shape)}, the state {tuple(value.shape)}")
        target.copy_(torch.from_numpy(np.asarray(value)).to(target.dtype))
