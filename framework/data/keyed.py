"""Keyed randomness: every random choice in the data path is a function of a key (seed, tag, epoch,
index), never of a stream's position. Each use of the seed gets its own tag."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

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
    """dataset[index], with `key` in force for sample_seed(); a pair's input as a tensor (a dict
    sample as it is)."""
    global _sample_key
    _sample_key = key
    try:
        sample = dataset[index]
    finally:
        _sample_key = None
    if isinstance(sample, (tuple, list)) and len(sample) == 2:
        x, y = sample
        return (torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x), y
    return sample
