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
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from overhead import COMMON, WORKLOADS, built_by_hand, intervals, measure, print_table, stamps
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from framework import distributed
from framework.config import schema
from framework.config.folders import CONF_DIR
from framework.engine import run as train


def time_framework(cfg) -> list[float]:
    with tempfile.TemporaryDirectory() as mine:
        run_dir = Path(distributed.from_main(mine))  # one run directory for the job: rank 0's
        distributed.barrier()
        stamps.clear()
        train.run(cfg, run_dir / "run")
        distributed.barrier()  # rank 0's folder stays until every rank is done with it
    return intervals()


def time_hand_written(cfg) -> list[float]:
    splits, model, optimizer = built_by_hand(cfg)
    model = DistributedDataParallel(model)  # the optimizer holds the same parameters
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
    schema.register()

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        rows = [
            measure(name, compose("config", overrides=COMMON + WORKLOADS[name]), time_framework, time_hand_written,
                    args.rounds)
            for name in args.workload or list(WORKLOADS)
        ]  # fmt: skip
    if distributed.is_main():
        print(
            f"torch {torch.__version__}, {distributed.world_size()} ranks (gloo), {torch.get_num_threads()} threads "
            f"each, {args.rounds} alternating rounds; rank 0's steps"
        )
        print()
        print_table(rows, "hand-written DDP")
    distributed.close()


if __name__ == "__main__":
    main()
