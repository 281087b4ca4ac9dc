"""Quantization benchmarks: speed ratios side by side in one run, and digits accuracy per precision.

``vitrt bench-quant-speed MODEL``: compile MODEL at fp32 and int8 (vitrt's Q/DQ), quantize the fp32 graph with
ONNX Runtime's own ``quantize_static`` (QDQ format, per-channel int8, the same calibration images), build all
three with the ort backend, and time them with the shared timing loop in interleaved rounds (each round visits
the three in shuffled order) so that machine load hits all alike; prints medians and ratios.

``vitrt bench-quant-accuracy``: the digits reference compiled at fp32, fp16, int8 PTQ, int8 QAT, fp8 and int4w;
top-1 of every compiled artifact through its ort runner on the 450 test images, and the loss in points.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrt.compiler.errors import VitrtError
from vitrt.compiler.options import add_command, option
from vitrt.transforms.quant.config import CALIB_METHODS


@dataclass(frozen=True)
class SpeedConfig:
    model: str = option("deit_small_patch16_224", "timm model name", positional=True)
    batch: int = option(8, "batch size", type=int, metavar="N")
    calib_images: int = option(32, "calibration images (synthetic) for both quantizers", type=int, metavar="N")
    rounds: int = option(5, "interleaved timing rounds", type=int, metavar="N")
    iters: int = option(5, "timed inferences per variant and round", type=int, metavar="N")
    threads: int | None = option(None, "ONNX Runtime intra-op threads", type=int, metavar="N")
    img_size: int | None = option(None, "input image size (default: the model's)", type=int, metavar="N")
    json_out: Path | None = option(None, "also write the results as JSON", writes="file", type=Path, metavar="FILE")


def ort_quantize_static(fp32_onnx: Path, out: Path, calib: np.ndarray, batch: int) -> Path:
    """ONNX Runtime's own static INT8 quantization of ``fp32_onnx`` (QDQ, per-channel weights, int8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": calib[i:i + batch]} for i in range(0, len(calib) - batch + 1, batch)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def calibration_images(img_size: int, count: int, seed: int = 0) -> np.ndarray:
    """The images ``compile --precision int8 --calib-images count`` calibrates on (synthetic data, the compile's
    seed), in the order the calibrator sees them."""
    from vitrt.calib.data import load_data
    from vitrt.transforms.quant.fakequant import calibration_batches

    data = load_data("synthetic", img_size, limit=count, seed=seed)
    return np.concatenate([images.numpy() for images in calibration_batches(data, max_images=count)])


def run_speed(config: SpeedConfig) -> dict:
    """Compile fp32, vitrt int8 and ONNX Runtime's quantize_static int8 in a scratch directory (removed at the end)
    and time them side by side."""
    from vitrt.benchmarks.harness import check_counts

    check_counts(batch=config.batch, calib_images=config.calib_images, rounds=config.rounds, iters=config.iters,
                 threads=config.threads)
    if config.calib_images % config.batch:  # the fp32 graph's batch is static: quantize_static reads whole batches
        raise VitrtError(f"--calib-images ({config.calib_images}) must be a multiple of --batch ({config.batch}) so "
                         "that both quantizers calibrate on the same images")
    with tempfile.TemporaryDirectory(prefix="vitrt-quant-bench-") as work:
        return _speed(config, Path(work))


