"""What a run's checkpoint settings write."""

from __future__ import annotations

import torch
from helpers import train_in_process

from framework.checkpoint import io


def test_a_run_writes_model_only_periodic_files_beside_a_full_last(tmp_path):
    run = tmp_path / "run"
    train_in_process(
        run,
        "model=mlp",
        "trainer.max_epochs=2",
        "logger=none",
        "checkpoint.every_n_epochs=1",
        "checkpoint.model_only=true",
        "checkpoint.monitor=null",
    )
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    periodic = torch.load(folder / "epoch_0002.pt", weights_only=True)
    last = torch.load(folder / "last.pt", weights_only=True)
    assert set(periodic) == set(io.MODEL_KEYS) and periodic["meta"]["kind"] == "model"
    assert last["meta"]["kind"] == "full" and set(io.FULL_KEYS) <= set(last)
    assert all(torch.equal(periodic["model_state_dict"][k], v) for k, v in last["model_state_dict"].items())
    assert "model:" in periodic["config"] and periodic["meta"]["seed"] == 0
