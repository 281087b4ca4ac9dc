"""Running as one of several processes (``torchrun``): the process group, this process's rank, who writes.

``torchrun --nproc_per_node N`` (or any launcher that sets ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` /
``MASTER_PORT``, e.g. ``srun`` with those exported) starts N copies of a vitrt command. They train together
(the shared trainer wraps the model in DistributedDataParallel and shards the data with a DistributedSampler)
and otherwise do the same work; only rank 0 writes outputs. The process group is created on first use with
gloo for CPU tensors and NCCL for CUDA tensors (``cpu:gloo,cuda:nccl`` where CUDA is present).
"""

from __future__ import annotations

import os


def world() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several, else None. Initialises the process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def finish(code: int) -> int:
    """End a process with exit status ``code``: a single process simply returns it; one of several (the process
    group is initialised) tears the group down and exits here, skipping the interpreter's finalisation.

    Why: on the shared 2-core machine under load, torch's C++ teardown at interpreter exit aborted a rank ("terminate
    called without an active exception", SIGABRT) after all its work had succeeded and its outputs were written —
    in 2 of 4 CI runs and 1-2 of 8 two-rank runs of tests/ddp_worker.py under load; destroying the group first did
    not prevent it (1 of 8), exiting without finalisation did (0 of 10)."""
    import sys

    if "torch.distributed" not in sys.modules:
        return code
    import torch.distributed as dist

    if not dist.is_initialized():
        return code
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_writer() -> bool:
    """Whether this process writes outputs: a single process, or rank 0 of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    return int(os.environ.get("RANK", "0")) == 0
