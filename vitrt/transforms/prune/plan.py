"""The pruning plan: which indices of every structural group survive, as frozen, JSON-serialisable data.

NViT's independent structures (sec. 3.1) are the groups:

    emb      embedding channels, shared by every block through the residual stream
    heads    per block, attention heads (all heads removed = the block's attention branch removed)
    qk       per block, query/key dims per head — the same dims kept in every head (head alignment)
    v        per block, value dims per head (and the matching proj input rows), aligned the same way
    mlp      per block, MLP hidden channels (all removed = the block's MLP branch removed)

A plan stores kept indices into the *original* model's dims and the original dims themselves, so it
validates on its own (duplicates, order, range) and against the model it is applied to (same dims). When the
planner fine-tuned the pruned model, ``weights`` holds the fine-tuned twin parameters (twin state names, numpy
arrays); they travel beside the JSON: ``save`` writes them to ``PLAN.npz`` next to ``PLAN`` and names that file
in the JSON (``weights_file``), and ``load`` reads them back (a plan without weights removes a stale ``.npz``).
The hardware rules of sec. 3.2.3 / TensorRT fused attention are checked by :func:`alignment_violations`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.jsonfile import read_json
from vitrt.compiler.spec import BlockSpec, ViTSpec

# Format 2 (issue 11): fine-tuned weights are twin parameters whose q carries the attention scale (see
# vitrt.compiler.spec). Format 1 plans are read when they hold indices only; their weights would be q without it.
PLAN_FORMAT = 2
INDICES_ONLY_FORMATS = (1,)
# Hardware rules (NViT sec. 3.2.3, TensorRT fused attention): what every pruned dim must satisfy.
HEAD_DIM_MULTIPLE, HEAD_DIM_MIN = 8, 16  # qk and v per head
CHANNEL_MULTIPLE = 16  # emb and mlp (tensor cores, 2:4)


class PlanError(VitrtError):
    """A malformed pruning plan, or one that does not fit the model (one line, exit code 2)."""


@dataclass(frozen=True)
class BlockDims:
    """Original (unpruned) dims of one block."""

    heads: int
    qk: int
    v: int
    mlp: int


@dataclass(frozen=True)
class BlockPlan:
    heads: tuple[int, ...]
    qk: tuple[int, ...]
    v: tuple[int, ...]
    mlp: tuple[int, ...]

    def dims(self) -> BlockDims:
        return BlockDims(len(self.heads), len(self.qk) if self.heads else 0, len(self.v) if self.heads else 0,
                         len(self.mlp))

    def qk_columns(self, qk_original: int) -> list[int]:
        """Kept output columns of the concatenated Q (and K) projection: head-major, like the reshape."""
        return [h * qk_original + d for h in self.heads for d in self.qk]

    def v_columns(self, v_original: int) -> list[int]:
        return [h * v_original + d for h in self.heads for d in self.v]


@dataclass(frozen=True)
class PruningPlan:
    emb: tuple[int, ...]
    blocks: tuple[BlockPlan, ...]
    original_emb: int
    original_blocks: tuple[BlockDims, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)  # how it was made (not used to apply)
    weights: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)  # fine-tuned parameters

    def with_weights(self, weights: Mapping[str, Any] | None) -> "PruningPlan":
        return replace(self, weights=weights)

    def with_meta(self, meta: Mapping[str, Any]) -> "PruningPlan":
        """A copy with ``meta`` merged into the plan's record of how it was made."""
        return replace(self, meta={**self.meta, **meta})

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def keep_all(cls, spec: ViTSpec, meta: Mapping[str, Any] | None = None) -> "PruningPlan":
        return cls(tuple(range(spec.emb)),
                   tuple(BlockPlan(tuple(range(b.heads)), tuple(range(b.qk)) if b.heads else (),
                                   tuple(range(b.v)) if b.heads else (), tuple(range(b.mlp))) for b in spec.blocks),
                   spec.emb, tuple(BlockDims(b.heads, b.qk, b.v, b.mlp) for b in spec.blocks), dict(meta or {}))

    # --- queries ------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.blocks)

    def pruned_spec(self, spec: ViTSpec) -> ViTSpec:
        """The spec after applying this plan; the attention scale stays the original 1/sqrt(qk)."""
        self.check_matches(spec)
        blocks = []
        for block, plan in zip(spec.blocks, self.blocks):
            d = plan.dims()
            blocks.append(BlockSpec(heads=d.heads, qk=d.qk, v=d.v, mlp=d.mlp, tokens=block.tokens, scale=block.scale,
                                    tokens_out=block.tokens_out))
        return spec.replace(emb=len(self.emb), blocks=tuple(blocks)).validate()

    def summary(self) -> dict:
        kept = lambda key: sum(len(getattr(b, key)) for b in self.blocks)  # noqa: E731
        total = {"heads": sum(b.heads for b in self.original_blocks), "mlp": sum(b.mlp for b in self.original_blocks)}
        return {
            "emb": f"{len(self.emb)}/{self.original_emb}",
            "heads": f"{kept('heads')}/{total['heads']}",
            "mlp": f"{kept('mlp')}/{total['mlp']}",
            "attention_removed": [i for i, b in enumerate(self.blocks) if not b.heads],
            "mlp_removed": [i for i, b in enumerate(self.blocks) if not b.mlp],
        }

    def notes(self) -> list[str]:
        """What the planner changed from what was asked (``meta["notes"]``) and dims that break the hardware rules
        (kept as planned), one line each, recorded in the manifest."""
        notes = list(self.meta.get("notes") or [])
        violations = alignment_violations(self)
        if violations:
            notes.append(f"pruning: {len(violations)} dim(s) break the alignment rules TensorRT's kernels want, "
                         f"first: {violations[0]}")
        return notes

    def block_dims(self) -> list[dict]:
        return [dict(vars(b.dims())) for b in self.blocks]

    # --- validation -----------------------------------------------------------------------------------
    def validate(self) -> "PruningPlan":
        """Structural checks: indices sorted, unique and in range; empty groups only where allowed."""
        _check_indices("emb", self.emb, self.original_emb)
        if not self.emb:
            raise PlanError("plan keeps no emb channel: keep at least one")
        if len(self.blocks) != len(self.original_blocks):
            raise PlanError(f"plan lists {len(self.blocks)} blocks but records {len(self.original_blocks)} original blocks")
        for i, (plan, dims) in enumerate(zip(self.blocks, self.original_blocks)):
            _check_indices(f"block {i} heads", plan.heads, dims.heads)
            _check_indices(f"block {i} qk", plan.qk, dims.qk)
            _check_indices(f"block {i} v", plan.v, dims.v)
            _check_indices(f"block {i} mlp", plan.mlp, dims.mlp)
            if plan.heads and (not plan.qk or not plan.v):
                raise PlanError(f"block {i} keeps {len(plan.heads)} heads but no qk or v dim: keep some, or no heads")
            if not plan.heads and (plan.qk or plan.v):
                raise PlanError(f"block {i} removes every head but keeps qk/v dims: list qk and v as [] too")
        return self

    def check_matches(self, spec: ViTSpec) -> None:
        """Refuse a plan made for other dims than ``spec``'s (one line naming the first mismatch and the fix)."""
        fix = "; make a plan for this model with vitrt prune-plan MODEL"
        if spec.emb != self.original_emb:
            raise PlanError(f"plan was made for emb {self.original_emb}, the model has emb {spec.emb}{fix}")
        if spec.depth != len(self.original_blocks):
            raise PlanError(f"plan was made for {len(self.original_blocks)} blocks, the model has {spec.depth}{fix}")
        for i, (block, dims) in enumerate(zip(spec.blocks, self.original_blocks)):
            have = BlockDims(block.heads, block.qk, block.v, block.mlp)
            if have != dims:
                raise PlanError(f"plan block {i} was made for heads/qk/v/mlp {dims.heads}/{dims.qk}/{dims.v}/{dims.mlp}, "
                                f"the model's block {i} has {have.heads}/{have.qk}/{have.v}/{have.mlp}{fix}")

    # --- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "original": {"emb": self.original_emb, "blocks": [dict(vars(b)) for b in self.original_blocks]},
            "emb": list(self.emb),
            "blocks": {str(i): {"heads": list(b.heads), "qk": list(b.qk), "v": list(b.v), "mlp": list(b.mlp)}
                       for i, b in enumerate(self.blocks)},
            "dims": {"emb": len(self.emb), "blocks": self.block_dims()},
            "meta": dict(self.meta),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    def save(self, path: str | Path) -> None:
        """Write the JSON to ``path`` and, for a fine-tuned plan, the weights to ``path`` with suffix .npz."""
        import numpy as np

        path = Path(path)
        weights_path = path.with_suffix(".npz")
        data = self.to_dict()
        if self.weights:
            with open(weights_path, "wb") as f:
                np.savez(f, **{name: np.asarray(value) for name, value in self.weights.items()})
            data["weights_file"] = weights_path.name
        elif weights_path.is_file():
            weights_path.unlink()  # a stale PLAN.npz must not be read back as this plan's weights
        path.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PruningPlan":
        if not isinstance(data, Mapping):
            raise PlanError("malformed pruning plan: expected a JSON object")
        if data.get("format") != PLAN_FORMAT and data.get("format") not in INDICES_ONLY_FORMATS:
            what = ("has no 'format': it is not a vitrt pruning plan" if data.get("format") is None else
                    f"format {data.get('format')!r} is not supported (expected {PLAN_FORMAT})")
            raise PlanError(f"pruning plan {what}; make one with vitrt prune-plan MODEL -o PLAN.json")
        if data.get("format") in INDICES_ONLY_FORMATS and data.get("weights_file") is not None:
            raise PlanError(f"pruning plan format {data['format']} has fine-tuned weights from before vitrt folded the "
                            "attention scale into q: make the plan again with vitrt prune-plan (or drop "
                            "'weights_file' to keep only the kept indices)")
        try:
            original = data["original"]
            original_blocks = tuple(BlockDims(int(b["heads"]), int(b["qk"]), int(b["v"]), int(b["mlp"]))
                                    for b in original["blocks"])
            original_emb = int(original["emb"])
            emb = _int_tuple("emb", data["emb"])
            raw_blocks = data["blocks"]
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"malformed pruning plan: missing or invalid field {exc}") from None
        if not isinstance(raw_blocks, Mapping):
            raise PlanError("malformed pruning plan: 'blocks' must map block index -> kept indices")
        depth = len(original_blocks)
        names = {str(i) for i in range(depth)}  # exactly these ("01" would be looked up as "1" and ignored)
        for key in raw_blocks:
            if key not in names:
                raise PlanError(f"pruning plan names unknown block {key!r}: the model has blocks 0..{depth - 1}")
        blocks = []
        for i in range(depth):
            entry = raw_blocks.get(str(i))
            if entry is None:
                raise PlanError(f"pruning plan has no entry for block {i}: list kept heads/qk/v/mlp for every block")
            try:
                blocks.append(BlockPlan(*(_int_tuple(f"block {i} {k}", entry[k]) for k in ("heads", "qk", "v", "mlp"))))
            except (KeyError, TypeError) as exc:
                raise PlanError(f"pruning plan block {i}: missing or invalid field {exc}") from None
        dims = data.get("dims")
        plan = cls(emb, tuple(blocks), original_emb, original_blocks, dict(data.get("meta") or {})).validate()
        if dims is not None and dims != {"emb": len(plan.emb), "blocks": plan.block_dims()}:
            raise PlanError("pruning plan 'dims' disagree with the kept indices: fix or delete the 'dims' field")
        return plan

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        """The plan in ``path`` (JSON), with the fine-tuned weights of the ``.npz`` its ``weights_file`` names."""
        data = read_json(path, "pruning plan", "write one with vitrt prune-plan", error=PlanError)
        plan = cls.from_dict(data)
        weights_file = data.get("weights_file")
        if weights_file is None:
            return plan
        if not isinstance(weights_file, str) or Path(weights_file).name != weights_file:
            raise PlanError(f"pruning plan '{path}': 'weights_file' must name a .npz file beside the plan")
        return plan.with_weights(_load_weights(Path(path).parent / weights_file))


