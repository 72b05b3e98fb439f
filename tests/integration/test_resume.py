"""Exact resume, in process (tests/cli/test_resume.py resumes in new processes).

One configuration exercises every source of randomness: a user model that draws from torch
(dropout), NumPy and Python's `random` in its forward pass; shifted digits; shuffling; two
loader workers; SGD with momentum and a cosine schedule whose length comes from max_epochs.
A run stopped and resumed must end with the same bits as one that never stopped. The teeth
tests skip restoring one piece at a time and require the comparison to fail.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import read_jsonl, read_summary, train_in_process

from framework.checkpoint import CheckpointError
from framework.cli.compare import compare as differences
from framework.cli.compare import read_history

EXACT = [
    "model=noisy",
    "optimizer=sgd",
    "scheduler=cosine",
    "data.num_workers=2",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "logger=none",
]  # 20 steps an epoch: 60 in all


# A resumed run keeps its config's trainer.max_steps, the stopping point the first command set:
# to train past it, the resuming command says so.
GO_ON = "trainer.max_steps=null"


def train(run_dir: Path, *overrides: str) -> dict:
    return train_in_process(run_dir, *EXACT, *overrides, test_conf=True)


@pytest.fixture
def straight(trained_run):
    """The run straight through (in process, shared by the whole test session: copy it to change it)."""
    return trained_run(*EXACT, test_conf=True)


@pytest.fixture
def stopped_mid(trained_run):
    """The run stopped mid-epoch (step 29: epoch 1, batch 9), shared the same way."""
    return trained_run(*EXACT, "trainer.max_steps=29", test_conf=True)


def test_every_checkpoint_written_loads_with_weights_only(straight, stopped_mid):
    files = [*straight.rglob("*.pt"), *stopped_mid.rglob("*.pt")]
    assert len(files) >= 3
    for path in files:
        torch.load(path, map_location="cpu", weights_only=True)


def test_resume_after_a_stop_at_an_epoch_boundary_is_exact(straight, tmp_path):
    run = tmp_path / "boundary"
    train(run, "trainer.max_steps=20")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["loader_state"] == {"epoch": 1, "position": 0}
    train(run, f"resume={run}", GO_ON)
    assert differences(straight, run) == []
    assert read_summary(run)["fingerprint"] == read_summary(straight)["fingerprint"]


def test_saving_checkpoints_never_changes_the_trajectory(straight, tmp_path):
    train_in_process(tmp_path / "often", *EXACT, "checkpoint.every_n_steps=3", "checkpoint.every_n_epochs=1",
                     test_conf=True)  # fmt: skip
    train_in_process(tmp_path / "never", *EXACT, "checkpoint=off", test_conf=True)
    assert not (tmp_path / "never" / "checkpoints").exists()
    fingerprints = {read_summary(p)["fingerprint"] for p in (straight, tmp_path / "often", tmp_path / "never")}
    assert len(fingerprints) == 1
    assert read_history(tmp_path / "often") == read_history(tmp_path / "never") == read_history(straight)


# Each restored piece, skipped on purpose, must break the comparison; skipping none must not
# (the control).
TEETH = ["optimizer", "scheduler", "counters", "data_order", "data_position", "python_rng", "numpy_rng", "torch_rng"]


@pytest.mark.parametrize("piece", ["none", *TEETH])
def test_skipping_any_restored_piece_breaks_exact_resume(straight, stopped_mid, tmp_path, monkeypatch, piece):
    run = tmp_path / "mid"
    shutil.copytree(stopped_mid, run)
    monkeypatch.setenv("FRAMEWORK_TEST_SKIP_RESTORE", "" if piece == "none" else piece)
    train_in_process(run, *EXACT, f"resume={run}", GO_ON, test_conf=True)
    assert (differences(straight, run) == []) == (piece == "none")


def test_extending_a_finished_run_is_allowed_explicitly_and_recorded(straight, tmp_path):
    run = tmp_path / "extended"
    shutil.copytree(straight, run)
    train(run, f"resume={run}", "trainer.max_epochs=4", "allow_config_changes=true")
    summary = read_summary(run)
    assert summary["epochs_completed"] == 4 and summary["follows_original_trajectory"] is False
    assert summary["resumes"][-1]["changed_keys"] == ["trainer.max_epochs"]
    meta = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["meta"]
    assert meta["follows_original_trajectory"] is False


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_by_name(stopped_mid, tmp_path, caplog):
    run = tmp_path / "mid"
    shutil.copytree(stopped_mid, run)
    with pytest.raises(CheckpointError, match=re.escape("inp.weight: checkpoint (64, 64) vs model (32, 64)")):
        train(run, f"resume={run}", "model.width=32", "allow_config_changes=true", GO_ON)
    with caplog.at_level("WARNING", logger="framework"):
        train(
            run, f"resume={run}", "model.width=32", "allow_config_changes=true", "checkpoint.strict_load=false", GO_ON
        )
    assert "non-strict load" in caplog.text and read_summary(run)["status"] == "completed"


def test_tensorboard_goes_on_where_the_checkpoint_was_taken(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    quick = ["model=mlp", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=7"]
    train_in_process(run, *quick, "trainer.max_steps=29")
    # Go back to step 21, as after a crash: the events of steps 22-29 must be purged, not doubled.
    train_in_process(run, *quick, f"resume={run / 'checkpoints' / 'step_00000021.pt'}", GO_ON)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(1, 41))
    logged = {r["step"]: r["train/loss"] for r in read_jsonl(run) if r["event"] == "step"}
    assert sorted(logged) == steps
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([logged[s] for s in steps])
