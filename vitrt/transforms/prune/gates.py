"""Structural gates on the torch twin and NViT's group importance (eq. 6), plus the magnitude baseline.

Every structural group S gets a gate g_S that multiplies all of the group's weights (NViT sec. 3.2.1:
W = g_S · W_S). The twin itself is left untouched: :func:`gated_forward` runs it through
``torch.func.functional_call`` with each parameter multiplied by the product of the gates it belongs to:

    group            gated tensors (torch layout, Linear weight = [out, in])
    emb   [emb]      patch_embed out, cls/dist token, pos_embed, every norm's weight and bias, q/k/v/fc1
                     input columns, proj/fc2 output rows and biases, head input columns
    blocks.i.heads   q/k/v rows and biases of head h, proj input columns of head h
    blocks.i.qk      q/k rows (and biases) of dim d in every head (head alignment)
    blocks.i.v       v rows (and biases) of dim d in every head, and the matching proj input columns
    blocks.i.mlp     fc1 row and bias j, fc2 input column j

The proj (fc2) bias is also multiplied by ``1 - Π(1 - g)`` over the block's head (MLP) gates: 1 while any
group is alive, 0 when all are gated off, so gates at 0 equal removing the branch exactly (for binary
gates), as the pruned graph does. With gates at 1 the function is the twin's.

Because every weight of S is scaled by g_S, ∂L/∂g_S at g = 1 equals Σ_{s∈S} w_s · ∂L/∂w_s, and NViT's
Hessian-based importance (eq. 6) is its square, averaged over batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitrt.compiler.spec import ViTSpec
from vitrt.compiler.twin import CanonicalViT
from vitrt.calib.data import Dataset

KINDS = ("heads", "qk", "v", "mlp")


def gate_sizes(spec: ViTSpec) -> dict[str, int]:
    """Gate vector length per group key (blocks without attention / MLP have no gates for them)."""
    sizes = {"emb": spec.emb}
    for i, b in enumerate(spec.blocks):
        if b.heads:
            sizes.update({f"blocks.{i}.heads": b.heads, f"blocks.{i}.qk": b.qk, f"blocks.{i}.v": b.v})
        if b.mlp:
            sizes[f"blocks.{i}.mlp"] = b.mlp
    return sizes


def ones_gates(spec: ViTSpec) -> dict[str, torch.Tensor]:
    return {key: torch.ones(size) for key, size in gate_sizes(spec).items()}


def _alive(g: torch.Tensor) -> torch.Tensor:
    return 1 - torch.prod(1 - g)


def gate_multipliers(spec: ViTSpec, gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> multiplier broadcastable to the parameter (the twin's parameter names)."""
    e = gates["emb"]
    m = {"patch_embed.weight": e[:, None, None, None], "patch_embed.bias": e, "cls_token": e, "pos_embed": e,
         "norm.weight": e, "norm.bias": e, "head.weight": e[None, :]}
    if spec.distilled:
        m.update({"dist_token": e, "head_dist.weight": e[None, :]})
    for i, b in enumerate(spec.blocks):
        p = f"blocks.{i}"
        if b.heads:
            h, qk, v = gates[f"{p}.heads"], gates[f"{p}.qk"], gates[f"{p}.v"]
            qk_rows = (h[:, None] * qk[None, :]).reshape(-1)
            v_rows = (h[:, None] * v[None, :]).reshape(-1)
            for name, rows in (("q", qk_rows), ("k", qk_rows), ("v", v_rows)):
                m[f"{p}.attn.{name}.weight"] = rows[:, None] * e[None, :]
                m[f"{p}.attn.{name}.bias"] = rows
            m[f"{p}.attn.proj.weight"] = e[:, None] * v_rows[None, :]
            m[f"{p}.attn.proj.bias"] = e * _alive(h)
            m[f"{p}.norm1.weight"] = m[f"{p}.norm1.bias"] = e
        if b.mlp:
            g = gates[f"{p}.mlp"]
            m[f"{p}.mlp.fc1.weight"] = g[:, None] * e[None, :]
            m[f"{p}.mlp.fc1.bias"] = g
            m[f"{p}.mlp.fc2.weight"] = e[:, None] * g[None, :]
            m[f"{p}.mlp.fc2.bias"] = e * _alive(g)
            m[f"{p}.norm2.weight"] = m[f"{p}.norm2.bias"] = e
    return m


