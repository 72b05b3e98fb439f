"""How long does a save point stop the training loop, saving in the background against saving
synchronously? And what does the background write cost the steps that run beside it?

For each state size, a training loop as the framework's (framework.engine.step.train_step: forward,
backward, wait_for_snapshot, optimizer step) trains an MLP whose parameters and Adam's two
moments come to about that many MB, on random batches. Saves take turns: a synchronous one
(checkpoint.async_save=false), then a background one (true), each after a few steps without a
save in flight, which give the step time. Per save:
    stall    the time the loop is stopped: the save point's call (for a background save: the
             copy of the buffers and the hand-off), plus the time the next optimizer step waits
             for the background copy of the parameters and the optimizer's state
    lost     the loop's time from the save point until the file is durable and listed, less
             what the steps run in that time take without a save: the stall plus what the
             background write (serialising, hashing, writing) takes from the steps beside it
For a synchronous save both are the save's time. The goal: the stall with async_save is at most
5% of a synchronous save.

    python benchmarks/async_save.py                       # 64 MB to 1 GB, median of 3
    python benchmarks/async_save.py --sizes 64 --rounds 1 --batch 16
    python benchmarks/async_save.py --device cuda          # the copy goes to pinned memory
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from framework.checkpoint.io import required_keys
from framework.checkpoint.policy import Checkpointer
from framework.engine.state import stepped_tensors
from framework.engine.step import train_step
from framework.models import MLP
from framework.tasks.classification import Classification

MB = 10**6
LAYERS = 3  # hidden layers of the MLP, each `width` wide
STEPS_BETWEEN = 3  # steps without a save in flight before each save point: the step time
POLICY = {"enabled": True, "save_last": True, "monitor": None, "mode": "min", "every_n_epochs": None,
          "every_n_steps": None, "keep_last_n": None, "model_only": False, "strict_load": True,
          "verify_on_resume": True}  # fmt: skip


class Loop:
    """An MLP with Adam whose state (parameters and two moments) is about `size_mb` MB."""

    def __init__(self, size_mb: int, batch: int, device: torch.device):
        width = round(math.sqrt(size_mb * MB / 4 / 3 / LAYERS))
        self.model = MLP((width,), 10, hidden=[width] * LAYERS, dropout=0.0).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.task = Classification()
        self.x = torch.randn(batch, width, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.on_gpu = device.type == "cuda"
        self.waited = 0.0  # seconds the optimizer steps waited for a background copy

    def step(self, checkpointer: Checkpointer) -> float:
        start = time.perf_counter()
        train_step(self.model, self.task, [(self.x, self.y)], self.optimizer, self.scaler, contextlib.nullcontext, None,
                   lambda: self.wait_for_snapshot(checkpointer))  # fmt: skip
        if self.on_gpu:
            torch.cuda.synchronize()  # the step's time on the GPU, not the time to queue it
        return time.perf_counter() - start

    def wait_for_snapshot(self, checkpointer: Checkpointer) -> None:
        start = time.perf_counter()
        checkpointer.wait_for_snapshot()
        self.waited += time.perf_counter() - start

    def state_mb(self) -> float:
        return sum(t.numel() * t.element_size() for t in stepped_tensors(self.model, self.optimizer)) / MB

    def payload(self, kind: str) -> dict:
        return {**dict.fromkeys(required_keys("full")), "model_state_dict": self.model.state_dict(),
                "optimizer_state_dict": self.optimizer.state_dict(), "meta": {"kind": "full"}}  # fmt: skip


def one_save(loop: Loop, checkpointer: Checkpointer, step: int) -> tuple[float, float, float]:
    """Steps without a save in flight, a save point, then steps until the file is listed.
    Returns the median step time, the stall and the time lost."""
    os.sync()  # the disk finishes what the previous save left, before anything is timed
    normal = statistics.median(loop.step(checkpointer) for _ in range(STEPS_BETWEEN))
    loop.waited = 0.0
    start = time.perf_counter()
    checkpointer.save(loop.payload, event="step", epoch=0, step=step, position=step, metric=None,
                      improved=False, copy_later=stepped_tensors(loop.model, loop.optimizer))  # fmt: skip
    called = time.perf_counter() - start
    steps, writing = 0, checkpointer.in_flight  # None once a synchronous save returns
    while steps == 0 or (writing is not None and not writing.done()):
        loop.step(checkpointer)
        steps += 1
    checkpointer.wait()
    lost = time.perf_counter() - start - steps * normal
    checkpointer.store.discard.submit(int).result()  # the replaced file is deleted before the next save
    return normal, called + loop.waited, lost


def measure(size_mb: int, folder: Path, rounds: int, batch: int, device: torch.device) -> dict:
    """Medians over the rounds. One save of each kind first, untimed: the first background save
    allocates the snapshot's memory, which every later one reuses (as in a run, whose first save
    is one of many)."""
    loop = Loop(size_mb, batch, device)
    savers = {}
    for mode in (False, True):
        (folder / str(mode)).mkdir()
        savers[mode] = Checkpointer(OmegaConf.create({**POLICY, "async_save": mode}), folder / str(mode))
    results = {False: [], True: []}
    try:
        for step in range(rounds + 1):
            for mode, checkpointer in savers.items():  # in turns
                measured = one_save(loop, checkpointer, step)
                if step:
                    results[mode].append(measured)
    finally:
        for checkpointer in savers.values():
            checkpointer.close()

    def median(mode: bool, i: int) -> float:
        return statistics.median(r[i] for r in results[mode])

    return {"state": loop.state_mb(), "step": median(True, 0), "sync": median(False, 1),
            "stall": median(True, 1), "lost": median(True, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="state sizes in MB")
    parser.add_argument("--rounds", type=int, default=3, help="saves of each kind, taking turns")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the training steps")
    parser.add_argument("--device", default="cpu", help="where the model trains: cpu, cuda")
    parser.add_argument("--folder", type=Path, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print("| state (MB) | step (s) | synchronous save (s) | stall with async_save (s) | stall / synchronous "
          "| time lost with async_save (s) | lost / synchronous |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for size in args.sizes:
            folder = Path(tmp) / f"{size}mb"
            folder.mkdir()
            m = measure(size, folder, args.rounds, args.batch, device)
            print(f"| {m['state']:.0f} | {m['step']:.4f} | {m['sync']:.4f} | {m['stall']:.4f} "
                  f"| {m['stall'] / m['sync']:.3f} | {m['lost']:.4f} | {m['lost'] / m['sync']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
