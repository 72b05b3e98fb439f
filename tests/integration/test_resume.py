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
from helpers import (
    read_jsonl,
    read_summary,
    train_in_process,
)

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


def test_saving_checkpoints_never_changes_the_trajectory(stopped_mid, tmp_path):
    # Up to stopped_mid's step 29 (a stopping point, not part of the schedule): past an epoch end's
    # save and nine periodic ones, into the next epoch.
    mid = "trainer.max_steps=29"
    train_in_process(tmp_path / "often", *EXACT, mid, "checkpoint.every_n_steps=3", "checkpoint.every_n_epochs=1",
                     test_conf=True)  # fmt: skip
    train_in_process(tmp_path / "never", *EXACT, mid, "checkpoint=off", test_conf=True)
    assert not (tmp_path / "never" / "checkpoints").exists()
    fingerprints = {read_summary(p)["fingerprint"] for p in (stopped_mid, tmp_path / "often", tmp_path / "never")}
    assert len(fingerprints) == 1
    assert read_history(tmp_path / "often") == read_history(tmp_path / "never") == read_history(stopped_mid)


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


# 20 steps an epoch; a periodic file every 10 steps, only the newest one kept.
BASE = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=1"]


@pytest.fixture
def stopped(trained_run):
    """A run stopped at step 25 of 40, with last.pt, best.pt and step_00000020.pt (shared by the
    whole test session: copy_of it to change it)."""
    return trained_run(*BASE, "trainer.max_steps=25")


def copy_of(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    return run


# Only last.pt, written at each epoch end: a save cut short can fall back on no other file.
ONLY_LAST = ["model=mlp", "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "logger=none",
             "checkpoint.monitor=null"]  # fmt: skip


# last.pt and a file at each epoch end (epoch_0001.pt, ...), kept.
EPOCH_FILES = [*ONLY_LAST, "checkpoint.every_n_epochs=1"]


@pytest.fixture
def epoch_files_straight(trained_run):
    """The run never stopped, 60 steps (shared by the whole test session: copy it to change it;
    checkpoints never change a trajectory, so it is the straight run of any ONLY_LAST policy)."""
    return trained_run(*EPOCH_FILES)


def flip_a_bit_inside_a_tensor(path):
    """Flip one bit in the middle of the largest tensor's bytes: torch.load still reads the file."""
    weights = torch.load(path, weights_only=True)["model_state_dict"]
    tensor = max(weights.values(), key=lambda t: t.numel())
    data = path.read_bytes()
    at = data.index(tensor.numpy().tobytes()[:64]) + tensor.numel() * tensor.element_size() // 2
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])


def test_without_an_index_a_corrupt_newest_file_is_found_by_its_own_check(epoch_files_straight, tmp_path, caplog):
    config = [*ONLY_LAST, "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=3"]
    run = tmp_path / "run"
    train_in_process(run, *config, "trainer.max_steps=25")  # last.pt at 25; step_10, step_20
    (run / "checkpoints" / "index.json").unlink()
    flip_a_bit_inside_a_tensor(run / "checkpoints" / "last.pt")

    with caplog.at_level("INFO", logger="framework"):
        train_in_process(run, *config, "resume=auto", GO_ON)
    assert "skipping last.pt" in caplog.text and "record(s) of its archive fail their CRC32" in caplog.text
    assert "step_00000020.pt (epoch 1, step 20)" in caplog.text
    assert "checked: its CRC32 records (index.json does not list it" in caplog.text
    assert read_summary(run)["resumes"][-1]["global_step"] == 20  # the newest good one, by its step
    assert differences(epoch_files_straight, run) == []


def test_resume_auto_follows_the_latest_branch_not_the_highest_step(epoch_files_straight, tmp_path):
    config = EPOCH_FILES
    # A copy: epoch_0001.pt (step 20) ... epoch_0003.pt (step 60), last.pt at 60.
    run = shutil.copytree(epoch_files_straight, tmp_path / "run")
    # A deliberate rewind: back to epoch 1 with a lower learning rate, stopped at step 30.
    rewind = [f"resume={run / 'checkpoints' / 'epoch_0001.pt'}", "optimizer.lr=0.05", "allow_config_changes=true"]
    train_in_process(run, *config, *rewind, "trainer.max_steps=30")
    train_in_process(
        run, *config, "resume=auto", "trainer.max_steps=31", "optimizer.lr=0.05", "allow_config_changes=true"
    )
    resumed = read_summary(run)["resumes"][-1]
    assert resumed["global_step"] == 30 and resumed["from"].endswith("last.pt"), resumed


def test_a_different_eval_batch_size_on_resume_is_no_false_alarm(stopped, tmp_path, caplog):
    run = copy_of(stopped, tmp_path)
    with caplog.at_level("INFO", logger="framework"):
        train_in_process(run, *BASE, f"resume={run}", GO_ON, "trainer.eval_batch_size=7")
    assert "RESUME CHECK FAILED" not in caplog.text
    assert "resume check: val/loss" in caplog.text
    assert read_summary(run)["resumes"][-1]["val_check"]["identical"] is True


def test_a_resumed_epoch_with_no_batches_left_ends_cleanly(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)  # stopped at batch 5 of epoch 2; 512 a batch leaves 3 batches an epoch
    summary = train_in_process(run, *BASE, f"resume={run}", GO_ON, "data.batch_size=512", "allow_config_changes=true")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
