"""How the model is spread over the ranks (`trainer.strategy`).

    ddp   every rank holds the whole model and optimizer state; gradients are all-reduced
          (DistributedDataParallel; one process: the model as it is). The default.
    fsdp  every rank holds its shard of the parameters, gradients and optimizer state
          (FSDP2, torch.distributed.fsdp.fully_shard, on a device mesh over the ranks): each of
          the model's blocks is sharded as a unit, then the root. Checkpoints are directories
          that every rank writes its shard into (framework/checkpoint/directories.py).

The model's blocks are the members of its nn.ModuleList and nn.Sequential containers that hold
parameters, outermost first (a transformer's layers; an MLP's linear layers): each is gathered
for its forward and freed after, so a rank never holds more than one block's whole parameters
besides its shards.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist

from framework import distributed


def spread(
    model: torch.nn.Module, strategy: str, device: torch.device
) -> tuple[torch.nn.Module, Callable[[], contextlib.AbstractContextManager]]:
    """What trains (the model, sharded in place, or its DDP wrapper) and the context in which a
    micro-batch's backward skips the gradients' reduction (gradient accumulation)."""
    if strategy == "fsdp":
        # Imported here: FSDP takes a second to import, which a run that shards nothing should not pay.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for block in blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, lambda: without_gradient_sync(model)
    if distributed.world_size() > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        return ddp, ddp.no_sync
    return model, contextlib.nullcontext


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The members of the model's ModuleLists and Sequentials that hold parameters, outermost
    containers first; a block's own containers are inside its unit, not units of their own."""
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for _, module in model.named_modules():
        if id(module) in inside or not isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
            continue
        for member in module:
            if any(True for _ in member.parameters()):
                found.append(member)
                inside.update(id(m) for m in member.modules())
    return found


@contextlib.contextmanager
def without_gradient_sync(model: torch.nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def is_sharded(model: torch.nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing is sharded
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def one_process_group() -> bool:
    """fsdp in one process still needs a process group (of one): made here, in memory. Returns
    whether it was made (the caller then ends it)."""
    if dist.is_initialized():
        return False
    dist.init_process_group(distributed.backend(), store=dist.HashStore(), rank=0, world_size=1)
    return True
