"""Arrays kept on the training device: no loader workers, and an exact resume mid-epoch with noise."""

from __future__ import annotations

import pytest
import torch
from helpers import train_in_process

from framework.cli.compare import compare
from framework.config.errors import ConfigError


def test_keeping_data_on_the_device_refuses_loader_workers(tmp_path):
    with pytest.raises(ConfigError) as refused:
        train_in_process(tmp_path / "run", "model=mlp", "logger=none", "data.on_device=true", "data.num_workers=2")
    message = str(refused.value)
    assert "data.on_device=true" in message and "data.num_workers=0" in message and "\n" not in message


def test_resume_mid_epoch_with_noise_and_data_on_the_device_is_exact(tmp_path):
    run = ["model=mlp", "trainer.max_epochs=1", "logger=none", "data.augment.noise_std=0.1", "data.on_device=true"]
    straight = train_in_process(tmp_path / "straight", *run)
    # Where the arrays are kept changes nothing on the CPU.
    assert train_in_process(tmp_path / "plain", *run[:-1])["fingerprint"] == straight["fingerprint"]
    train_in_process(tmp_path / "stopped", *run, "trainer.max_steps=9")
    last = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert last["loader_state"] == {"epoch": 0, "position": 9}
    train_in_process(tmp_path / "stopped", *run, f"resume={tmp_path / 'stopped'}", "trainer.max_steps=null")
    assert compare(tmp_path / "straight", tmp_path / "stopped") == []