def _load_weights(path: Path) -> dict:
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PlanError(f"cannot read the pruning plan's fine-tuned weights '{path}': {exc}") from None


def _int_tuple(what: str, values) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise PlanError(f"pruning plan {what}: expected a list of integer indices")
    return tuple(values)


def _check_indices(what: str, indices: tuple[int, ...], size: int) -> None:
    if len(set(indices)) != len(indices):
        dup = next(i for i in indices if indices.count(i) > 1)
        raise PlanError(f"pruning plan {what}: index {dup} is listed twice")
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise PlanError(f"pruning plan {what}: index {bad[0]} is out of range 0..{size - 1}")
    if list(indices) != sorted(indices):
        raise PlanError(f"pruning plan {what}: indices must be sorted ascending")


def alignment_violations(plan: PruningPlan) -> list[str]:
    """Every hardware-rule violation of the plan's dims (empty list = aligned).

    emb and mlp: multiples of 16 (mlp may be 0 = MLP removed); qk and v per head: multiples of 8 and >= 16
    while the block keeps a head; at least one head unless the attention is removed entirely (heads = 0).
    """
    out = []
    if len(plan.emb) % CHANNEL_MULTIPLE:
        out.append(f"emb {len(plan.emb)} is not a multiple of {CHANNEL_MULTIPLE}")
    for i, block in enumerate(plan.blocks):
        d = block.dims()
        if d.mlp % CHANNEL_MULTIPLE:
            out.append(f"block {i}: mlp {d.mlp} is not a multiple of {CHANNEL_MULTIPLE}")
        if d.heads:
            for name in ("qk", "v"):
                value = getattr(d, name)
                if value % HEAD_DIM_MULTIPLE or value < HEAD_DIM_MIN:
                    out.append(f"block {i}: {name} {value} per head is not a multiple of {HEAD_DIM_MULTIPLE} >= {HEAD_DIM_MIN}")
    return out
