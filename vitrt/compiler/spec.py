"""The ViTSpec: every dimension of a (possibly compressed) Vision Transformer, as plain data.

The spec travels inside the ONNX model (``metadata_props['vitrt.spec']``) so that any pass or backend can
read the architecture back without pattern-matching the graph. Passes that change the function (pruning,
token merging) return a new spec; the spec is immutable.

Per block:
    heads   number of attention heads (0 = attention removed, as DC-ViT removes attention modules)
    qk      query/key dim per head (the same in every head: head alignment)
    v       value dim per head
    mlp     hidden width of the MLP (0 = MLP removed)
    tokens  number of tokens entering the block (prefix tokens included)
    scale   the attention logit scale (timm's 1/sqrt(qk_original); pruning keeps it). A record, not an op: the
            front end folds it into the q projection's weight and bias (the twin's ``q`` computes Q·s), so the
            graph's score path is MatMul(Q·s, Kᵀ) -> Softmax with no Mul, as TensorRT's fused attention wants
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from vitrt.compiler.errors import SpecError

SPEC_METADATA_KEY = "vitrt.spec"
SPEC_FORMAT_VERSION = 1
BLOCK_LINEAR_NAMES = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")
LOWRANK_KEY = "lowrank"  # extra[LOWRANK_KEY]["ranks"]: factored linear layers, canonical name -> rank


def positive_number(value) -> bool:
    """A finite number above zero (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class BlockSpec:
    heads: int
    qk: int
    v: int
    mlp: int
    tokens: int
    scale: float
    tokens_out: int | None = None  # tokens leaving the block when it merges tokens; None = same as tokens

    @property
    def out_tokens(self) -> int:
        return self.tokens if self.tokens_out is None else self.tokens_out

    def validate(self, index: int) -> None:
        for name in ("heads", "qk", "v", "mlp", "tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(f"block {index}: {name} must be a non-negative int, got {value!r}")
        if self.heads > 0 and (self.qk <= 0 or self.v <= 0):
            raise SpecError(f"block {index}: a block with {self.heads} heads needs qk > 0 and v > 0")
        if self.tokens <= 0:
            raise SpecError(f"block {index}: tokens must be positive, got {self.tokens}")
        if not positive_number(self.scale):
            raise SpecError(f"block {index}: scale must be a positive number, got {self.scale!r}")
        if self.tokens_out is not None and not (0 < self.tokens_out <= self.tokens):
            raise SpecError(f"block {index}: tokens_out must be in 1..{self.tokens}, got {self.tokens_out}")


@dataclass(frozen=True)
class ViTSpec:
    emb: int
    patch: int
    img: int
    in_chans: int
    prefix_tokens: int
    num_classes: int
    blocks: tuple[BlockSpec, ...]
    distilled: bool = False
    norm_eps: float = 1e-6
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def grid(self) -> int:
        return self.img // self.patch

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def tokens(self) -> int:
        return self.prefix_tokens + self.num_patches

    @property
    def ranks(self) -> dict[str, int]:
        """Linear layers factored into two MatMuls (low rank): canonical name -> rank. The low-rank transform
        records them in ``extra['lowrank']['ranks']``; the graph view and the cost model read them here."""
        return {name: int(r) for name, r in ((self.extra.get(LOWRANK_KEY) or {}).get("ranks") or {}).items()}

    def linear_dims(self, name: str) -> tuple[int, int, int]:
        """(tokens it runs on, K, N) of a block's linear layer ``blocks.i.attn.q`` ... ``blocks.i.mlp.fc2``
        (the MLP runs on the tokens left after a merge)."""
        parts = name.split(".")
        local = ".".join(parts[2:])
        if len(parts) != 4 or parts[0] != "blocks" or not parts[1].isdigit() or int(parts[1]) >= self.depth \
                or local not in BLOCK_LINEAR_NAMES:
            raise SpecError(f"'{name}' is not a linear layer of this model's blocks (blocks.<i>.attn.q|k|v|proj, "
                            "blocks.<i>.mlp.fc1|fc2)")
        block = self.blocks[int(parts[1])]
        qk, v = block.heads * block.qk, block.heads * block.v
        k, n = {"attn.q": (self.emb, qk), "attn.k": (self.emb, qk), "attn.v": (self.emb, v),
                "attn.proj": (v, self.emb), "mlp.fc1": (self.emb, block.mlp), "mlp.fc2": (block.mlp, self.emb)}[local]
        return (block.out_tokens if local.startswith("mlp") else block.tokens), k, n

    def with_blocks(self, blocks) -> "ViTSpec":
        return dataclasses.replace(self, blocks=tuple(blocks))

    def replace(self, **changes) -> "ViTSpec":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "ViTSpec":
        for name in ("emb", "patch", "img", "in_chans", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(f"spec: {name} must be a positive int, got {value!r}")
        if not positive_number(self.norm_eps):
            raise SpecError(f"spec: norm_eps must be a positive number, got {self.norm_eps!r}")
        if self.img % self.patch:
            raise SpecError(f"spec: img {self.img} is not a multiple of patch {self.patch}")
        if self.prefix_tokens != 1 + int(self.distilled):
            raise SpecError(f"spec: prefix_tokens is {self.prefix_tokens}, expected class token"
                            f"{' + distillation token' if self.distilled else ''}")
        if not self.blocks:
            raise SpecError("spec: a ViT needs at least one block")
        expected_tokens = self.tokens
        for i, block in enumerate(self.blocks):
            block.validate(i)
            if block.tokens != expected_tokens:
                raise SpecError(f"block {i}: tokens is {block.tokens} but the previous block emits {expected_tokens}")
            if block.out_tokens < self.prefix_tokens + 1:
                raise SpecError(f"block {i}: keeps {block.out_tokens} tokens, fewer than the prefix tokens + 1")
            expected_tokens = block.out_tokens
        return self

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": SPEC_FORMAT_VERSION,
            "emb": self.emb,
            "depth": self.depth,
            "patch": self.patch,
            "img": self.img,
            "in_chans": self.in_chans,
            "prefix_tokens": self.prefix_tokens,
            "num_classes": self.num_classes,
            "distilled": self.distilled,
            "norm_eps": self.norm_eps,
            "blocks": [_block_to_dict(b) for b in self.blocks],
            "extra": dict(self.extra),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ViTSpec":
        try:
            blocks = tuple(
                BlockSpec(heads=b["heads"], qk=b["qk"], v=b["v"], mlp=b["mlp"], tokens=b["tokens"],
                          scale=float(b["scale"]), tokens_out=b.get("tokens_out"))
                for b in data["blocks"]
            )
            spec = cls(emb=data["emb"], patch=data["patch"], img=data["img"], in_chans=data.get("in_chans", 3),
                       prefix_tokens=data["prefix_tokens"], num_classes=data["num_classes"], blocks=blocks,
                       distilled=bool(data.get("distilled", False)), norm_eps=float(data.get("norm_eps", 1e-6)),
                       extra=dict(data.get("extra", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed ViTSpec: missing or invalid field {exc}") from None
        if "depth" in data and data["depth"] != spec.depth:
            raise SpecError(f"malformed ViTSpec: depth {data['depth']} but {spec.depth} blocks listed")
        return spec.validate()

    @classmethod
    def from_json(cls, text: str) -> "ViTSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"malformed ViTSpec JSON: {exc}") from None
        return cls.from_dict(data)

    # --- ONNX metadata -------------------------------------------------------------------------
    def attach(self, model) -> None:
        """Store this spec in an ``onnx.ModelProto``'s metadata_props (replacing any earlier spec)."""
        props = [p for p in model.metadata_props if p.key != SPEC_METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(props)
        entry = model.metadata_props.add()
        entry.key, entry.value = SPEC_METADATA_KEY, self.to_json()

    @classmethod
    def from_onnx(cls, model) -> "ViTSpec":
        """Read the spec back from an ``onnx.ModelProto`` (or a path to one)."""
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            import onnx

            model = onnx.load(model, load_external_data=False)
        for prop in model.metadata_props:
            if prop.key == SPEC_METADATA_KEY:
                return cls.from_json(prop.value)
        raise SpecError(f"the ONNX model carries no '{SPEC_METADATA_KEY}' metadata: lower it with vitrt first")


def _block_to_dict(block: BlockSpec) -> dict:
    data = {"heads": block.heads, "qk": block.qk, "v": block.v, "mlp": block.mlp, "tokens": block.tokens,
            "scale": block.scale}
    if block.tokens_out is not None:
        data["tokens_out"] = block.tokens_out
    return data
