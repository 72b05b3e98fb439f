"""Token data (data=text) with what makes no sense for token ids: refused in one line before training."""

from __future__ import annotations

import pytest
from helpers import train_in_process

from framework.config.errors import ConfigError

SHORT = ["trainer.max_steps=1", "logger=none", "checkpoint=off", "data.val_fraction=0.01", "data.test_fraction=0.01"]


def test_noise_on_token_ids_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.augment\.noise_std adds float noise .* torch\.int64 inputs"):
        train_in_process(tmp_path / "run", "recipe=char_lm", "data.augment.noise_std=0.1", *SHORT)
    assert not (tmp_path / "run/metrics.jsonl").exists()  # no step was trained
