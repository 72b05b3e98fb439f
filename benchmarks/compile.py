"""What does trainer.compile buy per step, and what does compiling cost?

The framework trains each workload (overhead.py's) eager and compiled (trainer.compile=true, or
--mode), taking turns in this process. As in overhead.py, a global optimizer step hook
timestamps every optimizer step, and a step time is the interval between two steps, the first
five steps of a run left out: so the first step, which compiles, is never in the medians. What
compiling costs is what the run logs for its first step ("torch.compile: the first step took
X s (compiling)"), reported apart: in the first compiled run of a workload, with inductor's
on-disk cache empty (a fresh temporary folder, unless --keep-cache), and in the later ones,
whose kernels that cache (and this process's) already holds. Every compiled run starts from
empty dynamo caches (torch._dynamo.reset()), as a new process does.

A training set that batches leave a short last batch of compiles a second graph (the batch size
made dynamic) at the end of the first epoch: that step is the slowest compiled step, reported
apart too; it is one interval among the timed ones, and the median does not see it.

    python benchmarks/compile.py                      # digits-cnn and synthetic-mlp, 3 rounds
    python benchmarks/compile.py --workload tiny-mlp --rounds 5 --mode max-autotune
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from overhead import COMMON, WORKLOADS, stamps

from framework.config import schema
from framework.config.folders import CONF_DIR
from framework.engine import run as train

DEFAULT_WORKLOADS = ["digits-cnn", "synthetic-mlp"]  # char-lm's Transformer takes minutes to compile here
SKIPPED = 5  # first steps of each run left out of the step times (as overhead.py does)
FIRST_STEP = re.compile(r"torch\.compile: the first step took ([\d.]+) s")


class FirstStepLog(logging.Handler):
    """Keeps the compile time that the framework logs for a run's first step."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seconds: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        found = FIRST_STEP.match(record.getMessage())
        if found:
            self.seconds = float(found[1])


def timed_run(cfg) -> tuple[list[float], float | None]:
    """One run of the framework: its step intervals (the first SKIPPED steps left out) and the
    compile time its first step logged (None when eager)."""
    torch._dynamo.reset()
    log = FirstStepLog()
    framework_log = logging.getLogger("framework")
    framework_log.addHandler(log)
    stamps.clear()
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            train.run(cfg, Path(run_dir))
    finally:
        framework_log.removeHandler(log)
    return [b - a for a, b in zip(stamps[SKIPPED:], stamps[SKIPPED + 1 :])], log.seconds


def measure(name: str, eager_cfg, compiled_cfg, rounds: int) -> tuple:
    """One table row: eager and compiled runs taking turns, `rounds` of each (who goes first
    alternates)."""
    eager, compiled, compile_times, slowest, round_ratios = [], [], [], [], []
    for round_ in range(rounds):
        order = ("eager", "compiled") if round_ % 2 == 0 else ("compiled", "eager")
        steps, first_step = {}, {}
        for kind in order:
            steps[kind], first_step[kind] = timed_run(eager_cfg if kind == "eager" else compiled_cfg)
        eager += steps["eager"]
        compiled += steps["compiled"]
        compile_times.append(first_step["compiled"])
        slowest.append(max(steps["compiled"]))
        round_ratios.append(statistics.median(steps["compiled"]) / statistics.median(steps["eager"]))
    eager_ms, compiled_ms = statistics.median(eager) * 1e3, statistics.median(compiled) * 1e3
    warm = statistics.median(compile_times[1:]) if rounds > 1 else float("nan")
    ratios = (compiled_ms / eager_ms, min(round_ratios), max(round_ratios))
    return name, len(compiled), eager_ms, compiled_ms, *ratios, compile_times[0], warm, max(slowest)


def print_table(rows: list[tuple]) -> None:
    print(
        "| workload | steps timed | eager median (ms) | compiled median (ms) | compiled / eager | per-round ratios "
        "| first step, cold cache (s) | first step, warm cache (s) | slowest compiled step (s) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for name, n, eager, compiled, ratio, low, high, cold, warm, slowest in rows:
        print(
            f"| {name} | {n} | {eager:.3f} | {compiled:.3f} | {ratio:.3f} | {low:.3f} to {high:.3f} "
            f"| {cold:.1f} | {warm:.1f} | {slowest:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, eager and compiled, taking turns")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--mode", default="true", help="trainer.compile's value: true or a torch.compile mode")
    parser.add_argument("--device", default="auto", help="trainer.device (auto: a GPU if there is one)")
    parser.add_argument("--keep-cache", action="store_true", help="inductor's usual cache (maybe warm)")
    args = parser.parse_args()
    cache = None if args.keep_cache else tempfile.TemporaryDirectory(prefix="inductor-cache-")
    if cache is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name  # read at the first compile
    framework_log = logging.getLogger("framework")
    framework_log.setLevel(logging.INFO)
    framework_log.propagate = False  # the runs' own lines stay out of the table's output
    schema.register()
    setting = [f"trainer.device={args.device}"]
    started = time.perf_counter()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        rows = []
        for name in args.workload or DEFAULT_WORKLOADS:
            eager = COMMON + setting + WORKLOADS[name]
            compiled = [*eager, f"trainer.compile={args.mode}"]
            rows.append(
                measure(name, compose("config", overrides=eager), compose("config", overrides=compiled), args.rounds)
            )
    print(
        f"torch {torch.__version__}, device {train.pick_device(args.device)}, {torch.get_num_threads()} threads, "
        f"trainer.compile={args.mode}, {args.rounds} rounds of each, "
        f"inductor cache {'as usual' if args.keep_cache else 'empty at start'}; {time.perf_counter() - started:.0f} s"
    )
    print()
    print_table(rows)
    if cache is not None:
        cache.cleanup()


if __name__ == "__main__":
    main()
