"""Build the components from config with `hydra.utils.instantiate`.

Anything importable works through `_target_`: a user's own nn.Module, any torch.optim
optimizer or scheduler. Values the config cannot know (the data's input shape, the number of
classes, the schedule's length) are filled in here, and only for keys the config declares and
leaves null, so a user's class that does not take them never receives them.
"""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from framework import data as data_lib
from framework.config import ConfigError


def build_data(cfg: DictConfig) -> data_lib.Splits:
    x, y = checked_arrays(*_instantiate(cfg.source, "data.source"))
    splits = data_lib.split(x, y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    if len(splits.train) == 0:
        raise ConfigError("data: no training samples left after the val/test split")
    return splits


def checked_arrays(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [N, ...] of finite floats and labels [N] of class indices, or a one-line error
    that says what is wrong, before any training: a NaN input, a fractional or negative label,
    one-hot labels or flat inputs would otherwise train nonsense or crash mid-epoch."""
    try:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"data.source must return two arrays (inputs, labels): {e}") from e
    where = "data.source"
    if len(y) == 0:
        raise ConfigError(f"{where}: the data set is empty")
    if x.dim() < 2:
        raise ConfigError(f"{where}: inputs must have shape [N, features...], got {list(x.shape)}")
    if y.dim() != 1:
        raise ConfigError(
            f"{where}: labels must have shape [N] (class indices), got {list(y.shape)}"
            + (": one-hot labels? give y.argmax(1)" if y.dim() == 2 else "")
        )
    if len(x) != len(y):
        raise ConfigError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            bad = y[y != y.round()][0].item()
            raise ConfigError(f"{where}: labels must be whole class indices, got {bad} (a regression target?)")
    elif y.dtype == torch.bool or not (y.dtype.is_signed or y.dtype == torch.uint8):
        raise ConfigError(f"{where}: labels must be integer class indices, got {y.dtype}")
    y = y.to(torch.int64)
    if y.min() < 0:
        raise ConfigError(f"{where}: labels must be class indices 0, 1, ..., got {y.min().item()}")
    x = x.to(torch.float32)
    bad = ~torch.isfinite(x)
    if bad.any():
        first = bad.flatten(1).any(1).nonzero()[0].item()
        raise ConfigError(f"{where}: {bad.sum().item()} input values are NaN or infinite (the first in sample {first})")
    return x, y


def build_model(cfg: DictConfig, splits: data_lib.Splits) -> torch.nn.Module:
    known = {"input_shape": splits.input_shape, "num_classes": splits.num_classes}
    model = _instantiate(cfg, "model", **_fill_nulls(cfg, known))
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model._target_={cfg._target_} built a {type(model).__name__}, not a torch.nn.Module")
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
