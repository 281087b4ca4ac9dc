"""Latency / throughput harness: a batch sweep of one model, and side-by-side timing of several artifacts.

``bench_target`` accepts a compiled OUT (its backend artifact is loaded as is; a static-batch OUT can only
be timed at its own batch) or a timm model name (lowered with a dynamic batch, random weights, no passes).
Side-by-side comparisons go through :func:`vitrt.compiler.timing.interleaved` (rounds visit the candidates
in shuffled order, so drift and other load on a shared machine hit all of them alike); every speedup vs a
reference comes from one such run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.output import artifact_in
from vitrt.compiler.timing import Timing, check_clock, interleaved, synced


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

    manifest = read_manifest(out / "manifest.json", f"'{out}' is not an OUT written by vitrt compile")
    missing = [key for key in ("artifact", "backend", "input_shape", "spec_after") if key not in manifest]
    if missing:  # not "compiled with --no-build": that is an artifact recorded as None
        raise VitrtError(f"'{out}/manifest.json' lacks '{missing[0]}': it was not written by vitrt compile")
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
                    threads: int | None = None, seed: int = 0, keep_onnx: bool = False, options=None,
                    batches: tuple[int, ...] = (1,)) -> Loaded:
    """Lower a timm model (random weights; the digits reference with its shipped ones) with a dynamic batch and build
    it on ``backend`` for ``batches``."""
    import torch

    from vitrt.compiler.models import canonicalize
    from vitrt.pipeline.driver import model_by_name

    torch.manual_seed(seed)
    twin = canonicalize(model_by_name(name, img_size))
    return build_twin(twin, workdir, name=name, backend=backend, threads=threads, keep_onnx=keep_onnx,
                      options=options, batch_profile=(min(batches), max(batches), max(batches)))


def build_twin(twin, workdir: Path, *, name: str, backend: str = "ort", batch: int | None = None,
               threads: int | None = None, keep_onnx: bool = False, options=None,
               batch_profile: tuple[int, int, int] | None = None) -> Loaded:
    """Lower ``twin`` (``batch=None``: dynamic, built for ``batch_profile``) into ``workdir`` and load the artifact
    (``options``: the backend's BuildOptions, default ``threads`` only)."""
    import onnx

    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.lower import lower

    options = dataclasses.replace(options or BuildOptions(threads=threads),
                                  batch_profile=batch_profile if batch is None else None)
    be = get_backend(backend, options.device if backend == "torch" else None)
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


def parse_backends(text: str | None) -> list[str] | None:
    """``ort,torch`` -> ["ort", "torch"]; None stays None (the OUT's own backend, or ort for a model name)."""
    from vitrt.compiler.backends import BACKEND_NAMES

    if text is None:
        return None
    names = [b.strip() for b in str(text).split(",") if b.strip()]
    bad = [b for b in names if b not in BACKEND_NAMES]
    if not names or bad or len(set(names)) != len(names):
        raise VitrtError(f"--backend takes distinct backends from {', '.join(BACKEND_NAMES)} separated by commas, "
                         f"got '{text}'")
    return names


def build_onnx(onnx_path: Path, workdir: Path, backend: str, options) -> object:
    """Build ``onnx_path`` on ``backend`` into its own folder under ``workdir`` and load the runner."""
    from vitrt.compiler.backends import get_backend

    be = get_backend(backend, options.device if backend == "torch" else None)
    folder = workdir / backend
    folder.mkdir(parents=True, exist_ok=True)
    return be.load(be.build(onnx_path, folder, options), options)


def check_counts(**counts) -> None:
    """Timed runs, rounds and threads are whole numbers >= 1 (threads may be None: the runtime's default)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise VitrtError(f"--{name.replace('_', '-')} must be >= 1, got {value}")  # the flag's spelling


def check_backend_options(backends: list[str], *, clock: str | None, threads: int | None, device: str | None,
                          torch_compile: str) -> None:
    """The options of what is timed: --device and --torch-compile choose how the torch backend runs (refused where
    no torch backend is timed); --clock must suit every backend timed."""
    given = [flag for flag, on in (("--device", device is not None), ("--torch-compile", torch_compile != "off")) if on]
    if given and "torch" not in backends:
        raise VitrtError(f"{given[0]} applies to the torch backend, and {', '.join(backends)} is timed: add "
                         f"--backend {','.join([*backends, 'torch'])} or drop {given[0]}")
    for name in backends if clock is not None else ():
        check_clock(clock, name, threads, device)


def bench_target(target: str, batches: list[int], *, backend: str | list[str] | None = None, device: str | None = None,
                 torch_compile: str = "off", iterations: int = 20, warmup: int = 3, img_size: int | None = None,
                 threads: int | None = None, clock: str | None = None, rounds: int = 5, progress=None) -> dict:
    """Median / p90 / p99 / images/s of ``target`` (OUT dir or timm model name) at each batch size, on ``clock``
    (None: the runner's own — CUDA events on a GPU runner, else wall; side by side: wall).

    With several backends (``["ort", "torch"]``) the same graph — the OUT's compiled ``model.onnx``, or the model
    lowered with a dynamic batch — is built on each and timed side by side (:func:`interleaved`, ``rounds``
    rounds of ``iterations`` runs), with each backend's speedup over the first."""
    from vitrt.compiler.backends import BuildOptions

    check_counts(iterations=iterations, rounds=rounds, threads=threads)
    if warmup < 0:
        raise VitrtError(f"--warmup must be >= 0, got {warmup}")
    backends = [backend] if isinstance(backend, str) else backend
    timed = dict(clock=clock, threads=threads, device=device, torch_compile=torch_compile)
    if backends:  # named: checked now; else once the default is known (the OUT's own backend, ort for a name)
        check_backend_options(backends, **timed)
    options = BuildOptions(threads=threads, device=device or "cpu", torch_compile=torch_compile,
                           batch_profile=(min(batches), max(batches), max(batches)))
    path = Path(target)
    with tempfile.TemporaryDirectory(prefix="vitrt-bench-") as tmp:
        work = Path(tmp)
        if path.is_dir():
            if img_size is not None:  # the OUT's input size was fixed when it was compiled
                raise VitrtError(f"--img-size applies to a model name; '{target}' was compiled for its own size "
                                 "(compile again with --img-size to time another)")
            loaded = load_out(path, threads)
            if loaded.batch is not None and set(batches) != {loaded.batch}:
                raise VitrtError(f"'{target}' was compiled for batch {loaded.batch}; bench it with --batch "
                                 f"{loaded.batch}, or compile it with --dynamic-batch to sweep batch sizes")
            if not backends:
                backends = [loaded.manifest["backend"]]
                check_backend_options(backends, **timed)
            onnx_path = path / "model.onnx"
            runners = {b: loaded.runner if b == loaded.manifest["backend"] and device is None and torch_compile == "off"
                       else build_onnx(onnx_path, work, b, options) for b in backends}
        elif path.exists():
            raise VitrtError(f"'{target}' is neither a compiled OUT directory nor a timm model name")
        else:
            if not backends:
                backends = ["ort"]
                check_backend_options(backends, **timed)
            loaded = load_model_name(target, work / "lowered", backend=backends[0], img_size=img_size,
                                     threads=threads, keep_onnx=True, options=options, batches=tuple(batches))
            runners = {backends[0]: loaded.runner}
            runners.update({b: build_onnx(work / "lowered" / "model.onnx", work, b, options) for b in backends[1:]})
        if len(backends) == 1:
            clock = clock or runners[backends[0]].clock
            rows = _sweep(runners[backends[0]], loaded.spec, batches, iterations, warmup, clock, progress)
        else:
            clock = clock or "wall"
            rows = _side_by_side(runners, loaded.spec, batches, iterations, warmup, clock, rounds, progress)
        devices = {b: r.device for b, r in runners.items()}
    return {"target": target, "backend": backends[0], "backends": backends, "device": devices[backends[0]],
            "devices": devices, "iterations": iterations, "clock": clock,
            "rounds": rounds if len(backends) > 1 else None, "rows": rows}


def _sweep(runner, spec, batches, iterations, warmup, clock, progress) -> list[dict]:
    from vitrt.compiler.timing import Timing, samples_ms
    from vitrt.compiler.backends import LatencyStats

    rows = []
    for batch in batches:
        images = images_for(spec, batch)
        if progress is not None:
            progress.log(f"batch {batch}: {iterations} timed runs")
        if clock == runner.clock:
            stats = runner.benchmark(images, warmup=warmup, iterations=iterations, per_block=False)
        else:
            samples = samples_ms(runner.timed_call(images), Timing(warmup, iterations, clock=clock),
                                 synchronize=runner.synchronize)
            stats = LatencyStats.from_samples(samples, backend=runner.backend, device=runner.device, batch=batch,
                                              clock=clock)
        rows.append({k: v for k, v in stats.to_dict().items() if k != "per_block_ms"})
    return rows


def _side_by_side(runners: dict, spec, batches, iterations, warmup, clock, rounds, progress) -> list[dict]:
    names = list(runners)
    rows = []
    for batch in batches:
        images = images_for(spec, batch)
        if progress is not None:
            progress.log(f"batch {batch}: {', '.join(names)} side by side, {rounds} rounds x {iterations} runs")
        timed = interleaved({n: synced(r, images) for n, r in runners.items()},
                            Timing(warmup=warmup, iterations=iterations, clock=clock), rounds=rounds)
        for n in names:
            ms = timed.typical(n)  # what images/s and the speedup read: least CPU times on the cpu clock
            rows.append({"backend": n, "device": runners[n].device, "batch": batch,
                         "median_ms": round(timed.percentile(n, 50), 4), "typical_ms": round(ms, 4),
                         "p90_ms": round(timed.percentile(n, 90), 4), "p99_ms": round(timed.percentile(n, 99), 4),
                         "images_per_s": round(batch * 1000.0 / ms, 2),
                         f"speedup_vs_{names[0]}": round(timed.speedup(names[0], n), 4)})
    return rows


def format_bench(result: dict) -> str:
    backends = result.get("backends") or [result["backend"]]
    least = result["clock"] == "cpu"  # the cpu clock's summary is the least time (vitrt.compiler.timing)
    if len(backends) == 1:
        lines = [f"{result['target']} on {result['backend']} ({result['device']}), {result['iterations']} timed runs, "
                 f"{result['clock']} clock",
                 f"{'batch':>5} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} {'images/s':>9}"
                 + (f" {'least ms':>9}" if least else "")]
        for r in result["rows"]:
            lines.append(f"{r['batch']:>5} {r['median_ms']:>10.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                         f"{r['images_per_s']:>9.1f}" + (f" {r['typical_ms']:>9.2f}" if least else ""))
        return "\n".join(lines)
    # images/s and the speedup read the rounds (typical_ms), not the pooled median: the row shows both, so that its
    # numbers agree with each other
    first, typical = backends[0], "least ms" if least else "rounds ms"
    lines = [f"{result['target']}: {' vs '.join(backends)} side by side ({result['rounds']} interleaved rounds x "
             f"{result['iterations']} runs, {result['clock']} clock)"]
    lines += [f"  {b}: {d}" for b, d in result["devices"].items()]
    lines.append(f"{'batch':>5} {'backend':>8} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} {typical:>9} "
                 f"{'images/s':>9} {'vs ' + first:>9}")
    for r in result["rows"]:
        lines.append(f"{r['batch']:>5} {r['backend']:>8} {r['median_ms']:>10.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                     f"{r['typical_ms']:>9.2f} {r['images_per_s']:>9.1f} {r['speedup_vs_' + first]:>8.2f}x")
    each = "least CPU time" if least else "median"
    lines.append(f"{typical}: the median over rounds of each round's {each}, which images/s reads; vs {first}: the "
                 "median over rounds of the per-round ratios (percentiles pool every run)")
    return "\n".join(lines)


def nvit_table(outs: list[str], *, rounds: int = 5, iterations: int = 5, threads: int | None = None,
               clock: str = "wall", progress=None) -> dict:
    """NViT Table 1 style: params, FLOPs and speedup of compiled variants vs the first (the dense reference).

    Every round times each artifact in turn (interleaved); ``clock`` is ``wall`` (median) or ``cpu`` (least CPU
    time of a single-threaded run: ``threads`` must be 1 — the steadier clock for ratios on a shared machine)."""
    if len(outs) < 2:
        raise VitrtError("nvit-table needs the dense reference OUT first and at least one variant OUT")
    check_counts(iterations=iterations, rounds=rounds, threads=threads)
    loaded = [load_out(Path(o), threads) for o in outs]
    for x in loaded:
        check_clock(clock, x.manifest["backend"], threads)
    batches = {x.batch for x in loaded}
    if len(batches) != 1 or None in batches:
        raise VitrtError(f"all OUTs must be compiled with the same static --batch (got {sorted(map(str, batches))})")
    batch = batches.pop()
    if progress is not None:
        progress.log(f"timing {len(outs)} artifacts side by side: {rounds} rounds x {iterations} runs, batch {batch}")
    timed = interleaved({x.name: synced(x.runner, images_for(x.spec, batch)) for x in loaded},
                        Timing(warmup=2, iterations=iterations, clock=clock), rounds=rounds)
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
            "iterations": iterations, "clock": clock, "threads": threads, "rows": rows}


def format_nvit(result: dict) -> str:
    cpu = result.get("clock") == "cpu"
    lines = [f"| Model | #Para (x) | #FLOPs (x) | {'CPU ms' if cpu else 'median ms'} | Speedup (x) |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} ({r['out']}) | {r['params'] / 1e6:.1f}M ({r['params_x']:.2f}) | "
                     f"{r['flops'] / 1e9:.2f}G ({r['flops_x']:.2f}) | {r['median_ms']:.2f} | {r['speedup']:.2f} |")
    statistic = "least single-thread CPU time over" if cpu else "medians of"
    lines.append(f"\nbatch {result['batch']} on {result['backend']} ({result['device']}); {statistic} "
                 f"{result['rounds']} interleaved rounds x {result['iterations']} runs; FLOPs per image")
    return "\n".join(lines)


def write_json(path, data) -> None:
    from vitrt.compiler.output import write_json as _write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write(Path(path), data)
