"""Keyed augmentation of in-memory images, a batch at a time: random shifts and noise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset, default_collate

from framework.data.keyed import AUGMENT, NOISE, TRANSFORM, keyed_normal, keyed_seeds, load_sample, unsigned_remainder


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
            batch = self.loaded(epoch, index)
            if not (self.max_shift or self.noise_std):
                return batch  # as the dataset gives it: a pair or a dict
            x, y = batch
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
