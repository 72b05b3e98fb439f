"""trainer.val_every_n_steps, in process: validating inside epochs leaves the training trajectory
the same bits (the model draws from torch, NumPy and Python's random streams in training: a
validation that drew from any of them would shift it), logs `val` events at every N optimizer
steps, can write best.pt at such a step, and a run stopped and resumed with it stays exact."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import read_jsonl, read_summary, train_in_process

from framework.cli.compare import compare as differences

RUN = ["model=noisy", "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "logger=none"]  # 20 steps
EVERY = 4  # step 20 ends the epoch: validated there once, as the epoch's end
VALIDATED = [*RUN, f"trainer.val_every_n_steps={EVERY}"]
STOP = 12  # a stop at a step that validates: the resumed run must have counted that validation


@pytest.fixture(scope="module")
def plain(trained_run):
    return trained_run(*RUN, test_conf=True)


@pytest.fixture(scope="module")
def validated(trained_run):
    return trained_run(*VALIDATED, test_conf=True)


@pytest.fixture(scope="module")
def stopped(trained_run):
    return trained_run(*VALIDATED, f"trainer.max_steps={STOP}", test_conf=True)


def val_lines(run) -> list[dict]:
    return [line for line in read_jsonl(run) if line["event"] == "val"]


def training_lines(run) -> list[dict]:
    return [line for line in read_jsonl(run) if line["event"] in ("step", "epoch")]


def test_validating_inside_epochs_leaves_the_trajectory_unchanged(plain, validated):
    assert read_summary(validated)["fingerprint"] == read_summary(plain)["fingerprint"]
    assert training_lines(validated) == training_lines(plain)  # every step's train/loss and lr, every epoch's


def test_val_events_come_every_n_optimizer_steps_but_at_epoch_ends(plain, validated):
    assert [line["step"] for line in val_lines(validated)] == [4, 8, 12, 16]
    assert all("val/loss" in line and "val/acc" in line for line in val_lines(validated))
    assert val_lines(plain) == []


def test_best_pt_can_be_written_at_a_step_validation(stopped):
    best = torch.load(stopped / "checkpoints" / "best.pt", weights_only=True)
    val = {line["step"]: line["val/loss"] for line in val_lines(stopped)}
    assert best["global_step"] % EVERY == 0 and best["global_step"] % 20 != 0  # not an epoch's end
    assert best["val_metrics"]["val/loss"] == val[best["global_step"]] == min(val.values())
    assert best["best_metric"] == val[best["global_step"]]


def test_a_stopped_run_that_validates_by_steps_resumes_exactly(validated, stopped, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(stopped, run)
    train_in_process(run, *VALIDATED, f"resume={run}", "trainer.max_steps=null", test_conf=True)
    assert differences(validated, run) == []
    assert read_summary(run)["fingerprint"] == read_summary(validated)["fingerprint"]
    assert val_lines(run) == val_lines(validated)


def test_a_resume_may_change_val_every_n_steps_and_keeps_the_trajectory(plain, stopped, tmp_path):
    """A key safe to change on resume: no allow_config_changes, and the bits of the runs above."""
    run = tmp_path / "rarer"
    shutil.copytree(stopped, run)
    train_in_process(run, *RUN, "trainer.val_every_n_steps=5", f"resume={run}", "trainer.max_steps=null",
                     test_conf=True)  # fmt: skip
    summary = read_summary(run)
    assert summary["fingerprint"] == read_summary(plain)["fingerprint"]
    assert summary["follows_original_trajectory"] is True
    assert training_lines(run) == training_lines(plain)
    assert [line["step"] for line in val_lines(run)] == [4, 8, 12, 15]
