"""Build the components from config with `hydra.utils.instantiate`.

Anything importable works through `_target_`: a user's own task, nn.Module, any torch.optim
optimizer or scheduler. Values the config cannot know (what the task reads from the data: the
input shape, the number of classes, the vocabulary; the schedule's length) are filled in here,
and only for keys the config declares and leaves null, so a user's class that does not take
them never receives them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from framework import data as data_lib
from framework.config.errors import ConfigError
from framework.config.schema import FROM_DATA
from framework.tasks.task import check_declared, with_defaults


def build_task(cfg: DictConfig):
    """The task `task._target_` names (framework/tasks/task.py), checked for what the loop calls."""
    task = _instantiate(cfg, "task")
    check_declared(task, cfg._target_)
    return with_defaults(task)


def build_data(cfg: DictConfig, seed: int, task) -> data_lib.Splits:
    """What `data.source._target_` returns, split into train, val and test: arrays (inputs,
    targets), one map-style Dataset (split by data.split_seed like arrays), or a dict of
    `train`, `val` and optionally `test` datasets (used as they are). The task checks them."""
    made = _instantiate(cfg.source, "data.source")
    if isinstance(made, Mapping):
        splits = given_datasets(made, seed)
    elif isinstance(made, Dataset):
        parts = data_lib.split_dataset(
            checked_dataset(made, "data.source"), cfg.val_fraction, cfg.test_fraction, cfg.split_seed
        )
        splits = datasets_split(*parts, seed=seed, whole=made)
    else:
        if not isinstance(made, (tuple, list)) or len(made) != 2:
            raise ConfigError(
                "data.source must return (inputs, targets) arrays, a map-style torch Dataset, or a dict of "
                f"'train', 'val' and optionally 'test' datasets; got {type(made).__name__}"
            )
        splits = data_lib.split(*task.check_arrays(*made), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    if len(splits.train) == 0:
        raise ConfigError("data: no training samples left after the val/test split")
    if not isinstance(splits.train, torch.utils.data.TensorDataset):
        task.check_sample(splits.first, "data.source: the first training sample")
    return splits


def given_datasets(made: Mapping, seed: int) -> data_lib.Splits:
    unknown = set(made) - {"train", "val", "test"}
    if unknown or not {"train", "val"} <= set(made):
        raise ConfigError(
            f"data.source returned a dict with keys {sorted(made)}: it must have 'train' and 'val', and may have 'test'"
        )
    parts = {name: checked_dataset(made[name], f"data.source['{name}']") for name in made}
    empty = torch.utils.data.TensorDataset(torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    return datasets_split(parts["train"], parts["val"], parts.get("test", empty), seed=seed, whole=parts["train"])


def checked_dataset(dataset, where: str) -> Dataset:
    if isinstance(dataset, torch.utils.data.IterableDataset) or not isinstance(dataset, Dataset):
        raise ConfigError(
            f"{where}: a {type(dataset).__name__} is not a map-style torch Dataset (__len__ and __getitem__)"
        )
    try:
        len(dataset)
    except TypeError as e:
        raise ConfigError(f"{where}: {type(dataset).__name__} has no __len__: {e}") from e
    return dataset


def datasets_split(train: Dataset, val: Dataset, test: Dataset, seed: int, whole: Dataset) -> data_lib.Splits:
    """Datasets as the loop uses them: validation and test samples keyed by their index (the
    training samples get their (epoch, index) key from data.Augmented). The first training
    sample is loaded as evaluation loads one, keyed by its index."""
    if len(train) == 0:
        raise ConfigError("data: no training samples left after the val/test split")
    return data_lib.Splits(
        train=train,
        val=data_lib.EvalView(val, seed),
        test=data_lib.EvalView(test, seed),
        first=data_lib.load_sample(train, 0, (seed, data_lib.EVAL, 0)),
        whole=whole,
    )


def build_model(cfg: DictConfig, facts: dict) -> torch.nn.Module:
    """The model `cfg` (the model section) names, with the keys it leaves null filled in from
    what the task read from the data (`facts`: input_shape, num_classes, vocab_size, ...), in
    `cfg` too: the config a run records (checkpoint, TensorBoard, export) then holds the values
    in force, and rebuilds the model on its own."""
    if "num_classes" in facts and facts["num_classes"] is None and "num_classes" in cfg and cfg.num_classes is None:
        raise ConfigError(
            "model.num_classes: the dataset does not say how many classes it has (no num_classes, classes or "
            "targets attribute); set model.num_classes=N"
        )
    filled = _fill_nulls(cfg, facts)
    unfilled = [key for key in FROM_DATA if key in cfg and cfg[key] is None and key not in filled]
    if unfilled:
        raise ConfigError(
            f"model.{unfilled[0]} is null (filled in from the data), but the task's model_facts does not give "
            f"it: set model.{unfilled[0]}=..., or return it from the task's model_facts"
        )
    model = _instantiate(cfg, "model", **filled)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model._target_={cfg._target_} built a {type(model).__name__}, not a torch.nn.Module")
    for key, value in filled.items():
        cfg[key] = value
    return model


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    make = _instantiate(cfg, "optimizer")
    return _call(make, "optimizer", model.parameters())


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    make = _instantiate(cfg, "scheduler", **_fill_nulls(cfg, {"T_max": total_steps, "total_steps": total_steps}))
    return _call(make, "scheduler", optimizer)


def _fill_nulls(cfg: DictConfig, known: dict) -> dict:
    return {k: v for k, v in known.items() if k in cfg and cfg[k] is None}


def _instantiate(cfg: DictConfig, key: str, **kwargs):
    # Convert first: instantiate on a typed (structured) node would hand the target omegaconf
    # containers; plain lists and dicts are what a user's class expects.
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        return instantiate(plain, **kwargs)
    except InstantiationException as e:
        raise ConfigError(_explain(key, plain.get("_target_"), e)) from e


def _call(make, key: str, *args):
    try:
        return make(*args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from e


def _explain(key: str, target, e: InstantiationException) -> str:
    # Hydra wraps the real error (its __cause__); say which key and what went wrong, briefly.
    cause = e.__cause__
    if cause is None:
        return f"{key}: {' '.join(str(e).split())}"
    if "Error locating target" in str(e):
        return f"{key}._target_={target}: cannot import it ({cause})"
    return f"{key} ({target}): {type(cause).__name__}: {cause}"