def gated_parameters(twin: CanonicalViT, gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    multipliers = gate_multipliers(twin.spec, gates)
    return {name: (param * multipliers[name] if name in multipliers else param)
            for name, param in twin.named_parameters()}


def gated_forward(twin: CanonicalViT, gates: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The twin's logits with every parameter scaled by its groups' gates."""
    return torch.func.functional_call(twin, gated_parameters(twin, gates), (images,))


def masks_to_gates(spec: ViTSpec, kept: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """0/1 gates: 1 for the indices in ``kept[key]`` (a key that is absent keeps everything)."""
    gates = ones_gates(spec)
    for key, g in gates.items():
        if key in kept:
            g.zero_()
            g[list(kept[key])] = 1.0
    return gates


def _batches(data: Dataset, batch_size: int, batches: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for n, batch in enumerate(data.batches(batch_size, shuffle=True, generator=generator)):
        if n >= batches:
            break
        yield batch


def hessian_importance(twin: CanonicalViT, data: Dataset, *, kept: dict[str, list[int]] | None = None,
                       teacher: torch.nn.Module | None = None, batch_size: int = 32, batches: int = 4,
                       seed: int = 0, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """NViT eq. 6 per group element: mean over batches of (∂L/∂g)² at the current 0/1 gates.

    L is cross entropy when ``data`` has labels, else KL(teacher ‖ gated twin) at ``temperature`` with the
    dense twin (or ``teacher``) as the teacher — full-model distillation, no labels needed — plus cross
    entropy with the teacher's argmax (KL alone has zero gradient while the gates are all 1).
    """
    twin.eval()
    teacher = teacher or twin
    base = masks_to_gates(twin.spec, kept or {})
    scores = {key: torch.zeros_like(g) for key, g in base.items()}
    count = 0
    for images, labels in _batches(data, batch_size, batches, seed):
        gates = {key: g.clone().requires_grad_(True) for key, g in base.items()}
        logits = gated_forward(twin, gates, images)
        if labels is not None:
            loss = F.cross_entropy(logits, labels)
        else:
            # KL to the dense model has zero gradient at the dense model itself, so the teacher's argmax
            # serves as the hard label too (the L_CE of NViT's objective with the dense model as labeller).
            with torch.no_grad():
                target = teacher(images)
            loss = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(target / temperature, 1),
                            reduction="batchmean", log_target=True) + F.cross_entropy(logits, target.argmax(1))
        grads = torch.autograd.grad(loss, list(gates.values()))
        for key, grad in zip(gates, grads):
            scores[key] += grad.detach() ** 2
        count += 1
    if not count:
        raise ValueError("no data to score importance on")
    return {key: s / count for key, s in scores.items()}


def magnitude_importance(twin: CanonicalViT, kept: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """The magnitude baseline: Σ w² over each group's weights (½ ∂/∂g of Σ‖gated params‖² at the gates).

    Measured on the model's own weights: the twin's ``q`` carries the attention scale (Q·s, see
    :class:`~vitrt.compiler.twin.CanonicalAttention`), which is divided out again so that q weighs as much as k.
    """
    gates = {key: g.requires_grad_(True) for key, g in masks_to_gates(twin.spec, kept or {}).items()}
    params = gated_parameters(twin, gates)
    unscale = {f"blocks.{i}.attn.q.{kind}": 1.0 / b.scale
               for i, b in enumerate(twin.spec.blocks) if b.heads for kind in ("weight", "bias")}
    total = sum(((p.float() * unscale.get(name, 1.0)) ** 2).sum() for name, p in params.items())
    grads = torch.autograd.grad(total, list(gates.values()))
    return {key: (grad.detach() / 2).abs() for key, grad in zip(gates, grads)}
