"""INT4 weight-only on ONNX Runtime CPU: FP32 activations (the ort form of ``--precision int4w``) against W4A16
(the trt form: the same INT4 graph typed FP16, LayerNorm in FP32), timed side by side.

    python -m vitrt.benchmarks.int4_activations [MODEL] [--batch 8] [--rounds 7] [--iters 3] [--threads 1]

Both graphs come from the same lowering, scale table and passes (Q/DQ, then precision typing for W4A16, then
cleanup), built with the ort backend and timed in interleaved rounds (:func:`vitrt.compiler.timing.interleaved`);
this is the measurement behind :attr:`vitrt.compiler.target.TargetConfig.activation_dtype` keeping FP32
activations for ONNX Runtime.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import module_main, option


@dataclass(frozen=True)
class Int4ActivationsConfig:
    model: str = option("deit_small_patch16_224", "timm model name", positional=True)
    batch: int = option(8, "batch size", type=int, metavar="N")
    rounds: int = option(7, "interleaved timing rounds", type=int, metavar="N")
    iters: int = option(3, "timed inferences per variant and round", type=int, metavar="N")
    threads: int = option(1, "ONNX Runtime intra-op threads", type=int, metavar="N")
    clock: str = option("cpu", "cpu (single-thread CPU time, steady on a shared machine) or wall", choices=("cpu", "wall"))
    json_out: Path | None = option(None, "also write the results as JSON", writes="file", type=Path, metavar="FILE")


def int4_graphs(twin, batch: int) -> dict:
    """The two ONNX forms of int4w for ``twin``: ``fp32_activations`` and ``w4a16``."""
    from vitrt.compiler.cleanup import CleanupPass
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.lower import lower
    from vitrt.compiler.pass_manager import PassManager
    from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
    from vitrt.transforms.precision.plan import PrecisionPlan
    from vitrt.transforms.quant.fakequant import quantize_twin
    from vitrt.transforms.quant.graph_pass import QDQPass
    from vitrt.transforms.quant.plan import QuantPlan

    _, table = quantize_twin(twin, "int4w")
    plan = QuantPlan("int4w", table)
    forms = {"fp32_activations": [QDQPass(plan), CleanupPass()],
             "w4a16": [QDQPass(plan), PrecisionTypingPass(PrecisionPlan("fp16")), CleanupPass()]}
    return {name: PassManager(passes).run(GraphView.from_onnx(lower(twin, batch=batch))).view.to_onnx()
            for name, passes in forms.items()}


def run(config: Int4ActivationsConfig) -> int:
    import onnx

    from vitrt.benchmarks.harness import check_counts
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.models import canonicalize, load_timm_model
    from vitrt.compiler.timing import Timing, interleaved, synced
    from vitrt.compiler.verify import verification_inputs

    check_counts(batch=config.batch, rounds=config.rounds, iters=config.iters, threads=config.threads)
    twin = canonicalize(load_timm_model(config.model))
    backend, options = get_backend("ort"), BuildOptions(threads=config.threads)
    runners, ops = {}, {}
    with tempfile.TemporaryDirectory(prefix="vitrt-int4-act-") as tmp:
        for name, model in int4_graphs(twin, config.batch).items():
            path = Path(tmp) / name / "model.onnx"
            path.parent.mkdir()
            onnx.save(model, str(path))
            artifact = backend.build(path, path.parent, options)
            built = onnx.load(str(artifact), load_external_data=False)
            ops[name] = dict(sorted(collections.Counter(n.op_type for n in built.graph.node).items()))
            runners[name] = backend.load(artifact, options)
    images = verification_inputs(twin.spec, config.batch, seed=1)
    for runner in runners.values():  # warm-up once; the rounds then time without further warm-up
        runner.infer(images)
    timed = interleaved({name: synced(runner, images) for name, runner in runners.items()},
                        Timing(warmup=0, iterations=config.iters, clock=config.clock), rounds=config.rounds)
    result = {"model": config.model, "batch": config.batch, "threads": config.threads, "clock": config.clock,
              "device": runners["w4a16"].device, "median_ms": {name: timed.typical(name) for name in runners},
              "speedup_fp32_activations_vs_w4a16": timed.speedup("w4a16", "fp32_activations"),
              "per_round_ms": {name: timed.per_round(name) for name in runners}, "ops": ops,
              "method": f"{config.rounds} interleaved rounds (shuffled order) of {config.iters} timed inferences per "
                        "variant; median_ms: median of the per-round medians; speedup: median of the per-round ratios"}
    print(f"{config.model}, batch {config.batch}, {config.threads} thread(s), {config.clock} clock, {result['device']}")
    for name, ms in result["median_ms"].items():
        print(f"  {name:<17} {ms:9.1f} ms   ops: MatMulNBits {ops[name].get('MatMulNBits', 0)}, "
              f"Cast {ops[name].get('Cast', 0)}")
    print(f"  FP32 activations are {result['speedup_fp32_activations_vs_w4a16']:.2f}x as fast as W4A16")
    if config.json_out:
        Path(config.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(module_main(Int4ActivationsConfig, run, description=__doc__.splitlines()[0]))
