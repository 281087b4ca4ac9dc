"""Latency / throughput harness: a batch sweep of one model, and side-by-side timing of several artifacts.

``bench_target`` accepts a compiled OUT (its backend artifact is loaded as is; a static-batch OUT can only
be timed at its own batch) or a timm model name (lowered with a dynamic batch, random weights, no passes).
Side-by-side comparisons go through :func:`vitrt.compiler.timing.interleaved` (rounds visit the candidates
in shuffled order, so drift and other load on a shared machine hit all of them alike); every speedup vs a
reference comes from one such run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.output import artifact_in
from vitrt.compiler.timing import Timing, interleaved, synced


@dataclass
class Loaded:
    name: str
    runner: object
    spec: object
    batch: int | None  # None: dynamic
    manifest: dict | None = None
    artifact: Path | None = None  # the built artifact (load it again with the backend; runners do not expose it)


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in str(text).split(",") if b.strip()]
    except ValueError:
        raise VitrtError(f"--batch must be a comma-separated list of positive ints, got '{text}'") from None
    if not batches or any(b < 1 for b in batches):
        raise VitrtError(f"--batch must be a comma-separated list of positive ints, got '{text}'")
    return batches


def load_out(out: Path, threads: int | None = None) -> Loaded:
    """Load a compiled OUT's backend artifact."""
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.spec import ViTSpec
    from vitrt.pipeline.feedback import read_manifest

    manifest = read_manifest(out / "manifest.json")
    try:
        artifact = artifact_in(Path(out), manifest)
        backend = get_backend(manifest["backend"])
        batch = manifest["input_shape"][0]
        spec = ViTSpec.from_dict(manifest["spec_after"])
    except KeyError as exc:
        raise VitrtError(f"'{out}/manifest.json' lacks {exc}: it was not written by vitrt compile") from None
    runner = backend.load(artifact, BuildOptions(threads=threads))
    return Loaded(str(out), runner, spec, batch if isinstance(batch, int) else None, manifest, artifact)


def load_model_name(name: str, workdir: Path, *, backend: str = "ort", img_size: int | None = None,
                    threads: int | None = None, seed: int = 0, batches: tuple[int, ...] = (1,)) -> Loaded:
    """Lower a timm model (random weights) with a dynamic batch and build it on ``backend`` for ``batches``."""
    import torch

    from vitrt.compiler.models import canonicalize, load_timm_model

    torch.manual_seed(seed)
    twin = canonicalize(load_timm_model(name, img_size=img_size))
    return build_twin(twin, workdir, name=name, backend=backend, threads=threads,
                      batch_profile=(min(batches), max(batches), max(batches)))


def build_twin(twin, workdir: Path, *, name: str, backend: str = "ort", batch: int | None = None,
               threads: int | None = None, keep_onnx: bool = False,
               batch_profile: tuple[int, int, int] | None = None) -> Loaded:
    """Lower ``twin`` (``batch=None``: dynamic, built for ``batch_profile``) into ``workdir`` and load the artifact."""
    import onnx

    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.lower import lower

    be = get_backend(backend)
    options = BuildOptions(threads=threads, batch_profile=batch_profile if batch is None else None)
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / "model.onnx"
    onnx.save(lower(twin, batch=batch), str(onnx_path))
    artifact = be.build(onnx_path, workdir, options)
    if not keep_onnx:
        onnx_path.unlink()
    return Loaded(name, be.load(artifact, options), twin.spec, batch, artifact=artifact)


def images_for(spec, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, spec.in_chans, spec.img, spec.img), dtype=np.float32)


