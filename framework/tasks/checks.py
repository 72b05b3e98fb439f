"""Checks the built-in tasks share."""

from __future__ import annotations

import torch

from framework.config.errors import ConfigError


def first_bad(bad: torch.Tensor) -> int | None:
    """The index of the first sample with a True anywhere in `bad` [N, ...]; None when none has."""
    rows = bad.reshape(len(bad), -1).any(1) if bad.dim() else bad.reshape(1)
    found = rows.nonzero()
    return int(found[0]) if len(found) else None


def float_inputs(x: torch.Tensor, where: str) -> torch.Tensor:
    """Inputs [N, features...] as finite float32 values."""
    if x.dim() < 2:
        raise ConfigError(f"{where}: inputs must have shape [N, features...], got {list(x.shape)}")
    x = x.to(torch.float32)
    bad = ~torch.isfinite(x)
    first = first_bad(bad)
    if first is not None:
        raise ConfigError(f"{where}: {bad.sum().item()} input values are NaN or infinite (the first in sample {first})")
    return x
