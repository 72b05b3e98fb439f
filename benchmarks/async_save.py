"""How long does a save point stop the training loop, saving in the background against saving
synchronously?

For each state size, a Checkpointer (framework/checkpoint/policy.py) saves the same full-size
state at a save point, as the loop calls it: with checkpoint.async_save=false the call returns
once the file is durable and listed; with true it returns once the state is copied (the
snapshot) and the write is handed to the background thread. The stall is how long that call
takes; the background write is waited for outside the timing, so that each save starts alone.
The goal: the stall with async_save is at most 5% of a synchronous save.

    python benchmarks/async_save.py                       # 64 MB to 1 GB, median of 3
    python benchmarks/async_save.py --sizes 64 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from checkpoint_io import payload_of
from omegaconf import OmegaConf

from framework.checkpoint.policy import Checkpointer

POLICY = {"enabled": True, "save_last": True, "monitor": None, "mode": "min", "every_n_epochs": None,
          "every_n_steps": None, "keep_last_n": None, "model_only": False, "strict_load": True,
          "verify_on_resume": True}  # fmt: skip


def full_payload(size_mb: int) -> dict:
    """A full checkpoint's keys around `size_mb` MB of weights (the loop's payload has them all)."""
    payload = payload_of(size_mb)
    return {**payload, "meta": {**payload["meta"], "kind": "full"}, "optimizer_state_dict": {},
            "scheduler_state_dict": {}, "scaler_state_dict": {}, "loss": 0.5, "best_metric": None,
            "rng_state": None, "cuda_rng_state": [], "numpy_rng_state": None, "python_rng_state": None,
            "rng_per_rank": [], "loader_state": {"epoch": 1, "position": 0}}  # fmt: skip


def stall(checkpointer: Checkpointer, payload: dict, step: int) -> float:
    """The time one save point takes in the loop's thread; then the write is waited for."""
    start = time.perf_counter()
    checkpointer.save(lambda kind: payload, event="epoch", epoch=step, step=step, position=0, metric=None,
                      improved=False)  # fmt: skip
    taken = time.perf_counter() - start
    checkpointer.wait()  # outside the timing: the next save starts alone,
    checkpointer.discard.submit(int).result()  # after the file it replaced is deleted too
    return taken


def measure(size_mb: int, folder: Path, rounds: int) -> tuple[float, float]:
    """Median seconds of a synchronous save and of the stall of a background one. One save of
    each first, untimed: the first background save allocates its snapshot's memory, which every
    later one reuses (as in a run, whose first save is one of many)."""
    payload = full_payload(size_mb)
    savers = {}
    for mode in (False, True):
        (folder / str(mode)).mkdir()
        savers[mode] = Checkpointer(OmegaConf.create({**POLICY, "async_save": mode}), folder / str(mode))
    try:
        times = {False: [], True: []}
        for step in range(rounds + 1):
            for mode, checkpointer in savers.items():  # in turns
                taken = stall(checkpointer, payload, step)
                if step:
                    times[mode].append(taken)
    finally:
        for checkpointer in savers.values():
            checkpointer.close()
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="state sizes in MB")
    parser.add_argument("--rounds", type=int, default=3, help="saves of each kind, taking turns")
    parser.add_argument("--folder", type=Path, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    print("| state (MB) | synchronous save (s) | stall with async_save (s) | stall / synchronous |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for size in args.sizes:
            folder = Path(tmp) / f"{size}mb"
            folder.mkdir()
            sync, background = measure(size, folder, args.rounds)
            print(f"| {size} | {sync:.4f} | {background:.4f} | {background / sync:.3f} |")


if __name__ == "__main__":
    main()
