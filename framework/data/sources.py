"""Where data comes from: the built-in sources (digits, synthetic, .npz, diabetes) and the seeded split."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from framework.data.keyed import SPLIT, keyed_generator


# ---- sources: each returns (x float32 [N, ...], y: class indices int64 [N] or float targets [N, ...]) ----
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


def load_diabetes(standardize: bool):
    """scikit-learn's diabetes regression set: 442 patients, 10 baseline measurements (age, sex,
    body mass index, blood pressure, six blood serum values) -> a measure of disease
    progression one year later. Returns (x float32 [442, 10], y float32 [442, 1]).

    The raw values, read from the files inside the installed scikit-learn (as load_digits, without
    importing it). With `standardize`, inputs and target are z-scored with the mean and standard
    deviation of all 442 samples (the split's val and test ones too): the metrics (mse, mae) are
    then in standard units of the target, and r2 is unchanged.
    """
    spec = importlib.util.find_spec("sklearn")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data" if spec else None
    files = [folder / name for name in ("diabetes_data_raw.csv.gz", "diabetes_target.csv.gz")] if folder else []
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError("data=diabetes needs scikit-learn's diabetes_*.csv.gz: pip install scikit-learn")
    x = torch.from_numpy(np.loadtxt(files[0], dtype=np.float64))
    y = torch.from_numpy(np.loadtxt(files[1], dtype=np.float64)).reshape(-1, 1)
    if standardize:
        x, y = ((t - t.mean(0)) / t.std(0) for t in (x, y))
    return x.to(torch.float32), y.to(torch.float32)


# ---- split -------------------------------------------------------------------------------
@dataclass
class Splits:
    """The three parts a run uses, the first training sample (keyed, as it loads for evaluation)
    and the whole data set the task reads facts from (its classes, its vocabulary)."""

    train: Dataset
    val: Dataset
    test: Dataset
    first: tuple
    whole: Dataset


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
        first=(x[train[0]], y[train[0]]) if len(train) else (),
        whole=TensorDataset(x, y),
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
