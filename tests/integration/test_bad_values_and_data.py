"""Values and data that would train nonsense are refused before the first step, naming what is wrong."""

from __future__ import annotations

import pytest
from helpers import read_jsonl, train_in_process

from framework.config.errors import ConfigError


def npz(tmp_path, x, y):
    import numpy as np

    path = tmp_path / "data.npz"
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return ["data=npz", f"data.source.path={path}", "model=mlp"]


BAD_VALUES = {
    "negative clip": (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1.0 must be positive"),
    "step_size 0": (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 must be at least 1"),
    "huge seed": ([f"seed={2**70}"], "must be zero or positive and below 2**63"),
}


BAD_DATA = {  # (inputs, labels) -> what the error says
    "fractional labels": (lambda: ([[0.0, 1.0]] * 20, [0.5, 1.0] * 10), "labels must be whole class indices, got 0.5"),
    "negative labels": (lambda: ([[0.0, 1.0]] * 20, [-1, 1] * 10), "labels must be class indices 0, 1, ..., got -1"),
    "one-hot labels": (lambda: ([[0.0, 1.0]] * 20, [[1, 0], [0, 1]] * 10), "one-hot labels? give y.argmax(1)"),
    "flat inputs": (lambda: ([0.0, 1.0] * 10, [0, 1] * 10), "inputs must have shape [N, features...], got [20]"),
    "a NaN input": (lambda: ([[0.0, 1.0]] * 19 + [[float("nan"), 1.0]], [0, 1] * 10),
                    "1 input values are NaN or infinite (the first in sample 19)"),
}  # fmt: skip


def overrides_of(case, tmp_path):
    if case in BAD_VALUES:
        return BAD_VALUES[case]
    make, says = BAD_DATA[case]
    return npz(tmp_path, *make()), says


@pytest.mark.parametrize("case", [*BAD_VALUES, *BAD_DATA])
def test_values_and_data_that_would_train_nonsense_are_refused_before_training(tmp_path, case):
    overrides, says = overrides_of(case, tmp_path)
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as refused:
        train_in_process(run, *overrides, "trainer.max_epochs=1", "logger=none")
    assert says in str(refused.value)
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)
