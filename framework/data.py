"""Data: sources that give arrays or datasets, a seeded split, keyed augmentation and the loaders.

Randomness in the data path is keyed, not streamed. The shuffle of epoch e is drawn from a
generator seeded with (seed, e); the augmentation of sample i in epoch e is a function of
(seed, e, i). So the data seen at any step is a pure function of the seed, the epoch and the
position in it: nothing to carry in a checkpoint but two counters, nothing taken from the
global RNG, and the same batches whichever worker process loads them.

In-memory arrays (a TensorDataset: the built-in sources, a source returning (x, y)) are read a
batch at a time: the loader hands the dataset a whole batch of indices, cut with one indexing
operation and augmented with tensor operations over the batch (keyed_seeds: the hash of every
sample's key at once), optionally on the training device. The value of a sample does not depend
on the batch it falls in.

A user's own map-style Dataset gets the same guarantee for its random transforms when it draws
them from `sample_generator()` (or `sample_seed()`): keyed by (seed, epoch, index) of the sample
being loaded. Drawn from the global streams instead, they depend on the number of workers and
break exact resume (the README says how).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset, default_collate

from framework.config import ConfigError
from framework.preemption import ignore_stop_signals

# Each use of the seed gets its own tag, so that the streams never coincide.
SPLIT, SHUFFLE, AUGMENT, NOISE, WORKERS, TRANSFORM, EVAL = 1, 2, 3, 4, 5, 6, 7


_MASK = 2**64 - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def keyed_seed(*key: int) -> int:
    """A 64-bit seed from a tuple of ints (splitmix64 folded over the key): cheap enough to
    call once per sample, and keys that differ in any place give unrelated seeds."""
    h = 0
    for k in key:
        h = (h ^ int(k)) & _MASK
        h = (h + _GOLDEN) & _MASK
        h = ((h ^ (h >> 30)) * _MIX1) & _MASK
        h = ((h ^ (h >> 27)) * _MIX2) & _MASK
        h ^= h >> 31
    return h


def keyed_generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(keyed_seed(*key))


# ---- keyed_seed for a whole batch of keys, in tensor operations ----------------------------
# torch's int64 addition and multiplication wrap around as unsigned 64-bit arithmetic does (two's
# complement), so the same folding gives the same 64 bits, held as int64.
def _as_int64(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def _shift_right(h: torch.Tensor, bits: int) -> torch.Tensor:
    # Logical, as on unsigned values: torch's >> on int64 copies the sign bit in.
    return (h >> bits) & ((1 << (64 - bits)) - 1)


def keyed_seeds(prefix: tuple[int, ...], *parts: torch.Tensor) -> torch.Tensor:
    """keyed_seed(*prefix, *parts) for many keys at once, as int64 holding the same 64 bits.

    `parts` are non-negative int64 tensors that broadcast together (a sample index per row, an
    element counter per column): the result has their broadcast shape, on their device.
    """
    h = _as_int64(keyed_seed(*prefix))
    for part in parts:
        h = (part ^ h) + _as_int64(_GOLDEN)
        h = (h ^ _shift_right(h, 30)) * _as_int64(_MIX1)
        h = (h ^ _shift_right(h, 27)) * _as_int64(_MIX2)
        h = h ^ _shift_right(h, 31)
    return h


def unsigned_remainder(h: torch.Tensor, divisor: int) -> torch.Tensor:
    """The 64 unsigned bits held in int64 `h`, modulo `divisor` (a negative h stands for h + 2**64)."""
    return (h % divisor + (h < 0) * (2**64 % divisor)) % divisor


def keyed_normal(prefix: tuple[int, ...], index: torch.Tensor, size: int) -> torch.Tensor:
    """Standard normal values [len(index), size]: row b is a pure function of (prefix, index[b]).

    Values 2j and 2j+1 of a row come from one hash, keyed_seed(*prefix, index, j): two 24-bit
    uniforms, turned into two normals by Box-Muller. Each value is computed elementwise from its
    own hash, so it does not depend on the other rows of the batch.
    """
    pairs = torch.arange((size + 1) // 2, device=index.device)
    h = keyed_seeds(prefix, index[:, None], pairs)
    u1 = (_shift_right(h, 40) + 1).to(torch.float32) * 2**-24  # (0, 1]: its log is finite
    u2 = ((h >> 16) & 0xFFFFFF).to(torch.float32) * 2**-24  # [0, 1)
    radius = (torch.log(u1) * -2.0).sqrt()
    angle = u2 * (2 * math.pi)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(1)[:, :size]


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


class Augmented(Dataset):
    """The training set read by batch keys (epoch, index tensor): random shift (zero fill) and
    Gaussian noise keyed by (seed, epoch, index) of each sample, and a user dataset's own
    transform keyed the same way.

    Arrays (a TensorDataset) are cut a batch at a time, on `device` when given (moved there once),
    and zero-padded once up front: a batch's shifts are windows of the padded images, gathered in
    one indexing operation. A user's dataset is read a sample at a time (load_sample), and the
    batch is then augmented the same way.
    """

    def __init__(self, base: Dataset, seed: int, max_shift: int, noise_std: float, device: torch.device | None = None):
        self.base, self.seed, self.max_shift, self.noise_std = base, seed, max_shift, noise_std
        self.x = self.y = self.padded = self.window = None
        self.device = torch.device("cpu")  # where the batches' indices go
        self.starts_epoch, self.starts = None, None
        if isinstance(base, TensorDataset):
            self.x, self.y = (t.to(device) for t in base.tensors) if device else base.tensors
            self.device = self.x.device
            s = self.max_shift
            if s and shifts(self.x):
                self.padded = F.pad(self.x, (s, s, s, s))
                self.window = window_offsets(self.padded.shape, self.x.shape, self.device)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        """One sample, by its key (epoch, index): the batch of one."""
        epoch, index = key
        x, y = self.__getitems__((epoch, torch.tensor([index], device=self.device)))
        return x[0], y[0]

    def __getitems__(self, key: tuple[int, torch.Tensor]):
        """The samples `index` of epoch `epoch`, augmented, as one batch (x, y): what the
        loader's fetcher calls with each key EpochBatches yields."""
        epoch, index = key
        if self.x is None:
            x, y = self.loaded(epoch, index)
            if self.max_shift and shifts(x):
                s = self.max_shift
                padded = F.pad(x, (s, s, s, s))
                starts = window_starts(padded.shape, torch.arange(len(x)), *self.offsets(epoch, index))
                x = windows(padded, starts, window_offsets(padded.shape, x.shape, x.device), x.shape)
        else:
            y = self.y.index_select(0, index)
            if self.padded is None:
                x = self.x.index_select(0, index)
            else:
                starts = self.window_starts_in(epoch).index_select(0, index)
                x = windows(self.padded, starts, self.window, self.x.shape)
        if self.noise_std:
            noise = keyed_normal((self.seed, NOISE, epoch), index, math.prod(x.shape[1:]))
            x = x + noise.view(x.shape) * self.noise_std
        return x, y

    def loaded(self, epoch: int, index: torch.Tensor):
        """A user's samples, each loaded with its own key in force (sample_generator), collated."""
        return default_collate([load_sample(self.base, i, (self.seed, TRANSFORM, epoch, i)) for i in index.tolist()])

    def offsets(self, epoch: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's window in its padded image, (top, left), from keyed_seed(seed, AUGMENT,
        epoch, index) h: top = h mod span, left = (h // span) mod span."""
        span = 2 * self.max_shift + 1
        h = unsigned_remainder(keyed_seeds((self.seed, AUGMENT, epoch), index), span * span)
        return h % span, h // span

    def window_starts_in(self, epoch: int) -> torch.Tensor:
        """Where every sample's window of `epoch` starts in the flat padded arrays, computed at
        the epoch's first batch: one pass over all samples costs about what one batch's does (a
        few dozen small tensor operations), and each batch then takes its rows."""
        if self.starts_epoch != epoch:
            every = torch.arange(len(self.x), device=self.device)
            self.starts = window_starts(self.padded.shape, every, *self.offsets(epoch, every))
            self.starts_epoch = epoch
        return self.starts


def shifts(batch: torch.Tensor) -> bool:
    # Shifting needs at least two spatial dims: flat feature vectors [N, F] are not shifted.
    return batch.dim() >= 3


# A shift is a window of the zero-padded image. For padded images [N, ..., H + 2s, W + 2s]
# every window is the same set of flat offsets from its start, so a whole batch of windows is
# one index_select from the flat array: start of each sample's window + the window's offsets.
def window_offsets(padded_shape, shape, device: torch.device) -> torch.Tensor:
    """The flat offsets of the window at (0, 0) of a padded sample, any dims before H, W included."""
    height, width = shape[-2:]
    padded_width, plane = padded_shape[-1], padded_shape[-2] * padded_shape[-1]
    planes = torch.arange(0, math.prod(padded_shape[1:]), plane, device=device)[:, None, None]
    rows = torch.arange(height, device=device)[:, None] * padded_width
    return (planes + rows + torch.arange(width, device=device)).flatten()


def window_starts(padded_shape, samples: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """The flat offset in the padded array where the window of padded[samples[b]] at (top[b],
    left[b]) starts."""
    return samples * math.prod(padded_shape[1:]) + top * padded_shape[-1] + left


def windows(padded: torch.Tensor, starts: torch.Tensor, offsets: torch.Tensor, shape) -> torch.Tensor:
    """The windows that begin at `starts`, [len(starts), ...shape[1:]]: `shape` is the unpadded
    images' [N, ..., H, W]."""
    picked = padded.reshape(-1).index_select(0, (starts[:, None] + offsets).flatten())
    return picked.view(len(starts), *shape[1:])


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
