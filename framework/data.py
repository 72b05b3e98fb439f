"""Data: sources that give arrays or datasets, a seeded split, keyed augmentation and the loaders.

Randomness in the data path is keyed, not streamed. The shuffle of epoch e is drawn from a
generator seeded with (seed, e); the augmentation of sample i in epoch e from one seeded with
(seed, e, i). So the data seen at any step is a pure function of the seed, the epoch and the
position in it: nothing to carry in a checkpoint but two counters, nothing taken from the
global RNG, and the same batches whichever worker process loads them.

A user's own map-style Dataset gets the same guarantee for its random transforms when it draws
them from `sample_generator()` (or `sample_seed()`): keyed by (seed, epoch, index) of the sample
being loaded. Drawn from the global streams instead, they depend on the number of workers and
break exact resume (the README says how).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from framework.preemption import ignore_stop_signals

# Each use of the seed gets its own tag, so that the streams never coincide.
SPLIT, SHUFFLE, AUGMENT, NOISE, WORKERS, TRANSFORM, EVAL = 1, 2, 3, 4, 5, 6, 7


_MASK = 2**64 - 1


def keyed_seed(*key: int) -> int:
    """A 64-bit seed from a tuple of ints (splitmix64 folded over the key): cheap enough to
    call once per sample, and keys that differ in any place give unrelated seeds."""
    h = 0
    for k in key:
        h = (h ^ int(k)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h


def keyed_generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(keyed_seed(*key))


# ---- sources: each returns (x float32 [N, ...], y int64 [N]) -------------------------------
def load_digits():
    """The 1,797 8x8 digit images that scikit-learn ships, scaled to [0, 1], shape [N, 1, 8, 8].

    Read straight from the CSV file inside the installed scikit-learn: importing sklearn
    itself costs seconds (SciPy) on every run, for a 300 kB table.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is None or not csv.is_file():
        raise FileNotFoundError("data=digits needs scikit-learn's digits.csv.gz: pip install scikit-learn")
    table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :-1].copy()).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.from_numpy(table[:, -1].astype(np.int64))


def make_synthetic(n_samples: int, input_shape, num_classes: int, noise: float, generator_seed: int):
    """A learnable problem of any size: a fixed random pattern per class plus Gaussian noise."""
    g = torch.Generator().manual_seed(generator_seed)
    shape = tuple(input_shape)
    patterns = torch.randn((num_classes, *shape), generator=g)
    y = torch.randint(0, num_classes, (n_samples,), generator=g)
    x = patterns[y] + noise * torch.randn((n_samples, *shape), generator=g)
    return x, y


def load_npz(path: str, x_key: str = "x", y_key: str = "y"):
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.source.path: no such file: {file}")
    with np.load(file) as arrays:
        for key, name in ((x_key, "data.source.x_key"), (y_key, "data.source.y_key")):
            if key not in arrays:
                raise KeyError(f"{name}: {file} has no array {key!r} (it has {sorted(arrays.files)})")
        x, y = arrays[x_key], arrays[y_key]
    if len(x) != len(y):
        raise ValueError(f"{file}: {x_key} has {len(x)} rows but {y_key} has {len(y)}")
    return torch.as_tensor(x), torch.as_tensor(y)  # their types are checked (and converted) by build_data


# ---- split -------------------------------------------------------------------------------
@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: list[int]
    num_classes: int


def split_indices(n: int, val_fraction: float, test_fraction: float, split_seed: int):
    """Train, val and test indices of n samples: a keyed permutation cut in three."""
    order = torch.randperm(n, generator=keyed_generator(split_seed, SPLIT))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, test_fraction: float, split_seed: int) -> Splits:
    train, val, test = split_indices(len(y), val_fraction, test_fraction, split_seed)
    return Splits(
        train=TensorDataset(x[train], y[train]),
        val=TensorDataset(x[val], y[val]),
        test=TensorDataset(x[test], y[test]),
        input_shape=list(x.shape[1:]),
        num_classes=int(y.max()) + 1,
    )


def split_dataset(dataset: Dataset, val_fraction: float, test_fraction: float, split_seed: int):
    """One map-style dataset cut like arrays are: train, val and test views of it."""
    parts = split_indices(len(dataset), val_fraction, test_fraction, split_seed)
    return [Subset(dataset, part.tolist()) for part in parts]


