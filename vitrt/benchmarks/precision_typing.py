"""FP16 and BF16 typing on the digits reference: the typed graph against its typed torch twin and the fp32 twin,
and its top-1 on the digits test images.

    python -m vitrt.benchmarks.precision_typing [--batch 8]

The graph runs where vitrt verifies it: FP16 in ONNX Runtime, BF16 in onnx's reference evaluator (ONNX Runtime's
CPU provider has no bf16 kernels; :func:`vitrt.compiler.verify.run_onnx`). This is the measurement behind the
tolerances in :mod:`vitrt.transforms.precision.plan`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from vitrt.compiler.options import module_main, option


@dataclass(frozen=True)
class PrecisionTypingConfig:
    batch: int = option(8, "batch size of the typed graph", type=int, metavar="N")
    dtypes: str = option("fp16,bf16", "comma-separated float types", metavar="LIST")


def run(config: PrecisionTypingConfig) -> int:
    from vitrt.calib.digits import digits_split
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.cleanup import CleanupPass
    from vitrt.compiler.graph import GraphView
    from vitrt.compiler.lower import DEFAULT_OPSET, lower
    from vitrt.compiler.models import canonicalize
    from vitrt.compiler.pass_manager import PassManager
    from vitrt.compiler.verify import run_onnx, run_torch, verification_inputs
    from vitrt.transforms.precision.graph_pass import PrecisionTypingPass
    from vitrt.transforms.precision.plan import plan_for

    twin = canonicalize(load_reference()[0])
    test = digits_split()[1]
    usable = len(test) // config.batch * config.batch  # the graph's batch is static
    sets = {f"N(0,1) x{config.batch}": (verification_inputs(twin.spec, config.batch), None),
            f"digits test x{usable}": (test.images[:usable].numpy(), test.labels[:usable].numpy())}
    print("| type | images | max abs err vs typed twin | vs fp32 twin | argmax = fp32 twin's | top-1 (fp32 twin) | "
          "kept fp32 |\n|---|---|---:|---:|---:|---:|---|")
    for dtype in config.dtypes.split(","):
        plan = plan_for(dtype, DEFAULT_OPSET)
        result = PassManager([PrecisionTypingPass(plan), CleanupPass()]).run(
            GraphView.from_onnx(lower(twin, batch=config.batch)), twin=twin)
        model = result.view.to_onnx()
        for name, (images, labels) in sets.items():
            out, fp32 = run_onnx(model, images, config.batch), run_torch(twin, images)
            typed_err = float(np.abs(out - run_torch(result.twin, images)).max())
            agree = float((out.argmax(1) == fp32.argmax(1)).mean())
            top1 = "—" if labels is None else \
                f"{(out.argmax(1) == labels).mean() * 100:.2f} % ({(fp32.argmax(1) == labels).mean() * 100:.2f} %)"
            print(f"| {dtype} | {name} | {typed_err:.3g} | {float(np.abs(out - fp32).max()):.3g} | {agree * 100:.2f} % "
                  f"| {top1} | {', '.join(plan.keep_fp32)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(module_main(PrecisionTypingConfig, run, description=__doc__.splitlines()[0]))
