"""One optimizer step and one evaluation over a split (both by the task), mixed precision, and the
non-finite loss stop."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from framework import distributed
from framework.engine.preemption import signals_held
from framework.engine.state import TrainState
from framework.tasks.task import samples_in, to_device


class RunStopped(Exception):
    """The run cannot go on meaningfully (a non-finite loss): one line, exit 1, status failed."""


def stop_if_not_finite(loss: float, state: TrainState, stop: bool) -> None:
    """A NaN or infinite train/loss (a step's, or the epoch's running sum) stops the run before
    it saves or logs that state as if it were fine."""
    if stop and not math.isfinite(loss):
        raise RunStopped(
            f"train/loss is {loss} at step {state.global_step} (epoch {state.epoch + 1}): the run stopped before "
            "saving that state. Lower optimizer.lr, set trainer.gradient_clip_val or check the data; "
            "trainer.stop_on_nonfinite_loss=false goes on regardless."
        )


def train_step(
    model: torch.nn.Module,
    task,
    micro_batches: list,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast: Callable[[], contextlib.AbstractContextManager],
    clip_norm: float | None,
    before_update: Callable[[], None] = lambda: None,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """One optimizer step on the task's loss of `micro_batches` (on the device already): their
    gradients add up before the step (gradient accumulation). Each micro-batch's loss counts by
    its share of the samples, so that N micro-batches of b make the gradient of one batch of N*b,
    a short last one included; the returned loss is theirs, weighted alike. `no_sync`: under
    DDP, the micro-batches before the last skip the gradient all-reduce. `before_update` runs
    just before the weights change: a save in the background may still be copying them
    (Checkpointer.wait_for_snapshot)."""
    optimizer.zero_grad(set_to_none=True)
    if len(micro_batches) == 1:
        shares = [None]  # one batch: its loss as it is, the bits of a step without accumulation
    else:
        sizes = [samples_in(batch) for batch in micro_batches]
        shares = [size / sum(sizes) if sum(sizes) else 1 / len(sizes) for size in sizes]
    total = None
    for i, (batch, share) in enumerate(zip(micro_batches, shares)):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else no_sync():
            with autocast():
                loss = task.loss(model, batch)
            if share is not None:
                loss = loss * share
            scaler.scale(loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if clip_norm:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    before_update()
    scaler.step(optimizer)
    scaler.update()
    return total


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task,
    loader: DataLoader,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """The task's metrics over a whole split (empty dict for an empty split).

    Draws no random numbers (eval mode, a loader with its own generator), so validating at any
    point leaves the training trajectory untouched. Under torchrun rank r computes batches r,
    r + W, ...; the per-batch sums are gathered and added in batch order, as one process adds
    them: the result is the one process's, to the bit.
    """
    if len(loader.dataset) == 0:
        return {}
    model.eval()
    sums = []
    with signals_held():  # its workers start here
        batches = iter(loader)
    for i, batch in enumerate(batches):
        if i % world_size != rank:
            continue
        with autocast():
            sums.append((i, task.sums(model, to_device(batch, device))))
    model.train()
    if world_size > 1:
        sums = sorted((s for part in distributed.gather(sums) for s in part), key=lambda s: s[0])
    totals: dict = {}
    for _, batch_sums in sums:
        for name, value in batch_sums.items():
            totals[name] = totals[name] + value if name in totals else value
    return task.metrics_from(totals)


def mixed_precision(
    precision: str, device: torch.device
) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler]:
    """An autocast context factory and a gradient scaler for the chosen precision.

    The scaler only scales for 16-mixed (float16 gradients underflow without it); otherwise it
    is disabled and passes every call straight through, so the loop is the same for all three.
    """
    precision = str(precision)
    if precision == "32":
        return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler
