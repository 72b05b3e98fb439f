"""Gradient accumulation, in process: 4 micro-batches of 16 train as batches of 64 do (to float
rounding), the schedule, max_steps, every_n_steps and the logged steps count optimizer steps,
and a run stopped mid-epoch resumes to the bits of one never stopped.

Digits' 1,257 training samples make 79 batches of 16 (the last one of 9): not a multiple of 4,
so each epoch's last optimizer step has 3 micro-batches (16, 16, 9), the 41 samples that the
last batch of 64 holds; ceil(79 / 4) = 20 optimizer steps an epoch, as with batches of 64.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import read_jsonl, read_summary, train_in_process

from framework.cli.compare import compare as differences

# No dropout: the two runs draw their dropout masks in batches of other sizes.
RUN = ["model=mlp", "model.hidden=[32]", "model.dropout=0", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
       "logger=none"]  # fmt: skip
ACCUMULATED = [*RUN, "data.batch_size=16", "trainer.accumulate_grad_batches=4"]
STEPS_PER_EPOCH = 20
STOP = 30  # inside the second epoch: 10 optimizer steps (40 micro-batches) into it
EVERY = 7


@pytest.fixture(scope="module")
def batch_64(trained_run):
    return trained_run(*RUN, "data.batch_size=64")


@pytest.fixture(scope="module")
def accumulated(trained_run):
    return trained_run(*ACCUMULATED)


@pytest.fixture(scope="module")
def stopped(trained_run):
    """The accumulated run stopped by max_steps, with a checkpoint every EVERY optimizer steps."""
    return trained_run(*ACCUMULATED, f"trainer.max_steps={STOP}", f"checkpoint.every_n_steps={EVERY}")


def weights(run, name: str = "last.pt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)["model_state_dict"]


def step_lines(run) -> list[dict]:
    return [line for line in read_jsonl(run) if line["event"] == "step"]


def test_four_micro_batches_of_16_train_as_batches_of_64(batch_64, accumulated, stopped):
    ours, theirs = weights(accumulated), weights(batch_64)
    for name in theirs:
        assert torch.allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6), name
    # The weights moved far more than that since step 7: the closeness says something.
    early = weights(stopped, f"step_{EVERY:08d}.pt")
    assert max((ours[k] - early[k]).abs().max().item() for k in ours) > 1e-2
    assert read_summary(accumulated)["global_step"] == read_summary(batch_64)["global_step"] == 2 * STEPS_PER_EPOCH


def test_the_schedule_and_the_logged_steps_count_optimizer_steps(batch_64, accumulated):
    ours, theirs = step_lines(accumulated), step_lines(batch_64)
    assert [line["step"] for line in ours] == [line["step"] for line in theirs] == list(range(1, 41))
    assert [line["epoch"] for line in ours] == [line["epoch"] for line in theirs]
    assert [line["lr"] for line in ours] == [line["lr"] for line in theirs]  # one schedule, as long
    assert ours[-1]["lr"] == 0.0  # the cosine ran its whole length: 2 epochs of 20 steps
    for a, b in zip(ours, theirs):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    epochs = [line for line in read_jsonl(accumulated) if line["event"] == "epoch"]
    assert [line["step"] for line in epochs] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_max_steps_and_every_n_steps_count_optimizer_steps(stopped):
    folder = stopped / "checkpoints"
    periodic = sorted(p.name for p in folder.glob("step_*.pt"))
    assert periodic == [f"step_{s:08d}.pt" for s in range(EVERY, STOP, EVERY)]
    # Saves happen at optimizer steps: a position is a whole number of groups into its epoch.
    for name in periodic:
        saved = torch.load(folder / name, weights_only=True)
        step = saved["global_step"]
        assert saved["loader_state"] == {"epoch": step // STEPS_PER_EPOCH, "position": 4 * (step % STEPS_PER_EPOCH)}
    last = torch.load(folder / "last.pt", weights_only=True)
    assert last["global_step"] == STOP and last["loader_state"] == {"epoch": 1, "position": 40}
    assert read_summary(stopped)["stopped_by"] == "max_steps"


@pytest.mark.parametrize("skipped", ["", "data_position"])
def test_a_stopped_accumulated_run_resumes_exactly(accumulated, stopped, tmp_path, monkeypatch, skipped):
    """Skipping the data position on resume (the teeth) must break it."""
    run = tmp_path / "resumed"
    shutil.copytree(stopped, run)
    monkeypatch.setenv("FRAMEWORK_TEST_SKIP_RESTORE", skipped)
    train_in_process(run, *ACCUMULATED, f"resume={run}", "trainer.max_steps=null")
    assert (differences(accumulated, run) == []) == (not skipped)
    assert (read_summary(run)["fingerprint"] == read_summary(accumulated)["fingerprint"]) == (not skipped)
