"""Synthetic metric sets (DC-ViT, sec. 3 (b) and appendix B): images grown from N(0, 1) noise by inverting the
model, each towards a randomly assigned class, so that data-free steps have something to measure on.

What is optimised, per batch of B images ``x`` (initialised N(0, 1), the model frozen)::

    L(x) = CE(f(aug(x)), y)                                   the assigned labels y (balanced, shuffled)
         + w_tv · Σ_d mean((Δ_d x)²)                          total variation: 4 neighbour directions
         + w_l2 · mean(x²)                                    L2 prior
         [+ w_feat · Σ_b ‖μ_b(x) − μ_b*‖₂ + ‖σ²_b(x) − σ²_b*‖₂]  per-block token statistics (optional)

``aug`` is DeepInversion's jitter — a random roll by up to ``jitter`` pixels and a random horizontal flip —
drawn anew every iteration; Adam (lr 0.25, betas 0.5 / 0.9) with a cosine learning rate; after every step
the pixels are clamped to the model's valid input range (pixel values 0..1 under its mean / std). These are
the settings of DC-ViT's official generation script (DeepInversion, batch 50, 2,000 iterations); ViTs have no
BatchNorm running statistics, so that script's feature term is inactive for them. Here the optional feature
term matches each block output's per-channel mean and variance (over images and tokens) to those of a few
reference images (``feature_reference``, e.g. the few-shot set) — the ViT counterpart of DeepInversion's BN
term; without reference images it is off. TV and L2 are means over elements, so their weights do not depend
on batch or image size.

A set is a directory, written batch by batch (resumable: a batch is the unit of work, each saved atomically):

    SET/metadata.json        format, model, config, labels, normalisation, per-batch losses and seconds
    SET/batches/b00003.npz   the exact float32 images (normalised model input) and labels of each batch
    SET/images/<class>/*.png the finished set as an ImageFolder (8-bit pixels, class folders zero-padded)

``load_metric_set`` reads the exact tensors back (``synth:SET`` wherever vitrt takes data); the PNG folder is
for other tools and for looking at the images.

The data-free accuracy estimate of a compressed model (:class:`MetricSet`) is DC-ViT's *metric loss*, as its
official code computes it: KL(original ‖ compressed) of the output distributions, averaged over the metric set's
images (0 for the original itself). Beside it: the cross entropy against the assigned labels (``ce``) and the
fraction still classified as assigned (``top1``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitrt._version import __version__
from vitrt.calib.digits import DIGITS_NORMALIZATION, ImageSet
from vitrt.calib.evaluate import torch_logits
from vitrt.calib.synthesis_config import DIGITS_REFERENCE, SET_METADATA, SynthesisConfig
from vitrt.compiler.errors import DataError, OptionError, OutputError, VitrtError
from vitrt.compiler.known_models import is_digits_model
from vitrt.compiler.output import refuse_foreign_dir, start_over

SET_FORMAT = "vitrt.synth"
SET_VERSION = 1
ADAM_BETAS = (0.5, 0.9)  # DeepInversion's setting for 2k full-resolution iterations
WARMUP_FRACTION = 0.05  # linear warm-up of the learning rate over the first 5 % of iterations
# --- the objective ---------------------------------------------------------------------------------------
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Σ over the 4 neighbour directions (right, down, two diagonals) of the mean squared difference."""
    diffs = (x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :],
             x[..., 1:, 1:] - x[..., :-1, :-1], x[..., 1:, :-1] - x[..., :-1, 1:])
    return sum(d.pow(2).mean() for d in diffs)


