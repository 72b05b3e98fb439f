"""framework.compare looks at every piece of the final state a loop feature adds."""

from __future__ import annotations

import torch

from framework.cli.compare import tensor_differences


def checkpoint(average: float, best: float) -> dict:
    return {
        "epoch": 1,
        "global_step": 10,
        "model_state_dict": {"w": torch.ones(2)},
        "optimizer_state_dict": {"state": {}, "param_groups": []},
        "scheduler_state_dict": {"last_epoch": 10},
        "ema_state_dict": {"w": torch.full((2,), average), "n_averaged": torch.tensor(10)},
        "early_stopping": {"best": best, "bad_validations": 1, "stopped": False},
    }


def test_a_moving_average_or_early_stopping_state_that_differs_is_named():
    assert tensor_differences(checkpoint(0.5, 0.1), checkpoint(0.5, 0.1)) == []
    assert tensor_differences(checkpoint(0.5, 0.1), checkpoint(0.25, 0.1)) == ["ema_state_dict.w"]
    assert tensor_differences(checkpoint(0.5, 0.1), checkpoint(0.5, 0.2)) == ["early_stopping"]


def test_runs_without_the_features_compare_as_before():
    plain = {k: v for k, v in checkpoint(0.5, 0.1).items() if k not in ("ema_state_dict", "early_stopping")}
    assert tensor_differences(plain, {**plain, "ema_state_dict": None, "early_stopping": None}) == []
