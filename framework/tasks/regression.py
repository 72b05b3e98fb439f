"""Regression: mean squared error on float targets of any shape; mse, mae and r2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from framework.config.errors import ConfigError
from framework.tasks.checks import first_bad, float_inputs
from framework.tasks.task import Task, pair


class Regression(Task):
    """Samples (input: a float tensor, target: float values of any shape); the model's output
    has as many values per sample as the target (model.num_classes is filled with that number).
    r2 is the mean over target values of 1 - SSE/SST, as scikit-learn's r2_score averages outputs."""

    metrics = {"mse": "min", "mae": "min", "r2": "max"}

    def loss(self, model, batch):
        x, y = pair(batch, "regression")
        return F.mse_loss(prediction(model, x, y), y)

    def sums(self, model, batch):
        x, y = pair(batch, "regression")
        error = (prediction(model, x, y).double() - y.double()).reshape(len(y), -1)
        target = y.double().reshape(len(y), -1)
        return {
            "squared": error.square().sum(0).cpu(),  # per target value: r2 needs each one's
            "absolute": error.abs().sum().item(),
            "target": target.sum(0).cpu(),
            "target_squared": target.square().sum(0).cpu(),
            "count": len(y),
        }

    def metrics_from(self, sums):
        n, values = sums["count"], sums["squared"].numel()
        total = sums["target_squared"] - sums["target"].square() / n  # each target value's SST
        r2 = (1 - sums["squared"] / total).mean().item() if bool((total > 0).all()) else math.nan
        return {"mse": sums["squared"].sum().item() / (n * values), "mae": sums["absolute"] / (n * values), "r2": r2}

    def check_arrays(self, inputs, targets):
        x, y = super().check_arrays(inputs, targets)
        where = "data.source"
        if y.dtype == torch.bool or not (y.is_floating_point() or y.dtype.is_signed or y.dtype == torch.uint8):
            raise ConfigError(f"{where}: regression targets must be numbers, got {y.dtype}")
        y = y.to(torch.float32)
        bad = first_bad(~torch.isfinite(y))
        if bad is not None:
            raise ConfigError(f"{where}: regression targets must be finite, sample {bad} has {y[bad].tolist()}")
        return float_inputs(x, where), y

    def check_sample(self, sample, where):
        x, y = pair(sample, "regression", where)
        target = torch.as_tensor(y)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or not target.is_floating_point():
            raise ConfigError(
                f"{where}: a sample must be (input: a float tensor, target: float values); it is "
                f"({type(x).__name__} {getattr(x, 'dtype', '')}, {type(y).__name__} {target.dtype})"
            )
        if not bool(torch.isfinite(target).all()):
            raise ConfigError(f"{where}: the regression target is not finite: {target.tolist()}")

    def model_facts(self, splits):
        x, y = pair(splits.first, "regression")
        return {"input_shape": list(x.shape), "num_classes": max(1, torch.as_tensor(y).numel())}


def prediction(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's output in the target's shape ([B, 1] for targets [B], say)."""
    out = model(x)
    if out.shape != y.shape:
        if out.numel() != y.numel():
            raise ValueError(f"the model gives {list(out.shape)} for targets {list(y.shape)}: set model.num_classes")
        out = out.reshape(y.shape)
    return out