def _speed(config: SpeedConfig, work: Path) -> dict:
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.timing import Timing, interleaved, synced
    from vitrt.compiler.verify import verification_inputs
    from vitrt.pipeline.driver import compile

    common = dict(batch=config.batch, quiet=True, threads=config.threads, img_size=config.img_size)
    t0 = time.perf_counter()
    fp32 = compile(config.model, work / "fp32", **common)
    int8 = compile(config.model, work / "int8", precision="int8", calib_data="synthetic",
                   calib_images=config.calib_images, **common)
    # quantize_static sees the same images vitrt calibrated on
    calib = calibration_images(fp32.twin.spec.img, config.calib_images)
    backend, options = get_backend("ort"), BuildOptions(threads=config.threads)
    ort_dir = work / "ort_int8"
    ort_dir.mkdir()
    ort_quantize_static(fp32.onnx_path, ort_dir / "model.onnx", calib, config.batch)
    backend.build(ort_dir / "model.onnx", ort_dir, options)
    compile_s = time.perf_counter() - t0
    runners = {"fp32": backend.load(fp32.artifact_path, options),
               "vitrt_int8": backend.load(int8.artifact_path, options),
               "ort_quantize_static_int8": backend.load(ort_dir / backend.artifact_name, options)}
    images = verification_inputs(fp32.twin.spec, config.batch, seed=1)
    for runner in runners.values():  # warm-up once; the rounds then time without further warm-up
        runner.infer(images)
    timed = interleaved({name: synced(runner, images) for name, runner in runners.items()},
                        Timing(warmup=0, iterations=config.iters), rounds=config.rounds)
    median = {name: timed.typical(name) for name in runners}
    result = {"model": config.model, "batch": config.batch, "device": runners["fp32"].device,
              "samples_per_variant": config.rounds * config.iters, "median_ms": median,
              "speedup_int8_vs_fp32": timed.speedup("fp32", "vitrt_int8"),
              "speedup_ort_static_vs_fp32": timed.speedup("fp32", "ort_quantize_static_int8"),
              "vitrt_int8_speed_vs_ort_static": timed.speedup("ort_quantize_static_int8", "vitrt_int8"),
              "per_round_ms": {name: timed.per_round(name) for name in runners},
              "method": f"{config.rounds} interleaved rounds (shuffled order) of {config.iters} timed inferences per "
                        "variant (vitrt.compiler.timing.interleaved); median_ms: median of the per-round medians; "
                        "speedups: median of the per-round ratios",
              "ops_vitrt_int8": _op_counts(int8.artifact_path),
              "ops_ort_static": _op_counts(ort_dir / backend.artifact_name), "compile_s": round(compile_s, 1)}
    print(f"{config.model}, batch {config.batch}, {result['device']}; {config.rounds} interleaved rounds of "
          f"{config.iters} inferences each")
    for name, ms in median.items():
        speedup = 1.0 if name == "fp32" else timed.speedup("fp32", name)
        print(f"  {name:<26} {ms:9.1f} ms   {speedup:5.2f}x vs fp32")
    print(f"  vitrt int8 speed / ORT quantize_static int8 speed: {result['vitrt_int8_speed_vs_ort_static']:.2f}")
    if config.json_out:
        Path(config.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _op_counts(path: Path) -> dict[str, int]:
    import collections

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


@dataclass(frozen=True)
class AccuracyConfig:
    variants: str = option("fp32,fp16,int8,int8-qat,fp8,int4w", "comma-separated variants", metavar="LIST")
    qat_epochs: int = option(2, "epochs for the int8-qat variant", type=int, metavar="N")
    calib_method: str = option("max", "activation calibrator", choices=CALIB_METHODS)
    calib_images: int = option(512, "digits training images used for calibration", type=int, metavar="N")
    batch: int = option(50, "batch size compiled", type=int, metavar="N")
    json_out: Path | None = option(None, "also write the results as JSON", writes="file", type=Path, metavar="FILE")
    reference_dir: Path | None = option(None, "a cached digits reference directory (model.pt + info.json) to use "
                                        "instead of the current recipe's", type=Path, metavar="DIR")


def load_reference_dir(directory: Path):
    """A digits reference cached by an earlier recipe (same architecture): (timm model, info)."""
    import torch

    from vitrt.calib.reference import build_reference_model

    missing = [name for name in ("model.pt", "info.json") if not (Path(directory) / name).is_file()]
    if missing:
        raise VitrtError(f"--reference-dir '{directory}' has no {' or '.join(missing)}: pass a directory that holds "
                         "a cached reference's model.pt and info.json")
    model = build_reference_model()
    model.load_state_dict(torch.load(Path(directory) / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), json.loads((Path(directory) / "info.json").read_text())


VARIANT_OPTIONS = {"fp32": {}, "fp16": {"precision": "fp16"}, "int8": {"precision": "int8"},
                   "int8-qat": {"precision": "int8"}, "fp8": {"precision": "fp8"}, "int4w": {"precision": "int4w"},
                   "int8-attn": {"precision": "int8", "quantize_attention": True}}


def _accuracy_row(config: AccuracyConfig, name: str, model, test, out: Path) -> dict:
    """Compile one variant of the digits reference into ``out`` (verified) and measure its top-1 on ``test``."""
    from vitrt.calib.evaluate import runner_accuracy
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.pipeline.driver import compile

    options = dict(VARIANT_OPTIONS[name])
    if options.get("precision") in ("int8", "fp8"):
        options.update(calib_data="digits", calib_method=config.calib_method, calib_images=config.calib_images)
    if name == "int8-qat":
        options["qat_epochs"] = config.qat_epochs
    start = time.perf_counter()
    result = compile(model, out, batch=config.batch, quiet=True, verify=True, **options)
    top1 = runner_accuracy(get_backend("ort").load(result.artifact_path, BuildOptions()), test)
    q = result.manifest.get("quantization", {})
    row = {"variant": name, "top1": top1, "verify_max_abs_err": result.manifest["verify"]["max_abs_err"],
           "verify_tolerance": result.manifest["verify"]["tolerance"], "scale_source": q.get("scale_source"),
           "seconds": round(time.perf_counter() - start, 1)}
    print(f"  {name:<9} top-1 {top1 * 100:6.2f}%  verify max|err| {row['verify_max_abs_err']:.2e} "
          f"(tol {row['verify_tolerance']:g})  {row['seconds']}s", flush=True)
    return row


def run_accuracy(config: AccuracyConfig) -> dict:
    from vitrt.benchmarks.harness import check_counts
    from vitrt.calib.digits import digits_split
    from vitrt.calib.reference import load_reference

    names = config.variants.split(",")
    unknown = [n for n in names if n not in VARIANT_OPTIONS]
    if unknown:
        raise VitrtError(f"--variants: unknown variant '{unknown[0]}'; choose from {', '.join(VARIANT_OPTIONS)}")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:  # each variant compiles into its own directory: a second one collided after the first compile
        raise VitrtError(f"--variants names '{twice[0]}' twice; list each variant once")
    check_counts(batch=config.batch, calib_images=config.calib_images)
    if config.qat_epochs < 0:
        raise VitrtError(f"--qat-epochs must be >= 0, got {config.qat_epochs}")
    model, info = load_reference_dir(config.reference_dir) if config.reference_dir else load_reference()
    _, test = digits_split(info["recipe"]["img_size"])
    with tempfile.TemporaryDirectory(prefix="vitrt-quant-acc-") as work:
        rows = [_accuracy_row(config, name, model, test, Path(work) / name) for name in names]
    base = next((r["top1"] for r in rows if r["variant"] == "fp32"), None)
    print(f"\ndigits reference ViT, {len(test)} test images, compiled with the ort backend (batch {config.batch})")
    print(f"{'variant':<10} {'top-1':>8} {'loss (pt)':>10}  scale source")
    for r in rows:
        r["loss_points"] = None if base is None else round((base - r["top1"]) * 100, 2)
        print(f"{r['variant']:<10} {r['top1'] * 100:7.2f}% {r['loss_points'] if base is not None else '':>10}  "
              f"{r['scale_source'] or '-'}")
    out = {"test_images": len(test), "reference": str(config.reference_dir or "current recipe"),
           "reference_recipe": info.get("recipe"), "reference_top1_cached": info.get("test_top1"), "rows": rows}
    if config.json_out:
        Path(config.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return out


def add_subcommands(sub) -> None:
    add_command(sub, "bench-quant-speed", SpeedConfig, lambda config: run_speed(config) and 0,
                "fp32 vs vitrt int8 vs ONNX Runtime quantize_static, interleaved")
    add_command(sub, "bench-quant-accuracy", AccuracyConfig, lambda config: run_accuracy(config) and 0,
                "digits top-1 of the compiled model per precision")