def block_statistics(features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (mean, variance) over images and tokens of every block output (features[1:-1] of the twin)."""
    out = []
    for f in features[1:-1]:
        flat = f.reshape(-1, f.shape[-1])
        out.append((flat.mean(0), flat.var(0, unbiased=False)))
    return out


@torch.no_grad()
def reference_statistics(twin, images: torch.Tensor, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-block (mean, variance) of ``images`` (pooled over batches), the targets of the feature term."""
    sums = None
    count = 0
    for start in range(0, len(images), batch_size):
        _, features = twin.forward_with_features(images[start:start + batch_size])
        stats = [(f.reshape(-1, f.shape[-1]).sum(0), f.reshape(-1, f.shape[-1]).pow(2).sum(0)) for f in features[1:-1]]
        sums = stats if sums is None else [(a + s, b + q) for (a, b), (s, q) in zip(sums, stats)]
        count += features[1].shape[0] * features[1].shape[1]
    return [(s / count, q / count - (s / count) ** 2) for s, q in sums]


class Inversion:
    """The inversion objective for one model: ``loss(x, labels, generator) -> (total, parts)``.

    It works on a frozen copy of ``twin`` (no parameter gradients are computed; the caller's model is untouched).
    """

    def __init__(self, twin, config: SynthesisConfig, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
                 feature_targets: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.twin = copy.deepcopy(twin).eval().requires_grad_(False)
        self.config, self.bounds, self.feature_targets = config, bounds, feature_targets
        self.jitter = config.jitter_for(twin.spec.img)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.jitter:
            dy, dx = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        if not self.config.no_flip and torch.rand((), generator=generator) < 0.5:
            x = torch.flip(x, dims=(3,))
        return x

    def loss(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        seen = self.augment(x, generator)
        if self.feature_targets is not None:
            logits, features = self.twin.forward_with_features(seen)
        else:
            logits, features = self.twin(seen), None
        parts = {"ce": F.cross_entropy(logits, labels), "tv": total_variation(x), "l2": x.pow(2).mean()}
        total = parts["ce"] + self.config.tv * parts["tv"] + self.config.l2 * parts["l2"]
        if features is not None:
            stats = block_statistics(features)
            parts["feature"] = sum(torch.linalg.vector_norm(m - tm) + torch.linalg.vector_norm(v - tv)
                                   for (m, v), (tm, tv) in zip(stats, self.feature_targets))
            total = total + self.config.feature_weight * parts["feature"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def clamp_(self, x: torch.Tensor) -> None:
        if self.bounds is not None:
            x.copy_(torch.maximum(torch.minimum(x, self.bounds[1]), self.bounds[0]))

    def optimizer(self, x: torch.Tensor):
        """Adam on the pixels with a linear warm-up then cosine decay over ``config.iterations`` steps."""
        from vitrt.calib.trainer import cosine_schedule

        optimizer = torch.optim.Adam([x], lr=self.config.lr, betas=ADAM_BETAS)
        warmup = int(WARMUP_FRACTION * self.config.iterations)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(self.config.iterations, warmup))

    def step(self, x: torch.Tensor, labels: torch.Tensor, optimizer, schedule, generator: torch.Generator) -> dict:
        """One update of the images (what DC-ViT's Table 9 times)."""
        total, parts = self.loss(x, labels, generator)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()
        self.clamp_(x)
        return {"total": float(total.detach()), **parts}

    def invert(self, labels: torch.Tensor, seed: int, on_step=None) -> tuple[torch.Tensor, list[dict]]:
        """Images for ``labels``, grown from seeded N(0, 1) noise; returns (images, losses every 10 % of steps)."""
        generator = torch.Generator().manual_seed(seed)
        spec = self.twin.spec
        x = torch.randn(len(labels), spec.in_chans, spec.img, spec.img, generator=generator)
        self.clamp_(x)
        x.requires_grad_(True)
        optimizer, schedule = self.optimizer(x)
        every = max(1, self.config.iterations // 10)
        history = []
        for iteration in range(self.config.iterations):
            parts = self.step(x, labels, optimizer, schedule, generator)
            if (iteration + 1) % every == 0 or iteration + 1 == self.config.iterations:
                history.append({"iteration": iteration + 1, **{k: round(v, 6) for k, v in parts.items()}})
            if on_step is not None:
                on_step()
        return x.detach(), history


def pixel_bounds(mean, std, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of pixel 0 and pixel 1 per channel, shaped to broadcast over [B, C, H, W]."""
    mean = torch.as_tensor(mean, dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def balanced_labels(count: int, num_classes: int, seed: int) -> torch.Tensor:
    """``count`` labels, every class as often as possible (± 1), in a seeded random order. The classes that get one
    image more — every image's class when there are fewer images than classes (DC-ViT's 50 images of ImageNet's
    1,000) — are drawn by the seed, not the first ones."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)  # drawn first: a whole number of rounds keeps its old labels
    whole = count - count % num_classes
    extra = torch.randperm(num_classes, generator=generator)[:count - whole]
    return torch.cat([torch.arange(whole) % num_classes, extra])[order]


def invert_images(twin, config: SynthesisConfig, *, bounds=None, progress=None) -> tuple[ImageSet, dict]:
    """A metric set in memory (no files): the same inversion as :func:`synthesize`, batch after batch.

    ``bounds``: the valid input range (:func:`pixel_bounds`); None leaves the pixels unclamped (only the L2
    prior holds them), for callers that do not know the model's normalisation. Returns (set, cost record)."""
    from vitrt.compiler.progress import QUIET

    config = config.validate()
    progress = progress or QUIET
    inversion = Inversion(twin, config, bounds)
    labels = balanced_labels(config.images, twin.spec.num_classes, config.seed)
    images, start = [], time.perf_counter()
    with progress.bar(math.ceil(config.images / config.batch_size) * config.iterations, "model inversion") as bar:
        for b, first in enumerate(range(0, config.images, config.batch_size)):
            batch, _ = inversion.invert(labels[first:first + config.batch_size], seed=config.seed * 100_003 + b,
                                        on_step=lambda: bar.update(1))
            images.append(batch)
    seconds = time.perf_counter() - start
    return ImageSet(torch.cat(images), labels), {"images": config.images, "iterations": config.iterations,
                                                 "seconds": round(seconds, 2), "clamped": bounds is not None}


def model_fingerprint(twin) -> str:
    digest = hashlib.sha256(json.dumps(twin.spec.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(twin.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --- the set on disk ---------------------------------------------------------------------------------------
def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n"))


def _batch_path(root: Path, index: int) -> Path:
    return root / "batches" / f"b{index:05d}.npz"


def _read_metadata(root: Path) -> dict:
    from vitrt.compiler.jsonfile import read_json

    data = read_json(root / SET_METADATA, "synthetic metric set metadata", "make the set with vitrt synth")
    if not isinstance(data, dict) or data.get("format") != SET_FORMAT or data.get("version") != SET_VERSION:
        raise DataError(f"'{root}' is not a vitrt synthetic metric set (format {SET_FORMAT} v{SET_VERSION})")
    return data


def synthesize(twin, out: str | Path, config: SynthesisConfig, *, mean, std, model: str = "",
               feature_reference: torch.Tensor | None = None, force: bool = False, progress=None) -> dict:
    """Grow (or finish) the synthetic metric set ``out`` for ``twin``; returns its metadata.

    ``mean`` / ``std``: the model's input normalisation (the pixel range the images are clamped to).
    ``feature_reference``: images whose per-block statistics the feature term matches (None: term off).
    An existing ``out`` made with the same model and settings is resumed from its finished batches; one made
    otherwise is refused unless ``force`` (then it is started over). ``twin`` is not modified.
    """
    from vitrt.compiler.progress import QUIET

    config = config.validate()
    if feature_reference is not None and len(feature_reference) == 0:
        raise VitrtError("feature_reference holds no images: pass the images whose block statistics the feature "
                         "term matches, or None to leave the term off")
    progress = progress or QUIET
    root = Path(out)
    twin = copy.deepcopy(twin).eval()
    spec = twin.spec
    identity = {"model": model, "model_fingerprint": model_fingerprint(twin), "config": asdict(config),
                "normalization": {"mean": [float(m) for m in np.broadcast_to(mean, spec.in_chans)],
                                  "std": [float(s) for s in np.broadcast_to(std, spec.in_chans)]},
                "feature_reference_images": 0 if feature_reference is None else len(feature_reference),
                "feature_reference_digest": None if feature_reference is None else _digest(feature_reference)}
    if _prepare_set_dir(root, identity, config, force):
        start_over(root)
    try:
        (root / "batches").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the set's directory '{root}' ({exc.strerror}); choose another -o") from None
    labels = balanced_labels(config.images, spec.num_classes, config.seed)
    batches = math.ceil(config.images / config.batch_size)
    meta_path = root / SET_METADATA
    meta = _read_metadata(root) if meta_path.is_file() else {
        "format": SET_FORMAT, "version": SET_VERSION, **identity, "img_size": spec.img, "in_chans": spec.in_chans,
        "num_classes": spec.num_classes, "jitter_pixels": config.jitter_for(spec.img), "vitrt_version": __version__,
        "labels": labels.tolist(), "batches": {}, "complete": False}
    # a batch that cannot be read back (a truncated file, a disk error) is grown again like a missing one
    todo = [b for b in range(batches) if str(b) not in meta["batches"] or not _readable(_batch_path(root, b))]
    if not todo and meta.get("complete") and (root / "images").is_dir():
        progress.log(f"{root} is already complete: {batches} batch(es) of {config.iterations} iterations")
        return meta
    for b in todo:
        meta["batches"].pop(str(b), None)
    meta["complete"] = False
    _write_json(meta_path, meta)
    if todo:
        targets = None
        if feature_reference is not None:
            targets = reference_statistics(twin, feature_reference)
        inversion = Inversion(twin, config, pixel_bounds(mean, std, spec.in_chans), targets)
        done = batches - len(todo)
        progress.log(f"synthesising {config.images} images for {model or 'the model'}: {batches} batch(es) of "
                     f"<= {config.batch_size}, {config.iterations} iterations each"
                     + (f"; resuming after {done} finished batch(es)" if done else ""))
        with progress.bar(len(todo) * config.iterations, "model inversion") as bar:
            for b in todo:
                start = time.perf_counter()
                batch_labels = labels[b * config.batch_size:(b + 1) * config.batch_size]
                images, history = inversion.invert(batch_labels, seed=config.seed * 100_003 + b,
                                                   on_step=lambda: bar.update(1))
                seconds = time.perf_counter() - start
                _write_atomic(_batch_path(root, b), lambda p: _save_batch(p, images, batch_labels))
                meta["batches"][str(b)] = {"images": len(batch_labels), "seconds": round(seconds, 2),
                                          "seconds_per_iteration": round(seconds / config.iterations, 5),
                                          "final": history[-1], "history": history}
                _write_json(meta_path, meta)
                progress.log(f"batch {b + 1}/{batches}: CE {history[-1]['ce']:.4f}, TV {history[-1]['tv']:.4f}, "
                             f"{seconds:.1f}s")
    images, set_labels = _load_batches(root, meta)
    _export_image_folder(root, images, set_labels, meta)
    logits = torch_logits(twin, ImageSet(images, set_labels))
    meta.update({"complete": True, "seconds": round(sum(b["seconds"] for b in meta["batches"].values()), 2),
                 "model_metric": metric_loss(logits, set_labels, logits)})
    _write_json(meta_path, meta)
    progress.log(f"wrote {root}: {len(images)} images; the model's cross entropy against their labels "
                 f"{meta['model_metric']['ce']:.4f}, top-1 {meta['model_metric']['top1']:.3f}")
    return meta


def _prepare_set_dir(root: Path, identity: dict, config: SynthesisConfig, force: bool) -> bool:
    """Check that ``root`` may hold this set; True when it holds a set made otherwise that ``force`` starts over.

    Missing or empty: a new set. A set with the same ``identity``: resumed. A set made otherwise: refused, naming
    what differs, unless ``force``. Anything else (files that are not a synthetic set) is never deleted."""
    if root.exists() and not root.is_dir():
        raise OutputError(f"'{root}' exists and is not a directory; choose another -o")
    if not root.is_dir() or not any(root.iterdir()):
        return False
    try:
        existing = _read_metadata(root) if (root / SET_METADATA).is_file() else None
    except VitrtError:
        existing = None
    refuse_foreign_dir(root, existing is not None, command="synth", what="synthetic metric set")
    differences = config.differences(existing.get("config") or {})
    differences += [f"the {key.replace('_', ' ')}" for key, value in identity.items()
                    if key != "config" and existing.get(key) != value]
    if not differences:
        return False
    if force:
        return True
    raise OutputError(f"'{root}' is a synthetic metric set made with other settings ({'; '.join(differences)}): "
                      "rerun with its settings to resume it, pass --force to start it over, or choose another -o")


def _digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def _readable(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as archive:
            archive["images"], archive["labels"]
        return True
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return False


def finished_batches(root: str | Path) -> int:
    """How many batches of the set at ``root`` are finished and saved (0 where there is no set)."""
    try:
        return len(_read_metadata(Path(root)).get("batches", {}))
    except VitrtError:
        return 0


def _save_batch(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    with open(path, "wb") as f:
        np.savez(f, images=images.numpy().astype(np.float32), labels=labels.numpy())


def _load_batches(root: Path, meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for b in sorted(int(k) for k in meta["batches"]):
        path = _batch_path(root, b)
        try:
            with np.load(path, allow_pickle=False) as archive:
                images.append(torch.from_numpy(archive["images"]))
                labels.append(torch.from_numpy(archive["labels"]).long())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"synthetic metric set batch '{path}' is unreadable ({exc}): run the vitrt synth command "
                            "that made the set again to regenerate it") from None
    return torch.cat(images), torch.cat(labels)


def _export_image_folder(root: Path, images: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
    """``root/images/<class>/<index>.png``: 8-bit pixels (de-normalised, clipped to 0..255)."""
    from PIL import Image

    folder = root / "images"
    staging = root / ".images.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    mean = torch.tensor(meta["normalization"]["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(meta["normalization"]["std"]).reshape(1, -1, 1, 1)
    pixels = ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    width = len(str(meta["num_classes"] - 1))
    for index, (image, label) in enumerate(zip(pixels, labels.tolist())):
        directory = staging / f"{label:0{width}d}"
        directory.mkdir(parents=True, exist_ok=True)
        mode = "L" if image.shape[-1] == 1 else "RGB"
        Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode).save(directory / f"{index:06d}.png")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)


# --- the Python API ----------------------------------------------------------------------------------------
def model_for_synthesis(model, *, checkpoint=None, pretrained: bool = False, img_size: int | None = None):
    """(canonical twin, input mean, input std, name) for a timm model name, ``digits-reference``, or a timm
    VisionTransformer module (its pretrained config gives the normalisation)."""
    from timm.data import resolve_data_config

    from vitrt.compiler.models import canonicalize, check_supported, load_timm_model

    if is_digits_model(model):
        from vitrt.calib.reference import load_reference

        if checkpoint or pretrained or img_size:
            raise OptionError(f"{DIGITS_REFERENCE} is the shipped model: it takes no checkpoint, pretrained weights or "
                              "image size")
        reference, _ = load_reference()
        return canonicalize(reference), *DIGITS_NORMALIZATION, DIGITS_REFERENCE
    if isinstance(model, str):
        name, model = model, load_timm_model(model, pretrained=pretrained, checkpoint=checkpoint, img_size=img_size)
    else:
        check_supported(model)
        name = type(model).__name__
    data_config = resolve_data_config({}, model=model)
    twin, mean, std = canonicalize(model), data_config["mean"], data_config["std"]
    if twin.spec.in_chans == 1 and len(mean) == 3:  # a grayscale model under an RGB config: one grey channel
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    return twin, mean, std, name


def synth(model, out: str | Path, config: SynthesisConfig | None = None, *, checkpoint=None, pretrained: bool = False,
          img_size: int | None = None, feature_reference: torch.Tensor | None = None, force: bool = False,
          quiet: bool = False, progress=None, **options) -> dict:
    """``vitrt synth`` from Python: ``synth("digits-reference", "SET", images=64, iterations=300)``.

    ``model``: a timm model name, ``digits-reference`` or a timm ViT module; ``options``: SynthesisConfig fields;
    ``feature_reference``: images whose per-block statistics the feature term matches; progress with its ETA on
    stderr unless ``quiet`` (or a ``progress`` of the caller's). Returns the set's metadata. Errors are worded for
    keywords (``out``, ``force=True``, ``iters=``), as :func:`vitrt.compile`'s.
    """
    from vitrt.compiler.options import api_wording, from_options, leaves, replace_options
    from vitrt.compiler.progress import Progress

    try:
        if not isinstance(out, (str, os.PathLike)) or not str(out):
            raise OutputError(f"no output directory: pass out=SET (a str or path), got {out!r}")
        for name, value in (("force", force), ("quiet", quiet), ("pretrained", pretrained)):
            if not isinstance(value, bool):
                raise OptionError(f"{name} takes a bool, got {value!r} ({type(value).__name__})")
        if feature_reference is not None and not isinstance(feature_reference, torch.Tensor):
            raise OptionError(f"feature_reference takes a tensor of images [N, C, H, W] (or None), got "
                              f"{type(feature_reference).__name__}")
        # the fields' names (iterations=, batch_size=) and the flags' (iters=, batch=) both name an option
        by_field = {leaf_.path[-1]: leaf_.name for leaf_ in leaves(SynthesisConfig)}
        named = {by_field.get(key, key): value for key, value in options.items()}
        checked = from_options(SynthesisConfig, named)  # unknown names, types and choices, in one line
        config = (replace_options(config, **named) if config is not None else checked).validate()
        if not isinstance(model, str) and (checkpoint is not None or pretrained or img_size is not None):
            raise OptionError("checkpoint=, pretrained= and img_size= build a model from its name; load them into "
                              "the module you pass instead")
        twin, mean, std, name = model_for_synthesis(model, checkpoint=checkpoint, pretrained=pretrained,
                                                    img_size=img_size)
        return synthesize(twin, out, config, mean=mean, std=std, model=name, feature_reference=feature_reference,
                          force=force, progress=progress if progress is not None else Progress(enabled=not quiet))
    except VitrtError as exc:  # the same exception, reworded: its class and attributes stay
        message = api_wording(str(exc), SynthesisConfig)
        exc.args = (message.replace("--force", "force=True").replace(" -o", " out"), *exc.args[1:])
        raise


# --- using a set ---------------------------------------------------------------------------------------------
def grown_from(twin, path: str | Path) -> bool:
    """Whether the finished set at ``path`` was grown from ``twin`` (the same architecture and weights, by the
    fingerprint its metadata records): a set grown from another model still loads, but its metric loss says little
    about this one."""
    return _read_metadata(Path(path)).get("model_fingerprint") == model_fingerprint(twin)


def finished_metadata(root: Path) -> dict:
    """The metadata of the finished synthetic metric set at ``root``; a one-line DataError where there is none or
    the set is unfinished (read before any work, so that a compile does not find it out at its end)."""
    if not (root / SET_METADATA).is_file():
        raise DataError(f"'{root}' is not a synthetic metric set (no metadata.json): make one with vitrt synth MODEL "
                        f"-o {root}")
    meta = _read_metadata(root)
    if not meta.get("complete"):
        done = len(meta.get("batches", {}))
        raise DataError(f"synthetic metric set '{root}' is incomplete ({done} batch(es) finished): run the same vitrt "
                        "synth command again to resume it")
    return meta


def load_metric_set(path: str | Path, img_size: int | None = None, limit: int | None = None) -> ImageSet:
    """The exact images and assigned labels of a finished set (the first ``limit``), resized to ``img_size``."""
    root = Path(path)
    meta = finished_metadata(root)
    images, labels = _load_batches(root, meta)
    if limit:
        images, labels = images[:limit], labels[:limit]
    if img_size is not None and images.shape[-1] != img_size:
        images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return ImageSet(images.contiguous(), labels)


def metric_loss(logits, labels, dense_logits) -> dict:
    """The metric loss of a model with ``logits`` on a metric set: ``loss`` = mean KL(dense ‖ model) of the softmax
    outputs; ``ce`` = cross entropy against ``labels``; ``top1`` = the fraction classified as labelled."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    dense = torch.as_tensor(np.asarray(dense_logits), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(dense, 1), reduction="batchmean", log_target=True)
    # outputs equal up to rounding can give a KL a hair below 0: a divergence is never negative
    return {"loss": round(max(float(kl), 0.0), 7), "ce": round(float(F.cross_entropy(logits, labels)), 6),
            "top1": round(float((logits.argmax(1) == labels).float().mean()), 6), "images": len(labels)}


@dataclass(frozen=True)
class MetricSet:
    """Metric-set images with their labels and the original (dense) model's logits on them."""

    images: torch.Tensor
    labels: torch.Tensor
    dense_logits: np.ndarray

    @classmethod
    def of(cls, data: ImageSet, dense) -> "MetricSet":
        """``data`` (a synthetic set; labels default to the dense model's argmax) scored by ``dense``.

        Refuses (one line) a set whose images or labels do not fit ``dense`` — e.g. one grown from another model."""
        spec = dense.spec
        if data.images.shape[1] != spec.in_chans:
            raise DataError(f"the metric set has {data.images.shape[1]}-channel images but the model takes "
                            f"{spec.in_chans}: grow the set from this model (vitrt synth MODEL -o SET)")
        if data.labels is not None and len(data.labels) and int(data.labels.max()) >= spec.num_classes:
            raise DataError(f"the metric set's labels go up to {int(data.labels.max())} but the model has "
                            f"{spec.num_classes} classes: grow the set from this model (vitrt synth MODEL -o SET)")
        logits = torch_logits(dense, data)
        labels = data.labels if data.labels is not None else torch.from_numpy(logits.argmax(1))
        return cls(data.images, labels, logits)

    def __len__(self) -> int:
        return len(self.images)

    def as_image_set(self) -> ImageSet:
        return ImageSet(self.images, self.labels)

    def loss(self, logits) -> dict:
        """:func:`metric_loss` of ``logits`` (one row per image, e.g. from a backend runner)."""
        return metric_loss(logits, self.labels, self.dense_logits)

    def evaluate(self, model) -> dict:
        """:func:`metric_loss` of a torch model."""
        return self.loss(torch_logits(model, self.as_image_set()))
