"""The loaders: the epoch's keyed order shard by shard, in-memory batches, worker seeding."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from framework.config.errors import ConfigError
from framework.data.augment import Augmented
from framework.data.keyed import EVAL, SHUFFLE, WORKERS, keyed_generator, load_sample
from framework.engine.preemption import ignore_stop_signals


class EvalView(Dataset):
    """A user's dataset read for validation or testing: each sample keyed by its index alone,
    so that a random transform, if the dataset has one, draws the same every time."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed = base, seed

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        return load_sample(self.base, index, (self.seed, EVAL, index))


# ---- training data: keyed shuffle, keyed augmentation, a batch at a time ---------------------
class EpochBatches(Sampler):
    """The keys of one epoch's batches, (epoch, index tensor): the epoch's keyed shuffle cut in
    batches of `batch_size`, from batch `start_batch` on.

    Passing the epoch with the indices lets the dataset key its augmentation without any state
    of its own, so worker processes need nothing but the key.

    Under torchrun, rank r of W takes every W-th index of the shuffle from r on; the shuffle is
    first padded with its own beginning to a multiple of W, so that every rank gets as many
    samples (and steps) as the others.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ):
        self.n, self.batch_size, self.seed, self.epoch, self.start_batch = n, batch_size, seed, epoch, start_batch
        self.rank, self.world_size, self.device = rank, world_size, device

    def order(self) -> torch.Tensor:
        # Drawn on the CPU whatever the device: the shuffle is the same bits everywhere.
        order = torch.randperm(self.n, generator=keyed_generator(self.seed, SHUFFLE, self.epoch))
        if self.world_size > 1:
            padded = shard_size(self.n, self.world_size) * self.world_size
            order = torch.cat([order, order[: padded - self.n]])[self.rank :: self.world_size]
        return order

    def __iter__(self):
        # One copy an epoch to the data's device: batches of data kept on a GPU are cut there,
        # with no transfer or synchronization per step.
        rest = self.order()[self.start_batch * self.batch_size :].to(self.device)
        for indices in rest.split(self.batch_size):
            yield self.epoch, indices

    def __len__(self):
        left = shard_size(self.n, self.world_size) - self.start_batch * self.batch_size
        return max(0, -(-left // self.batch_size))


def shard_size(n: int, world_size: int) -> int:
    """How many training samples each rank takes in an epoch."""
    return -(-n // world_size)


class InMemory(Dataset):
    """Arrays (a TensorDataset) read for validation or testing, a batch at a time: the loader
    hands __getitems__ a batch of indices, cut with one indexing operation."""

    def __init__(self, arrays: TensorDataset, device: torch.device | None = None):
        self.x, self.y = (t.to(device) for t in arrays.tensors) if device else arrays.tensors
        self.device = self.x.device

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]

    def __getitems__(self, indices: torch.Tensor):
        return self.x.index_select(0, indices), self.y.index_select(0, indices)


class InOrder(Sampler):
    """The batches of an evaluation, as index tensors 0..n-1 in order, on the data's device."""

    def __init__(self, n: int, batch_size: int, device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device

    def __iter__(self):
        yield from torch.arange(self.n, device=self.device).split(self.batch_size)

    def __len__(self):
        return -(-self.n // self.batch_size)


def already_batched(batch):
    """The collate_fn of the batch path: the dataset's __getitems__ returns the batch made."""
    return batch


def resident_device(on_device: bool, device: torch.device, train: Dataset) -> torch.device | None:
    """Where in-memory arrays are kept for the run: the training device with data.on_device,
    else where the source made them (None). (config.check refuses it with loader workers.)"""
    if not on_device:
        return None
    if not isinstance(train, TensorDataset):
        raise ConfigError(
            "data.on_device=true keeps in-memory arrays on the device; data.source gives a "
            f"{type(train).__name__}, which is read a sample at a time: set data.on_device=false"
        )
    return device


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and Python `random` in a loader worker from its torch seed.

    Torch seeds each worker from the loader's generator; the other two libraries would start
    every worker, every epoch, in the same state. Our own augmentation does not use them, but a
    user's transform might. Stop signals are left to the main process (framework/engine/preemption.py).
    """
    import random

    ignore_stop_signals()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train_loader(
    dataset: Augmented,
    batch_size: int,
    num_workers: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """The loader for one epoch, from batch `start_batch` on: a pure function of its arguments.

    It hands the dataset a whole batch's key at a time (dataset.__getitems__). Its own generator
    (keyed by seed and epoch) seeds the workers, so creating it never draws from the global
    torch RNG.
    """
    batches = EpochBatches(len(dataset), batch_size, seed, epoch, start_batch, rank, world_size, dataset.device)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=already_batched,
        num_workers=num_workers,
        generator=keyed_generator(seed, WORKERS, epoch),
        worker_init_fn=seed_worker,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device | None = None) -> DataLoader:
    """Validation or test batches in order. Arrays (a TensorDataset) are cut a batch at a time,
    kept on `device` when given; a user's dataset is read a sample at a time."""
    # A generator of its own: without one, every iterator takes its base seed from the global
    # torch RNG, and validating would shift the training randomness.
    generator = torch.Generator().manual_seed(0)
    workers = {"num_workers": num_workers, "generator": generator, "worker_init_fn": ignore_stop_signals}
    if isinstance(dataset, TensorDataset):
        arrays = InMemory(dataset, device)
        batches = InOrder(len(arrays), batch_size, arrays.device)
        return DataLoader(arrays, batch_sampler=batches, collate_fn=already_batched, **workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **workers)
