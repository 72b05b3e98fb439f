"""The data path: keyed shuffle and augmentation, the split, the sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from framework import data
from framework.tasks.classification import Classification


def digits_train():
    x, y = data.load_digits()
    return data.split(x, y, 0.15, 0.15, split_seed=0).train


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_digits_are_the_real_1797_images():
    x, y = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert x.min() == 0 and x.max() == 1 and set(y.tolist()) == set(range(10))


def test_an_epochs_batches_depend_on_seed_and_epoch_only():
    train = data.Augmented(digits_train(), seed=0, max_shift=1, noise_std=0.1)
    first = batches(data.train_loader(train, 64, 0, seed=0, epoch=3))
    again = batches(data.train_loader(train, 64, 0, seed=0, epoch=3))
    other_epoch = batches(data.train_loader(train, 64, 0, seed=0, epoch=4))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][1], other_epoch[0][1])  # reshuffled


def test_global_rng_is_neither_read_nor_moved_by_the_data_path():
    train = data.Augmented(digits_train(), seed=0, max_shift=1, noise_std=0.1)
    torch.manual_seed(1)
    untouched = torch.rand(1)
    torch.manual_seed(1)
    a = batches(data.train_loader(train, 64, 2, seed=0, epoch=0))
    list(data.eval_loader(TensorDataset(train.x, train.y), 64, 2))
    assert torch.equal(torch.rand(1), untouched)  # creating and running loaders drew nothing
    torch.manual_seed(2)
    b = batches(data.train_loader(train, 64, 0, seed=0, epoch=0))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))  # nor read anything


def test_worker_processes_load_the_same_batches():
    train = data.Augmented(digits_train(), seed=0, max_shift=1, noise_std=0.1)
    single = batches(data.train_loader(train, 64, 0, seed=0, epoch=1))
    workers = batches(data.train_loader(train, 64, 2, seed=0, epoch=1))
    assert len(single) == len(workers) == 20
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(single, workers))
    resumed = batches(data.train_loader(train, 64, 2, seed=0, epoch=1, start_batch=7))
    assert len(resumed) == 13 and all(torch.equal(a[0], b[0]) for a, b in zip(single[7:], resumed))
    arrays = TensorDataset(train.x, train.y)
    in_order = [batches(data.eval_loader(arrays, 100, workers)) for workers in (0, 2)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*in_order))


def test_resuming_inside_an_epoch_gives_the_remaining_batches():
    train = data.Augmented(digits_train(), seed=0, max_shift=1, noise_std=0.0)
    whole = batches(data.train_loader(train, 64, 0, seed=0, epoch=2))
    rest = batches(data.train_loader(train, 64, 0, seed=0, epoch=2, start_batch=7))
    assert len(rest) == len(whole) - 7
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole[7:], rest))


def test_shift_moves_the_image_and_fills_with_zeros():
    image = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    aug = data.Augmented(TensorDataset(image, torch.zeros(1)), seed=0, max_shift=1, noise_std=0.0)
    seen = {tuple(aug[(epoch, 0)][0].flatten().tolist()) for epoch in range(60)}
    assert len(seen) == 9  # every (dy, dx) in {-1, 0, 1}^2 turns up
    for flat in seen:
        shifted = torch.tensor(flat).reshape(3, 3)
        kept = shifted[shifted != 0]
        assert 4 <= len(kept) <= 9 and set(kept.tolist()) <= set(range(1, 10))
    assert (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) in seen


def test_flat_features_are_not_shifted():
    x = torch.randn(5, 4)
    aug = data.Augmented(TensorDataset(x, torch.zeros(5)), seed=0, max_shift=2, noise_std=0.0)
    assert torch.equal(aug[(0, 3)][0], x[3])


def test_npz_source_names_the_bad_key(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 2)), y=np.zeros(3))
    # Whole float labels (as numpy often stores them) become class indices; build_data checks them.
    x, y = Classification().check_arrays(*data.load_npz(str(tmp_path / "a.npz")))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    with pytest.raises(KeyError, match="data.source.y_key"):
        data.load_npz(str(tmp_path / "a.npz"), y_key="labels")


def test_synthetic_sizes_follow_the_config():
    x, y = data.make_synthetic(50, [3, 4, 5], 7, noise=1.0, generator_seed=0)
    assert x.shape == (50, 3, 4, 5) and int(y.max()) < 7
    x2, _ = data.make_synthetic(50, [3, 4, 5], 7, noise=1.0, generator_seed=0)
    assert torch.equal(x, x2)
