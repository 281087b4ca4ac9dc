"""The digits reference model: a small timm ViT trained by vitrt on real handwritten digits, on CPU.

It is what every accuracy claim in vitrt is measured on. The weights vitrt trained ship with the package
(``reference_weights/digits_vit-<recipe hash>.pt`` and its ``.json``: recipe, test top-1, training time), so
nothing trains on a fresh clone; :func:`train_reference` (``vitrt reference --retrain``) reproduces them with
the shared trainer and says whether the result matches the shipped file bit for bit. Training takes
~3.5 minutes on an idle 2-core machine and much longer on a loaded one; thread counts and CPU kinds can
change the rounding, which is why the accuracy measured on one machine is what ships.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vitrt.calib.digits import DIGITS_CLASSES, DIGITS_IMG_SIZE, DIGITS_NORMALIZATION, digits_split
from vitrt.calib.evaluate import accuracy
from vitrt.calib.losses import HardLabel, Objective
from vitrt.calib.trainer import TrainConfig, train
from vitrt.compiler.errors import VitrtError

SHIPPED_DIR = Path(__file__).with_name("reference_weights")


@dataclass(frozen=True)
class ReferenceRecipe:
    img_size: int = DIGITS_IMG_SIZE
    patch_size: int = 4
    embed_dim: int = 64
    depth: int = 12
    num_heads: int = 2  # head dim 32: room to prune QK / V per head down to 16 in steps of 8
    mlp_ratio: float = 4.0
    epochs: int = 40
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: int = 3
    grad_clip: float | None = 1.0  # with warm-up, makes from-scratch ViT training reliable (1e-3, no clip: 73-97 %)
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"digits_vit-{self.key()}"


def build_reference_model(recipe: ReferenceRecipe = ReferenceRecipe()) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=recipe.img_size, patch_size=recipe.patch_size, in_chans=3,
                              num_classes=DIGITS_CLASSES, embed_dim=recipe.embed_dim, depth=recipe.depth,
                              num_heads=recipe.num_heads, mlp_ratio=recipe.mlp_ratio)
    # timm's data config of the model (what the manifest's preprocessing and ImageFolder data read): the digits
    # pipeline's normalisation at the model's own size — no ImageNet mean / std, no crop
    mean, std = DIGITS_NORMALIZATION
    model.pretrained_cfg = {"input_size": (3, recipe.img_size, recipe.img_size), "interpolation": "bilinear",
                            "crop_pct": 1.0, "crop_mode": "center", "mean": (mean,) * 3, "std": (std,) * 3,
                            "num_classes": DIGITS_CLASSES}
    return model


def train_reference(recipe: ReferenceRecipe = ReferenceRecipe(), progress=None) -> tuple[torch.nn.Module, dict]:
    """Train the reference ViT from scratch with the shared trainer; returns (model, info with test top-1)."""
    torch.manual_seed(recipe.seed)  # the weight initialisation
    train_set, test = digits_split(recipe.img_size)
    model = build_reference_model(recipe)
    config = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
                         weight_decay=recipe.weight_decay, warmup_epochs=recipe.warmup_epochs,
                         grad_clip=recipe.grad_clip, augment=True, seed=recipe.seed)
    result = train(model, train_set, Objective(HardLabel(label_smoothing=recipe.label_smoothing)), config,
                   progress=progress, desc="training the digits reference ViT")
    info = {"recipe": asdict(recipe), "test_top1": accuracy(model, test), "train_seconds": round(result.seconds, 1)}
    return model, info


def shipped_paths(recipe: ReferenceRecipe = ReferenceRecipe()) -> tuple[Path, Path]:
    return SHIPPED_DIR / f"{recipe.name}.pt", SHIPPED_DIR / f"{recipe.name}.json"


def load_reference(recipe: ReferenceRecipe = ReferenceRecipe(), progress=None) -> tuple[torch.nn.Module, dict]:
    """The reference model with the weights that ship with vitrt; returns (timm model, info)."""
    weights, info_path = shipped_paths(recipe)
    if not weights.is_file() or not info_path.is_file():
        raise VitrtError(f"no shipped reference weights for recipe {recipe.key()} in {SHIPPED_DIR}; train them with "
                         "vitrt reference --retrain")
    model = build_reference_model(recipe)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), json.loads(info_path.read_text())


def retrain_and_compare(recipe: ReferenceRecipe = ReferenceRecipe(), out: Path | None = None,
                        progress=None, force: bool = False) -> dict:
    """``vitrt reference --retrain``: train again, compare with the shipped weights, optionally save to ``out``
    (staged and renamed into place: a failed write leaves no half of it; a non-empty ``out`` needs ``force``)."""
    from vitrt.compiler.output import atomic_output_dir, check_output_dir

    if out is not None:
        check_output_dir(out, force)  # before minutes of training, not after
    model, info = train_reference(recipe, progress)
    report = {"recipe": recipe.key(), "test_top1": info["test_top1"], "train_seconds": info["train_seconds"]}
    weights, info_path = shipped_paths(recipe)
    if weights.is_file():
        shipped = torch.load(weights, map_location="cpu", weights_only=True)
        trained = model.state_dict()
        diffs = [float((trained[k] - shipped[k]).abs().max()) for k in shipped]
        report["matches_shipped"] = all(d == 0.0 for d in diffs)
        report["max_abs_weight_difference"] = max(diffs)
        report["shipped_test_top1"] = json.loads(info_path.read_text())["test_top1"]
    if out is not None:
        with atomic_output_dir(out, force) as staging:
            torch.save(model.state_dict(), staging / f"{recipe.name}.pt")
            (staging / f"{recipe.name}.json").write_text(json.dumps(info, indent=2) + "\n")
        report["written"] = str(out)
    return report