def bench_target(target: str, batches: list[int], *, backend: str = "ort", iterations: int = 20, warmup: int = 3,
                 img_size: int | None = None, threads: int | None = None, progress=None) -> dict:
    """Median / p90 / p99 / images/s of ``target`` (OUT dir or timm model name) at each batch size."""
    from vitrt.compiler.backends import get_backend

    path = Path(target)
    with tempfile.TemporaryDirectory(prefix="vitrt-bench-") as tmp:
        if path.is_dir():
            loaded = load_out(path, threads)
            if loaded.batch is not None and set(batches) != {loaded.batch}:
                raise VitrtError(f"'{target}' was compiled for batch {loaded.batch}; bench it with --batch "
                                 f"{loaded.batch}, or compile it with --dynamic-batch to sweep batch sizes")
            backend = loaded.manifest["backend"]
        elif path.exists():
            raise VitrtError(f"'{target}' is neither a compiled OUT directory nor a timm model name")
        else:
            loaded = load_model_name(target, Path(tmp), backend=backend, img_size=img_size, threads=threads,
                                     batches=tuple(batches))
        rows = []
        for batch in batches:
            images = images_for(loaded.spec, batch)
            if progress is not None:
                progress.log(f"batch {batch}: {iterations} timed runs")
            stats = loaded.runner.benchmark(images, warmup=warmup, iterations=iterations, per_block=False)
            rows.append({k: v for k, v in stats.to_dict().items() if k != "per_block_ms"})
        device = get_backend(backend).device_name()
    return {"target": target, "backend": backend, "device": device, "iterations": iterations, "rows": rows}


def format_bench(result: dict) -> str:
    lines = [f"{result['target']} on {result['backend']} ({result['device']}), {result['iterations']} timed runs",
             f"{'batch':>5} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} {'images/s':>9}"]
    for r in result["rows"]:
        lines.append(f"{r['batch']:>5} {r['median_ms']:>10.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                     f"{r['images_per_s']:>9.1f}")
    return "\n".join(lines)


def nvit_table(outs: list[str], *, rounds: int = 5, iterations: int = 5, threads: int | None = None,
               progress=None) -> dict:
    """NViT Table 1 style: params, FLOPs and speedup of compiled variants vs the first (the dense reference)."""
    if len(outs) < 2:
        raise VitrtError("nvit-table needs the dense reference OUT first and at least one variant OUT")
    loaded = [load_out(Path(o), threads) for o in outs]
    batches = {x.batch for x in loaded}
    if len(batches) != 1 or None in batches:
        raise VitrtError(f"all OUTs must be compiled with the same static --batch (got {sorted(map(str, batches))})")
    batch = batches.pop()
    if progress is not None:
        progress.log(f"timing {len(outs)} artifacts side by side: {rounds} rounds x {iterations} runs, batch {batch}")
    timed = interleaved({x.name: synced(x.runner, images_for(x.spec, batch)) for x in loaded},
                        Timing(warmup=2, iterations=iterations), rounds=rounds)
    ref = loaded[0]
    rows = []
    for x in loaded:
        ms = timed.typical(x.name)
        params, flops = x.manifest["params"]["after"], x.manifest["flops"]["after"]
        rows.append({"out": x.name, "model": x.manifest.get("model"), "params": params, "flops": flops,
                     "params_x": ref.manifest["params"]["after"] / params, "flops_x": ref.manifest["flops"]["after"] / flops,
                     "median_ms": ms, "speedup": timed.speedup(ref.name, x.name),
                     "predicted_ms": x.manifest.get("latency", {}).get("predicted_ms")})
    return {"batch": batch, "backend": ref.manifest["backend"], "device": ref.runner.device, "rounds": rounds,
            "iterations": iterations, "rows": rows}


def format_nvit(result: dict) -> str:
    lines = ["| Model | #Para (x) | #FLOPs (x) | median ms | Speedup (x) |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} ({r['out']}) | {r['params'] / 1e6:.1f}M ({r['params_x']:.2f}) | "
                     f"{r['flops'] / 1e9:.2f}G ({r['flops_x']:.2f}) | {r['median_ms']:.2f} | {r['speedup']:.2f} |")
    lines.append(f"\nbatch {result['batch']} on {result['backend']} ({result['device']}); medians of "
                 f"{result['rounds']} interleaved rounds x {result['iterations']} runs; FLOPs per image")
    return "\n".join(lines)


def write_json(path, data) -> None:
    from vitrt.compiler.output import write_json as _write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write(Path(path), data)