def num_classes_of(dataset: Dataset) -> int | None:
    """What a dataset says about its classes, by the conventions torchvision's follow:
    `num_classes`, `classes`, or the labels in `targets` (a TensorDataset's second tensor).
    None when it says nothing."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset) and len(dataset):
        return int(dataset.tensors[1].max()) + 1
    if isinstance(getattr(dataset, "num_classes", None), int):
        return dataset.num_classes
    if getattr(dataset, "classes", None) is not None:
        return len(dataset.classes)
    if getattr(dataset, "targets", None) is not None and len(dataset.targets):
        return int(torch.as_tensor(dataset.targets).max()) + 1
    return None


# ---- keyed randomness for a user's own Dataset --------------------------------------------
# The key of the sample being loaded in this process (loader workers are processes of their
# own, and each loads one sample at a time), set around the dataset's __getitem__.
_sample_key: tuple[int, ...] | None = None


def sample_seed() -> int:
    """A 64-bit seed for the sample being loaded, a function of (run seed, epoch, index): call it
    in a Dataset's __getitem__ or a transform to draw that sample's random choices.

    Outside the framework's loaders (a notebook calling dataset[i]) there is no key: the seed then
    comes from torch's global generator, as an unkeyed transform's would.
    """
    if _sample_key is None:
        return int(torch.randint(0, 2**63 - 1, ()))
    return keyed_seed(*_sample_key)


def sample_generator() -> torch.Generator:
    """A torch.Generator seeded with `sample_seed()`: `torch.rand(..., generator=sample_generator())`."""
    return torch.Generator().manual_seed(sample_seed())


def load_sample(dataset: Dataset, index: int, key: tuple[int, ...]):
    """dataset[index], with `key` in force for sample_seed(); the input as a tensor."""
    global _sample_key
    _sample_key = key
    try:
        x, y = dataset[index]
    finally:
        _sample_key = None
    return (torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x), y


class EvalView(Dataset):
    """A user's dataset read for validation or testing: each sample keyed by its index alone,
    so that a random transform, if the dataset has one, draws the same every time."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed = base, seed

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        return load_sample(self.base, index, (self.seed, EVAL, index))


# ---- training data: keyed shuffle, keyed augmentation --------------------------------------
class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: the epoch's keyed shuffle, from position `start` on.

    Passing the epoch with each index lets the dataset key its augmentation without any state
    of its own, so worker processes need nothing but the pair.

    Under torchrun, rank r of W takes every W-th index of the shuffle from r on; the shuffle is
    first padded with its own beginning to a multiple of W, so that every rank gets as many
    samples (and steps) as the others.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size = rank, world_size

    def order(self) -> torch.Tensor:
        order = torch.randperm(self.n, generator=keyed_generator(self.seed, SHUFFLE, self.epoch))
        if self.world_size > 1:
            padded = shard_size(self.n, self.world_size) * self.world_size
            order = torch.cat([order, order[: padded - self.n]])[self.rank :: self.world_size]
        return order

    def __iter__(self):
        for i in self.order()[self.start :].tolist():
            yield self.epoch, i

    def __len__(self):
        return shard_size(self.n, self.world_size) - self.start


def shard_size(n: int, world_size: int) -> int:
    """How many training samples each rank takes in an epoch."""
    return -(-n // world_size)


class Augmented(Dataset):
    """The training set read at (epoch, index) keys: random shift (zero fill) and Gaussian noise
    drawn from a (seed, epoch, index) key, and a user dataset's own transform keyed the same way.

    Arrays (a TensorDataset) are zero-padded once up front, so a shift is a slice of the padded
    image: the per-sample cost stays a few microseconds, small next to a training step.
    """

    def __init__(self, base: Dataset, seed: int, max_shift: int, noise_std: float):
        self.base, self.seed, self.noise_std, self.max_shift = base, seed, noise_std, max_shift
        self.padded = None
        if isinstance(base, TensorDataset):
            self.x, self.y = base.tensors
            # Shifting needs at least two spatial dims; flat feature vectors are not shifted.
            self.max_shift = max_shift if self.x.dim() >= 3 else 0
            s = self.max_shift
            self.padded = F.pad(self.x, (s, s, s, s)) if s else self.x

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key
        if self.padded is not None:
            x, y = self.x[index], self.y[index]
        else:
            x, y = load_sample(self.base, index, (self.seed, TRANSFORM, epoch, index))
        if self.max_shift and x.dim() >= 3:
            s = self.max_shift
            span = 2 * s + 1
            h = keyed_seed(self.seed, AUGMENT, epoch, index)
            top, left = h % span, (h // span) % span  # offset into the padded image
            height, width = x.shape[-2:]
            padded = self.padded[index] if self.padded is not None else F.pad(x, (s, s, s, s))
            x = padded[..., top : top + height, left : left + width]
        if self.noise_std:
            g = keyed_generator(self.seed, NOISE, epoch, index)
            x = x + self.noise_std * torch.randn(x.shape, generator=g)
        return x, y


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and Python `random` in a loader worker from its torch seed.

    Torch seeds each worker from the loader's generator; the other two libraries would start
    every worker, every epoch, in the same state. Our own augmentation does not use them, but a
    user's transform might. Stop signals are left to the main process (framework/preemption.py).
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

    Its own generator (keyed by seed and epoch) seeds the workers, so creating it never draws
    from the global torch RNG.
    """
    sampler = EpochSampler(len(dataset), seed, epoch, start=start_batch * batch_size, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=keyed_generator(seed, WORKERS, epoch),
        worker_init_fn=seed_worker,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    # A generator of its own: without one, every iterator takes its base seed from the global
    # torch RNG, and validating would shift the training randomness.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_stop_signals,
    )
