"""What each determinism level costs: median training-step time of the default experiment under
off, seeded and strict, taking turns in one process (a global optimizer-step hook timestamps
the steps, as in overhead.py).

    python benchmarks/determinism.py [--rounds 3] [--epochs 3]

On a CPU the three levels run the same kernels; on a GPU `off` lets cuDNN benchmark and pick
the fastest (possibly nondeterministic) kernels, and `strict` forbids nondeterministic ones.
`strict` also pins the thread count (1 unless set): the last row runs it with as many threads as
`seeded` uses, to tell the cost of the level from the cost of the threads.
Run with PYTHONHASHSEED set (strict requires it): PYTHONHASHSEED=0 python benchmarks/determinism.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.optim.optimizer import register_optimizer_step_post_hook

from framework.config import schema
from framework.config.folders import CONF_DIR
from framework.engine import run as train
from framework.runs.reproducibility import machine_threads

CONF = CONF_DIR
stamps: list[float] = []
register_optimizer_step_post_hook(lambda *args: stamps.append(time.perf_counter()))


def step_times(cfg) -> list[float]:
    stamps.clear()
    with tempfile.TemporaryDirectory() as run_dir:
        train.run(cfg, Path(run_dir))
    return [b - a for a, b in zip(stamps[5:], stamps[6:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    schema.register()
    cpus = machine_threads()
    runs = {  # label -> (level, threads)
        "off": ("off", cpus),
        "seeded": ("seeded", cpus),
        "strict": ("strict", 1),
        f"strict, {cpus} threads": ("strict", cpus),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for _ in range(args.rounds):
            for label, (level, threads) in runs.items():
                overrides = [f"determinism={level}", f"determinism.num_threads={threads}"]
                overrides += [f"trainer.max_epochs={args.epochs}", "logger=none", "checkpoint=off"]
                times[label] += step_times(compose("config", overrides=overrides))
    base = statistics.median(times["seeded"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"default experiment on {device}, torch {torch.__version__}, {args.rounds} rounds, {cpus} CPUs")
    print()
    print("| level | threads | steps timed | median step (ms) | vs seeded |")
    print("|---|---:|---:|---:|---:|")
    for label, (level, threads) in runs.items():
        median = statistics.median(times[label])
        print(f"| {level} | {threads} | {len(times[label])} | {median * 1e3:.3f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
