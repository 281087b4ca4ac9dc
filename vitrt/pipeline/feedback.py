"""The measured-feedback loop between ``vitrt compile`` and the latency table.

    compile --bench --lut LUT               manifest.latency.predicted_ms = LUT.model_ms(spec_after)
    compile --bench --lut LUT --refine-lut  ... and, after OUT is written, LUT += OUT's measured per-block ms
    vitrt lut refine LUT --from OUT/manifest.json   the same, later

The table is its own file: OUT is written atomically by ``compile()``; the table update is a second,
separate atomic write that happens only after OUT exists (a failed compile never touches the table).
"""

from __future__ import annotations

from pathlib import Path

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.jsonfile import read_json
from vitrt.compiler.lut import PRECISIONS, SPARSITIES, LatencyTable
from vitrt.compiler.output import check_output_file


def compile_precision(config, manifest: dict | None = None) -> tuple[str, str]:
    """The (precision, sparsity) table key of a compile: the manifest's fields, else the config's.

    A quantized compile's manifest names its precision in ``quantization`` (int8 / fp8 / int4w, whatever its
    activations are typed to); a typed one (fp16 / bf16) only in ``precision.activations``; an fp32 one in neither.
    Every precision is its own key (an int4w engine is never predicted from fp32 entries); a table without
    the key answers with a one-line error or, after the build, an unavailable prediction.
    """
    manifest = manifest or {}
    quantization, sparse, typed = (_section(manifest, key) for key in ("quantization", "sparsity", "precision"))
    precision = quantization.get("precision") or typed.get("activations") or \
        (config.target.precision if config is not None else "fp32")
    sparsity = sparse.get("pattern") or (config.sparsity.pattern if config is not None else None) or "dense"
    if precision not in PRECISIONS or sparsity not in SPARSITIES:
        raise VitrtError(f"the latency table has no key for precision '{precision}' with sparsity '{sparsity}'")
    return precision, sparsity


def _section(manifest: dict, key: str) -> dict:
    """A manifest's section (``{}`` where absent); anything but a JSON object is a damaged manifest."""
    section = manifest.get(key) or {}
    if not isinstance(section, dict):
        raise VitrtError(f"the manifest's '{key}' is not a JSON object: pass the manifest.json a vitrt compile wrote")
    return section


def open_for_compile(config, device: str | None = None) -> LatencyTable | None:
    """Load and check ``--lut`` before any work, so a wrong table fails the compile fast.

    The clock and threads matter only where the prediction meets --bench's measurement (``config.bench_clock``:
    --bench-clock, else wall on the CPU and CUDA events on a GPU); --prune alone compares predictions with each
    other and can use any table. ``device`` (given with --refine-lut, whose measurement goes into the table: this
    machine's) must be the table's too."""
    if config.checks.lut is None:
        return None
    table = LatencyTable.load(config.checks.lut)
    precision, sparsity = compile_precision(config)
    measured = {"clock": config.bench_clock, "threads": config.target.threads} if config.checks.bench else {}
    table.check(backend=config.target.backend, batch=config.target.batch, precision=precision, sparsity=sparsity,
                device=device, **measured)
    return table


def add_prediction(table: LatencyTable | None, config, spec, manifest: dict) -> None:
    """Put the table's whole-model prediction beside the measured median in ``manifest['latency']``.

    A model outside the table's grid does not fail the compile (the table was checked for backend, batch
    and precision up front): ``predicted_ms`` is null and ``prediction_unavailable`` says why. A table timed on
    another machine predicts that machine (pruning only compares its predictions): ``prediction_note`` says so.
    """
    if table is None or "latency" not in manifest:
        return
    precision, sparsity = compile_precision(config, manifest)
    latency = manifest["latency"]
    latency["lut"] = str(config.checks.lut)
    if latency.get("device") and table.device != latency["device"]:
        latency["prediction_note"] = (f"the table was timed on {table.device}, this measurement on "
                                      f"{latency['device']}: the prediction is of that machine (build a table here, "
                                      "or fold this measurement in with --refine-lut, to predict this one)")
    try:
        predicted = table.model_ms(spec, precision=precision, sparsity=sparsity)
    except VitrtError as exc:
        latency["predicted_ms"] = None
        latency["prediction_unavailable"] = str(exc)
        return
    latency["predicted_ms"] = round(predicted, 4)
    latency["predicted_error"] = round(predicted / latency.get("typical_ms", latency["median_ms"]) - 1.0, 4)


def refine_after_compile(config, manifest: dict, progress=None) -> dict | None:
    """``--refine-lut``: fold the compiled model's measurement into ``config.lut`` (re-read, atomic write)."""
    if not config.checks.refine_lut:
        return None
    lut = config.checks.lut
    precision, sparsity = compile_precision(config, manifest)
    with _locked(lut):
        table = LatencyTable.load(lut)  # re-read: another process may have refined it meanwhile
        summary = table.refine(manifest, source=Path(config.out) / "manifest.json", precision=precision,
                               sparsity=sparsity)
        table.save(lut)
    if progress is not None:
        progress.log(f"refined {lut}: prediction {summary['predicted_before_ms']:.2f} -> "
                     f"{summary['predicted_after_ms']:.2f} ms (measured {summary['measured_ms']:.2f} ms)")
    return summary


def read_manifest(path, hint: str = "pass OUT/manifest.json of a vitrt compile --bench") -> dict:
    """The manifest at ``path`` (or in the directory ``path``); ``hint`` says what the command wanted instead."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    data = read_json(path, "manifest", hint)
    if not isinstance(data, dict):
        raise VitrtError(f"manifest '{path}' is not a JSON object")
    return data


def refine_file(lut_path, manifest_path, *, precision=None, sparsity=None) -> dict:
    """``vitrt lut refine LUT --from OUT/manifest.json``."""
    manifest = read_manifest(manifest_path)
    LatencyTable.load(lut_path)  # a missing or foreign table is refused before its lock file is made beside it
    check_output_file(lut_path, "LUT")  # and one that cannot be rewritten, before waiting on a lock
    with _locked(lut_path):
        table = LatencyTable.load(lut_path)
        p, s = compile_precision(None, manifest)
        summary = table.refine(manifest, source=manifest_path, precision=precision or p, sparsity=sparsity or s)
        table.save(lut_path)
    return summary


def _locked(lut_path):
    """Serialise read-refine-write cycles of concurrent compiles on one table (``.LUT.lock`` beside it)."""
    from filelock import FileLock

    path = Path(lut_path)
    return FileLock(str(path.with_name(f".{path.name}.lock")), timeout=600)
