"""In-memory data a batch at a time: one call of the dataset per batch, the same samples
whatever batch they fall in, the same batches with workers and with the arrays kept on the
training device (training with them: tests/integration/test_batch_data.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from framework import data

SEED = 7


def digits_train():
    x, y = data.load_digits()
    return data.split(x, y, 0.15, 0.15, split_seed=0).train


def reference_sample(arrays: TensorDataset, epoch: int, index: int, max_shift: int, noise_std: float):
    """Sample `index` of `epoch` by the definition, one sample at a time: the window of the
    zero-padded image at keyed_seed(seed, AUGMENT, epoch, index), plus noise keyed by (seed,
    epoch, index) alone."""
    x = arrays.tensors[0][index]
    h = data.keyed_seed(SEED, data.AUGMENT, epoch, index)
    span = 2 * max_shift + 1
    top, left = h % span, (h // span) % span
    s = max_shift
    x = F.pad(x, (s, s, s, s))[..., top : top + 8, left : left + 8]
    noise = data.keyed_normal((SEED, data.NOISE, epoch), torch.tensor([index]), x.numel())[0]
    return x + noise.view(x.shape) * noise_std


def test_a_sample_is_the_same_in_any_batch():
    arrays = digits_train()
    train = data.Augmented(arrays, SEED, max_shift=1, noise_std=0.1)
    shuffled = torch.randperm(len(arrays), generator=torch.Generator().manual_seed(0))
    for epoch, index in [(0, shuffled[:64]), (0, shuffled[:64].flip(0)), (0, shuffled[60:77]), (3, shuffled[:5])]:
        x, y = train.__getitems__((epoch, index))
        expected = torch.stack([reference_sample(arrays, epoch, i, 1, 0.1) for i in index.tolist()])
        assert torch.equal(x, expected)
        assert torch.equal(y, arrays.tensors[1][index])
    x, _ = train[(3, int(shuffled[2]))]  # one sample by its key is the batch of one
    assert torch.equal(x, reference_sample(arrays, 3, int(shuffled[2]), 1, 0.1))


def test_keyed_seeds_give_keyed_seeds_bits_for_a_batch():
    index = torch.tensor([0, 1, 5, 1256, 2**40 + 3, 2**62 + 11])
    for prefix in [(), (SEED,), (SEED, data.AUGMENT, 4), (2**63 - 1, data.NOISE, 2**31)]:
        got = data.keyed_seeds(prefix, index)
        expected = [data.keyed_seed(*prefix, i) for i in index.tolist()]
        assert [h % 2**64 for h in got.tolist()] == expected
        assert data.unsigned_remainder(got, 9).tolist() == [h % 9 for h in expected]


def test_keyed_noise_is_box_muller_of_the_elements_key():
    index = torch.tensor([3, 40])
    noise = data.keyed_normal((SEED, data.NOISE, 2), index, 5)
    for row, i in enumerate(index.tolist()):
        for j in range(5):
            h = data.keyed_seed(SEED, data.NOISE, 2, i, j // 2)
            u1, u2 = ((h >> 40) + 1) / 2**24, ((h >> 16) & 0xFFFFFF) / 2**24
            trig = math.cos if j % 2 == 0 else math.sin
            expected = math.sqrt(-2 * math.log(u1)) * trig(2 * math.pi * u2)
            assert noise[row, j].item() == pytest.approx(expected, abs=1e-5)
    many = data.keyed_normal((SEED, data.NOISE, 0), torch.arange(1000), 64)
    assert abs(many.mean().item()) < 0.01 and abs(many.std().item() - 1) < 0.01


class Counted(data.Augmented):
    """Augmented that counts how it is called."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = {"batch": 0, "sample": 0}

    def __getitem__(self, key):
        self.calls["sample"] += 1
        return super().__getitem__(key)

    def __getitems__(self, key):
        self.calls["batch"] += 1
        return super().__getitems__(key)


class CountedArrays(TensorDataset):
    samples_read = 0

    def __getitem__(self, index):
        CountedArrays.samples_read += 1
        return super().__getitem__(index)


def test_arrays_are_read_with_one_call_per_batch():
    x, y = digits_train().tensors
    train = Counted(CountedArrays(x, y), SEED, max_shift=1, noise_std=0.1)
    loaded = list(data.train_loader(train, 64, 0, seed=SEED, epoch=0))
    assert len(loaded) == 20 and train.calls == {"batch": 20, "sample": 0}
    evaluated = list(data.eval_loader(CountedArrays(x, y), 64, 0))
    assert len(evaluated) == 20 and torch.equal(evaluated[1][0], x[64:128]) and torch.equal(evaluated[-1][1], y[-41:])
    assert CountedArrays.samples_read == 0


def test_a_users_dataset_is_augmented_like_the_same_arrays():
    arrays = digits_train()
    as_dataset = Subset(arrays, range(len(arrays)))  # read a sample at a time, through load_sample
    loaded = [
        list(data.train_loader(data.Augmented(d, SEED, max_shift=1, noise_std=0.1), 64, 0, seed=SEED, epoch=2))
        for d in (arrays, as_dataset)
    ]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*loaded))


def test_arrays_kept_on_the_device_give_the_same_batches():
    arrays = digits_train()
    cpu = torch.device("cpu")  # what this machine has: on a GPU the code path is the same
    kept = data.Augmented(arrays, SEED, 1, 0.1, device=cpu)
    plain = data.Augmented(arrays, SEED, 1, 0.1)
    a, b = (list(data.train_loader(t, 64, 0, seed=SEED, epoch=1, start_batch=3)) for t in (kept, plain))
    assert len(a) == 17 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert data.resident_device(True, cpu, arrays) == cpu and data.resident_device(False, cpu, arrays) is None
