"""The shared trainer under torchrun (DistributedDataParallel over gloo, two CPU processes), rank-0-only writes.

The fast test trains a tiny twin for two epochs in two processes and checks that the ranks end with the same
weights (DDP averaged the gradients; without it each rank would fit its own shard), that 2:4-masked weights stay
zero and that the loss history is the all-rank average. The slow test runs sparse fine-tuning and QAT of the
digits reference in one process and under ``torchrun --nproc_per_node 2`` and compares the compiled top-1
(recorded in benchmarks/results/distributed.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], tmp_path: Path, processes: int = 2, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_ranks_train_together_with_ddp(tmp_path):
    torchrun([str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)], tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["size"] == ranks[1]["size"] == 2
    # each rank trained on its own half of every epoch (DistributedSampler), 16 / 2 images per step ...
    assert ranks[0]["batch_sizes"] == ranks[1]["batch_sizes"] == [8, 8, 8, 6] * 2
    epoch = [set(r["pixels"][:30].tolist()) for r in ranks]
    assert not epoch[0] & epoch[1] and epoch[0] | epoch[1] == set(ranks[0]["all_pixels"].tolist())
    # ... and still ended with the same weights: DDP averaged the gradients
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), f"{name} differs between the ranks"
    fc1 = ranks[0]["state"]["blocks.0.mlp.fc1.weight"].reshape(-1, 16, 4)
    assert torch.count_nonzero(fc1[..., :2]) == 0 and torch.count_nonzero(fc1[..., 2:]) > 0
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 2
    assert ranks[0]["per_feature"] == ranks[1]["per_feature"]


def test_only_rank_zero_writes_out(tmp_path, monkeypatch):
    from vitrt.compiler.distributed import is_writer
    from vitrt.compiler.output import atomic_output_dir

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_writer()
    with atomic_output_dir(tmp_path / "out", force=False) as staging:
        (staging / "manifest.json").write_text("{}")
    assert not (tmp_path / "out").exists() and not staging.exists()
    monkeypatch.setenv("RANK", "0")
    assert is_writer()
    with atomic_output_dir(tmp_path / "out", force=False) as staging:
        (staging / "manifest.json").write_text("{}")
    assert (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.slow
def test_torchrun_sparse_finetuning_and_qat_match_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    module = ["-m", "vitrt.benchmarks.distributed_digits", "--quiet", "-o"]
    subprocess.run([sys.executable, *module, str(tmp_path / "single.json")], check=True, env=env, cwd=tmp_path,
                   timeout=1200)
    torchrun([*module, str(tmp_path / "ddp.json")], tmp_path)
    single = json.loads((tmp_path / "single.json").read_text())
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert (single["processes"], ddp["processes"]) == (1, 2)
    for row in ("sparse_finetune", "qat"):
        assert abs(single["rows"][row]["compiled_top1"] - ddp["rows"][row]["compiled_top1"]) <= 0.005, (single, ddp)
