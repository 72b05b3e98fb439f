"""Classification: cross-entropy over class logits; loss and accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from framework.config.errors import ConfigError
from framework.data import num_classes_of
from framework.tasks.checks import first_bad, float_inputs
from framework.tasks.task import Task, pair


class Classification(Task):
    """Samples (input: a float tensor, label: a class index); the model gives [B, classes] logits."""

    metrics = {"loss": "min", "acc": "max"}

    def loss(self, model, batch):
        x, y = pair(batch, "classification")
        return F.cross_entropy(model(x), y)

    def sums(self, model, batch):
        x, y = pair(batch, "classification")
        logits = model(x)
        return {
            "loss": F.cross_entropy(logits.float(), y, reduction="sum").item(),
            "correct": (logits.argmax(dim=1) == y).sum().item(),
            "count": len(y),
        }

    def metrics_from(self, sums):
        return {"loss": sums["loss"] / sums["count"], "acc": sums["correct"] / sums["count"]}

    def check_arrays(self, inputs, targets):
        """Inputs [N, ...] of finite floats and labels [N] of class indices: a NaN input, a
        fractional or negative label, one-hot labels or flat inputs would otherwise train
        nonsense or crash mid-epoch."""
        x, y = super().check_arrays(inputs, targets)
        where = "data.source"
        if y.dim() != 1:
            raise ConfigError(
                f"{where}: labels must have shape [N] (class indices), got {list(y.shape)}"
                + (": one-hot labels? give y.argmax(1)" if y.dim() == 2 else "")
            )
        if y.is_floating_point():
            bad = first_bad(y != y.round())
            if bad is not None:
                raise ConfigError(
                    f"{where}: labels must be whole class indices, got {y[bad].item()} in sample {bad} "
                    "(a regression target? task=regression)"
                )
        elif y.dtype == torch.bool or not (y.dtype.is_signed or y.dtype == torch.uint8):
            raise ConfigError(f"{where}: labels must be integer class indices, got {y.dtype}")
        y = y.to(torch.int64)
        bad = first_bad(y < 0)
        if bad is not None:
            raise ConfigError(f"{where}: labels must be class indices 0, 1, ..., got {y[bad].item()} in sample {bad}")
        return float_inputs(x, where), y

    def check_sample(self, sample, where):
        x, y = pair(sample, "classification", where)
        label = torch.as_tensor(y)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
            ok = False
        else:
            ok = not label.is_floating_point() and label.dim() == 0
        if not ok:
            raise ConfigError(
                f"{where}: a sample must be (input: a float tensor, label: an integer class index); it is "
                f"({type(x).__name__} {getattr(x, 'dtype', '')} {list(getattr(x, 'shape', []))}, "
                f"{type(y).__name__} {y!r})"
            )

    def model_facts(self, splits):
        x, _ = pair(splits.first, "classification")
        return {"input_shape": list(x.shape), "num_classes": num_classes_of(splits.whole)}
