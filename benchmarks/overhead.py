"""How much does the framework's loop cost over a hand-written PyTorch loop?

Both loops train the same model on the same data with the same batch size and optimizer, in
this one process, taking turns. A global optimizer step hook (torch.optim's
register_optimizer_step_post_hook) timestamps every optimizer step in either loop without
touching its code, so the step time is the interval between two steps: data loading, forward,
backward, step and whatever bookkeeping the loop does.

The hand-written loop is the one a PyTorch user writes: a plain DataLoader over the training
TensorDataset (a Python call per sample, then collation), each batch moved to the device. The
framework cuts in-memory batches with one indexing operation; with --data-on-device it also
keeps the arrays on the device (data.on_device=true).

The language model (char-lm) is timed step by step instead, the two loops taking turns at every
step: its steps are long (a tenth of a second to a second on 2 CPU cores), and on a shared
machine the load changes within a round of whole runs, which made round-by-round ratios of 0.1
to 6. The framework's step is its training loader (windows at starts keyed by seed, epoch and
index, a sample at a time) and engine.step.train_step with the language_model task; the
hand-written one is nanoGPT's train.py: a batch of windows at random starts in the training
tokens, forward, cross-entropy over every position, backward, step. Same model (two copies of
one initialization), optimizer, data and batch.

    python benchmarks/overhead.py               # every workload, 3 rounds each
    python benchmarks/overhead.py --rounds 5 --workload digits-cnn
    python benchmarks/overhead.py --device cuda --data-on-device

A second table times the training loader alone on the default experiment's data: the median
time to fetch a batch, by hand and by the framework with and without its augmentation.

The goal: a median step-time ratio (framework / hand-written) below 1 on the default experiment
(digits-cnn): the batch data path saves more than the framework's own bookkeeping costs; at most
1.05 on the language model, where the framework loads each window keyed by (seed, epoch, index).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim.optimizer import register_optimizer_step_post_hook

from framework import data as data_lib
from framework.config import schema
from framework.config.folders import CONF_DIR
from framework.engine import build
from framework.engine import run as train
from framework.engine.step import mixed_precision, train_step
from framework.tasks.task import to_device

CONF = CONF_DIR

WORKLOADS = {
    # The default experiment: small CNN on 8x8 digits, batch 64.
    "digits-cnn": ["trainer.max_epochs=3"],
    # A wider model, where the step is compute-bound as in most real work.
    "synthetic-mlp": [
        "data=synthetic",
        "data.source.n_samples=8192",
        "data.source.input_shape=[256]",
        "model=mlp",
        "model.hidden=[1024,1024]",
        "data.batch_size=256",
        "trainer.max_epochs=3",
    ],
}
# A model so small that the step is nearly all loop: the difference is the loop's own cost.
WORKLOADS["tiny-mlp"] = [
    "data=synthetic",
    "data.source.n_samples=4096",
    "data.source.input_shape=[4]",
    "model=mlp",
    "model.hidden=[4]",
    "data.batch_size=8",
    "trainer.max_epochs=2",
]
# The language model: the Transformer on the help topics' characters, batches of 32 windows of 128
# (data=text's defaults), timed step by step (measure_interleaved).
WORKLOADS["char-lm"] = ["task=language_model", "model=transformer", "data=text"]
STEPS_PER_ROUND = 20  # of each loop, in turns; an epoch of char-lm is 103
INTERLEAVED = {"char-lm"}
COMMON = ["logger=none", "checkpoint=off", "scheduler=none", "data.augment.max_shift=0", "data.augment.noise_std=0.0"]

stamps: list[float] = []
register_optimizer_step_post_hook(lambda *args: stamps.append(time.perf_counter()))


def intervals() -> list[float]:
    # Skip the first steps: allocator and kernel warm-up.
    return [b - a for a, b in zip(stamps[5:], stamps[6:])]


def time_framework(cfg) -> list[float]:
    stamps.clear()
    with tempfile.TemporaryDirectory() as run_dir:
        train.run(cfg, Path(run_dir))
    return intervals()


def built_by_hand(cfg):
    """The data, model and optimizer a user builds by hand from the same config values."""
    torch.manual_seed(cfg.seed)
    task = build.build_task(cfg.task)
    splits = build.build_data(cfg.data, cfg.seed, task)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.update(task.model_facts(splits))
    model = instantiate(model_cfg)
    optimizer = instantiate(OmegaConf.to_container(cfg.optimizer, resolve=True))(model.parameters())
    return splits, model, optimizer


def time_hand_written(cfg) -> list[float]:
    """The loop a PyTorch user writes by hand, built from the same config values, on the
    framework's device."""
    device = train.pick_device(cfg.trainer.device)
    splits, model, optimizer = built_by_hand(cfg)
    model.to(device)  # in place: the optimizer keeps the same parameters
    loader = torch.utils.data.DataLoader(splits.train, batch_size=cfg.data.batch_size, shuffle=True)
    stamps.clear()
    for _ in range(cfg.trainer.max_epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return intervals()


def measure_interleaved(name: str, cfg, rounds: int) -> tuple:
    """One table row, the two loops taking turns at every step (the language model): the
    framework's loader and train_step, and nanoGPT's loop, on two copies of one model. A round is
    STEPS_PER_ROUND steps of each, after a warm-up round that is not counted."""
    device = train.pick_device(cfg.trainer.device)
    splits, model, optimizer = built_by_hand(cfg)
    _, hand_model, hand_optimizer = built_by_hand(cfg)  # the same seed: the same initialization
    model.to(device)
    hand_model.to(device)
    task = build.build_task(cfg.task)
    autocast, scaler = mixed_precision(str(cfg.trainer.precision), device)
    keyed = data_lib.Augmented(splits.train, cfg.seed, max_shift=0, noise_std=0.0)
    epochs = (
        data_lib.train_loader(keyed, cfg.data.batch_size, cfg.data.num_workers, cfg.seed, epoch)
        for epoch in itertools.count()
    )
    batches = itertools.chain.from_iterable(epochs)
    tokens, block, batch_size = splits.train.tokens, splits.train.block_size, cfg.data.batch_size

    def framework_step():
        batch = to_device(next(batches), device)
        train_step(model, task, [batch], optimizer, scaler, autocast, cfg.trainer.gradient_clip_val)

    def nanogpt_step():
        starts = torch.randint(len(tokens) - block, (batch_size,))
        x = torch.stack([tokens[s : s + block] for s in starts])
        y = torch.stack([tokens[s + 1 : s + 1 + block] for s in starts])
        x, y = x.to(device), y.to(device)
        logits = hand_model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        hand_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        hand_optimizer.step()

    def timed(step) -> float:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    model.train()
    hand_model.train()
    ours_all, theirs_all, round_ratios = [], [], []
    for round_ in range(rounds + 1):
        ours_round, theirs_round = [], []
        for i in range(STEPS_PER_ROUND):
            first, second = (framework_step, nanogpt_step) if i % 2 == 0 else (nanogpt_step, framework_step)
            times = {first: timed(first), second: timed(second)}
            ours_round.append(times[framework_step])
            theirs_round.append(times[nanogpt_step])
        if round_ == 0:
            continue  # warm-up
        ours_all += ours_round
        theirs_all += theirs_round
        round_ratios.append(statistics.median(ours_round) / statistics.median(theirs_round))
    ours_ms, theirs_ms = statistics.median(ours_all) * 1e3, statistics.median(theirs_all) * 1e3
    return name, len(ours_all), theirs_ms, ours_ms, ours_ms / theirs_ms, min(round_ratios), max(round_ratios)


def measure(name: str, cfg, ours, theirs, rounds: int) -> tuple:
    """One table row: the two loops (functions of the config returning step intervals) take
    turns, after a warm-up round that is not counted."""
    ours(cfg), theirs(cfg)
    ours_all, theirs_all, round_ratios = [], [], []
    for _ in range(rounds):
        ours_round, theirs_round = ours(cfg), theirs(cfg)
        ours_all += ours_round
        theirs_all += theirs_round
        round_ratios.append(statistics.median(ours_round) / statistics.median(theirs_round))
    ours_ms, theirs_ms = statistics.median(ours_all) * 1e3, statistics.median(theirs_all) * 1e3
    return name, len(ours_all), theirs_ms, ours_ms, ours_ms / theirs_ms, min(round_ratios), max(round_ratios)


def print_table(rows: list[tuple], hand_written: str = "hand-written") -> None:
    print(
        f"| workload | steps timed | {hand_written} median (ms) | framework median (ms) | difference (µs) | ratio "
        "| per-round ratios |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, n, hand, ours, ratio, low, high in rows:
        print(
            f"| {name} | {n} | {hand:.3f} | {ours:.3f} | {(ours - hand) * 1e3:.0f} | {ratio:.3f} "
            f"| {low:.3f} to {high:.3f} |"
        )


def median_fetch_us(loader_of_epoch, epochs: int = 5) -> float:
    """The median time to fetch one batch (nothing else: no model) over `epochs` epochs, in µs."""
    times = []
    for epoch in range(epochs):
        batches = iter(loader_of_epoch(epoch))
        while True:
            start = time.perf_counter()
            if next(batches, None) is None:
                break
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def print_data_path(cfg, device: torch.device | None) -> None:
    """The training loaders alone: the hand-written one and the framework's, with the default
    experiment's shift and with noise too (`device`: where the framework keeps the arrays)."""
    train_set = build.build_data(cfg.data, cfg.seed, build.build_task(cfg.task)).train
    size, seed = cfg.data.batch_size, cfg.seed
    rows = {"hand-written DataLoader": lambda epoch: torch.utils.data.DataLoader(train_set, size, shuffle=True)}
    for shift, noise in ((0, 0.0), (1, 0.0), (1, 0.1)):
        augmented = data_lib.Augmented(train_set, seed, shift, noise, device)
        name = f"framework, max_shift={shift}, noise_std={noise}"
        rows[name] = lambda epoch, augmented=augmented: data_lib.train_loader(augmented, size, 0, seed, epoch)
    print(f"| training loader, batches of {size} | median fetch (µs) |")
    print("|---|---:|")
    for name, loader_of_epoch in rows.items():
        print(f"| {name} | {median_fetch_us(loader_of_epoch):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="turns each loop takes, alternating")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="trainer.device of both loops (auto: a GPU if there is one)")
    parser.add_argument(
        "--data-on-device", action="store_true", help="the framework keeps its data on the device (data.on_device)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)
    schema.register()
    setting = [f"trainer.device={args.device}", f"data.on_device={str(args.data_on_device).lower()}"]
    if args.threads:  # or the framework's run puts its own number in force (determinism.num_threads)
        setting.append(f"determinism.num_threads={args.threads}")

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        rows = [
            measure_interleaved(name, compose("config", overrides=COMMON + setting + WORKLOADS[name]), args.rounds)
            if name in INTERLEAVED else
            measure(name, compose("config", overrides=COMMON + setting + WORKLOADS[name]), time_framework,
                    time_hand_written, args.rounds)
            for name in args.workload or list(WORKLOADS)
        ]  # fmt: skip
    device = train.pick_device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, data.on_device={str(args.data_on_device).lower()}, "
        f"{torch.get_num_threads()} threads, {args.rounds} alternating rounds"
    )
    print()
    print_table(rows)
    print()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose("config", overrides=COMMON + setting + WORKLOADS["digits-cnn"])
    print_data_path(default, device if args.data_on_device else None)


if __name__ == "__main__":
    main()
