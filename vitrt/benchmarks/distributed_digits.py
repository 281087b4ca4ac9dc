"""Sparse fine-tuning and QAT of the digits reference, in one process or data-parallel under ``torchrun``.

    python -m vitrt.benchmarks.distributed_digits -o single.json
    torchrun --nproc_per_node 2 -m vitrt.benchmarks.distributed_digits -o ddp.json

Two compiles of the shipped digits reference ViT, each verified and measured on the 450 test images through
the compiled ONNX Runtime artifact: ``--sparsity 2:4`` with ``--sparse-finetune-epochs`` (GPUSQ-ViT's loss), and
``--precision int8`` with ``--qat-epochs`` (calibration on digits, then QAT). Under torchrun every rank runs the
same compiles; the shared trainer trains them data-parallel (DistributedDataParallel over gloo on CPU, a
DistributedSampler per rank) and only rank 0 writes the JSON. Comparing the two JSONs is the check that
distributed training reaches the single-process accuracy (tests/test_distributed.py, benchmarks/results/distributed.md).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vitrt.compiler.options import module_main, option

BATCH = 64


@dataclass(frozen=True)
class DistributedDigitsConfig:
    sparse_epochs: int = option(2, "epochs of 2:4 sparse fine-tuning", type=int, metavar="N")
    qat_epochs: int = option(1, "epochs of int8 QAT", type=int, metavar="N")
    out: Path | None = option(None, "write the results as JSON (rank 0)",
                              writes="file", flag="-o/--out", type=Path, metavar="JSON")
    quiet: bool = option(False, "no progress output")


def run(config: DistributedDigitsConfig) -> dict:
    from vitrt.calib.digits import digits_split
    from vitrt.calib.evaluate import accuracy, runner_accuracy
    from vitrt.calib.reference import load_reference
    from vitrt.compiler.backends import BuildOptions, get_backend
    from vitrt.compiler.distributed import world
    from vitrt.pipeline.driver import compile

    ranks = world() or (0, 1)
    model, info = load_reference()
    _, test = digits_split(info["recipe"]["img_size"])
    stacks = {"sparse_finetune": dict(sparsity="2:4", sparse_finetune_epochs=config.sparse_epochs,
                                      sparse_data="digits" if config.sparse_epochs else None),
              "qat": dict(precision="int8", calib_data="digits", calib_images=256, qat_epochs=config.qat_epochs)}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vitrt-distributed-digits-") as work:
        for name, options in stacks.items():
            start = time.perf_counter()
            out = Path(work) / name
            result = compile(model, out, batch=BATCH, verify=True, quiet=config.quiet or ranks[0] != 0, **options)
            seconds = time.perf_counter() - start
            row = {"options": options, "torch_top1": accuracy(result.twin, test), "seconds": round(seconds, 1)}
            if ranks[0] == 0:  # only rank 0 wrote OUT
                backend = get_backend("ort")
                row["compiled_top1"] = runner_accuracy(backend.load(result.artifact_path, BuildOptions()), test)
            rows[name] = row
    return {"processes": ranks[1], "reference_top1": info["test_top1"], "test_images": len(test), "rows": rows}


def main(config: DistributedDigitsConfig) -> int:
    from vitrt.compiler.distributed import is_writer
    from vitrt.compiler.output import write_json

    result = run(config)
    if is_writer():
        result["command"] = ("torchrun --nproc_per_node {} -m vitrt.benchmarks.distributed_digits ".format(
            result["processes"]) if result["processes"] > 1 else "python -m vitrt.benchmarks.distributed_digits ") \
            + " ".join(sys.argv[1:])
        print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=1))
        if config.out:
            config.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(config.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(module_main(DistributedDigitsConfig, main, description=__doc__.splitlines()[0]))
