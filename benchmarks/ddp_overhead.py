"""How much does the framework's loop cost over a hand-written DDP loop, on several ranks?

Run it under torchrun; every rank trains the same model on the same data with the same batch
size per rank, first through the framework, then with the loop a PyTorch user writes by hand
(DistributedDataParallel, a DistributedSampler), taking turns. As in overhead.py, a global
optimizer step hook timestamps every optimizer step without touching either loop; rank 0's
step intervals are reported.

    torchrun --standalone --nproc_per_node=2 benchmarks/ddp_overhead.py --rounds 3

The goal is a median step-time ratio (framework / hand-written) of at most 1.05.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from overhead import COMMON, WORKLOADS, intervals, stamps
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from framework import build, config, distributed, train


def time_framework(cfg) -> list[float]:
    with tempfile.TemporaryDirectory() as mine:
        run_dir = Path(distributed.from_main(mine))  # one run directory for the job: rank 0's
        distributed.barrier()
        stamps.clear()
        train.run(cfg, run_dir / "run")
        distributed.barrier()  # rank 0's folder stays until every rank is done with it
    return intervals()


def time_hand_written(cfg) -> list[float]:
    torch.manual_seed(cfg.seed)
    splits = build.build_data(cfg.data, cfg.seed)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.update(input_shape=splits.input_shape, num_classes=splits.num_classes)
    model = DistributedDataParallel(instantiate(model_cfg))
    optimizer = instantiate(OmegaConf.to_container(cfg.optimizer, resolve=True))(model.parameters())
    sampler = DistributedSampler(splits.train, seed=cfg.seed)
    loader = DataLoader(splits.train, batch_size=cfg.data.batch_size, sampler=sampler)
    stamps.clear()
    for epoch in range(cfg.trainer.max_epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return intervals()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="turns each loop takes, alternating")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    args = parser.parse_args()
    if not distributed.is_distributed():
        parser.error("run it under torchrun: torchrun --standalone --nproc_per_node=2 benchmarks/ddp_overhead.py")
    distributed.init()
    logging.disable(logging.INFO)
    config.register()

    rows = []
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        for name in args.workload or list(WORKLOADS):
            cfg = compose("config", overrides=COMMON + WORKLOADS[name])
            time_framework(cfg), time_hand_written(cfg)  # warm-up round, not counted
            ours, theirs, round_ratios = [], [], []
            for _ in range(args.rounds):
                ours_round, theirs_round = time_framework(cfg), time_hand_written(cfg)
                ours += ours_round
                theirs += theirs_round
                round_ratios.append(statistics.median(ours_round) / statistics.median(theirs_round))
            ours_ms, theirs_ms = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
            rows.append(
                (name, len(ours), theirs_ms, ours_ms, ours_ms / theirs_ms, min(round_ratios), max(round_ratios))
            )
    if distributed.is_main():
        print(
            f"torch {torch.__version__}, {distributed.world_size()} ranks (gloo), {torch.get_num_threads()} threads "
            f"each, {args.rounds} alternating rounds; rank 0's steps"
        )
        print()
        print(
            "| workload | steps timed | hand-written DDP median (ms) | framework median (ms) | difference (µs) | ratio "
            "| per-round ratios |"
        )
        print("|---|---:|---:|---:|---:|---:|---|")
        for name, n, hand, ours, ratio, low, high in rows:
            print(
                f"| {name} | {n} | {hand:.3f} | {ours:.3f} | {(ours - hand) * 1e3:.0f} | {ratio:.3f} "
                f"| {low:.3f} to {high:.3f} |"
            )
    distributed.close()


if __name__ == "__main__":
    main()
