"""Running as one of several processes (``torchrun``): the process group, this process's rank, who writes.

``torchrun --nproc_per_node N`` (or any launcher that sets ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` /
``MASTER_PORT``, e.g. ``srun`` with those exported) starts N copies of a vitrt command. They train together
(the shared trainer wraps the model in DistributedDataParallel and shards the data with a DistributedSampler)
and otherwise do the same work; only rank 0 writes outputs. The process group is created on first use with
gloo for CPU tensors and NCCL for CUDA tensors (``cpu:gloo,cuda:nccl`` where CUDA is present).
"""

from __future__ import annotations

import atexit
import os


def world() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several, else None. Initialises the process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        # torn down before the interpreter exits: a group left to process teardown can abort a rank ("terminate
        # called without an active exception", seen once in CI under load) after all its work succeeded
        atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def is_writer() -> bool:
    """Whether this process writes outputs: a single process, or rank 0 of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    return int(os.environ.get("RANK", "0")) == 0
