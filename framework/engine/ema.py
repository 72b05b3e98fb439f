"""An exponential moving average of the weights (`trainer.ema`), kept by PyTorch's own
`torch.optim.swa_utils.AveragedModel` and updated after every optimizer step.

Its checkpoint entry, `ema_state_dict`, holds the model's own keys (so `framework.ckpt export
--weights ema` writes a file that loads into the plain model) plus `n_averaged`, the number of
updates so far: the first update copies the weights, every later one moves the average by
`1 - decay` towards them.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

# The count of updates, stored beside the model's keys in `ema_state_dict`.
N_AVERAGED = "n_averaged"


def build_ema(model: torch.nn.Module, decay: float | None) -> AveragedModel | None:
    """The average of `model` (the plain module, not a DDP or compiled wrapper); None: EMA off.
    Buffers (batch norm's running statistics) are averaged too, so the average is a model that
    evaluates on its own."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def without_count(saved: dict) -> dict:
    """An `ema_state_dict` as the plain model's state dict (to load into the average, or to export)."""
    return {k: v for k, v in saved.items() if k != N_AVERAGED}
