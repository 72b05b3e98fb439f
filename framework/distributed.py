"""Several processes under `torchrun`: the process group, ranks, and the few collectives the
loop needs. One process (no torchrun) never touches torch.distributed: everything here is then
a no-op, so the single-process path stays what it was, bit for bit.

torchrun tells each process its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). The group is made once, before Hydra, because the ranks must agree on
one run directory before Hydra creates anything (framework/cli/launch_plan.py). Its backend is gloo
for CPU tensors and NCCL for CUDA ones ("cpu:gloo,cuda:nccl" when CUDA is there).

Collectives time out after TIMEOUT seconds rather than torch's default 30 minutes: a rank that
died must bring the job down in bounded time, not leave the others waiting at a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=int(os.environ.get("FRAMEWORK_COLLECTIVE_TIMEOUT_S", "120")))


def rank(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("RANK", "0"))


def world_size(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("WORLD_SIZE", "1"))


def is_distributed(environ: Mapping[str, str] = os.environ) -> bool:
    return world_size(environ) > 1


def is_main(environ: Mapping[str, str] = os.environ) -> bool:
    """Rank 0: the one process that logs and writes the run's files."""
    return rank(environ) == 0


def init() -> None:
    """Join torchrun's process group (once; nothing without torchrun)."""
    if not is_distributed() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend(), timeout=TIMEOUT)


def backend() -> str:
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def join_cluster_tasks() -> None:
    """In a job of Hydra's submitit launcher with several tasks (`tasks_per_node`, `nodes`):
    every task runs the job, so they form the group the way torchrun's processes do. submitit
    knows the tasks' places; it exports them as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR,
    ...). Nothing outside such a job."""
    if is_distributed() or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    try:
        import submitit

        tasks = submitit.JobEnvironment().num_tasks
    except (ImportError, RuntimeError):
        return
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        init()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# `group` below: a process group of its own (a background save's), or None: the default one.
def barrier(group=None) -> None:
    if is_distributed():
        dist.barrier(group)


def from_main(value, group=None):
    """Rank 0's `value`, on every rank (a picklable object: a path, a decision)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def gather(value, group=None) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value, group=group)
    return out


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank (a stop signal reaches the ranks at different steps)."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean(value: float) -> float:
    """The mean of a float over the ranks (the training loss each rank saw)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world_size()
