"""Exact resume for every task, in process: a regression, a user's task on dict batches and a
language model, stopped mid-epoch (by trainer.max_steps, and by SIGTERM during a step), then
resumed, end with the same bits as a run never stopped; with 0 and 2 loader workers. A resume
that skips restoring one piece must fail the comparison: the teeth of each."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import read_summary, train_in_process

import framework.engine.training
from framework.cli.compare import compare as differences

# task -> (the run, the step it stops at, inside an epoch)
RUNS = {
    # 310 training samples: 5 steps an epoch; MLP with dropout.
    "regression": (["task=regression", "data=diabetes", "model=mlp", "model.hidden=[16]", "trainer.max_epochs=3"], 7),
    # tests/user_modules.py: dict samples {"image", "rows", "label"} with keyed noise, a model called
    # with two of them (with dropout), metrics loss, f1 and top2. 20 steps an epoch.
    "dict": (
        ["task=dict_digits", "model=two_inputs", "data=custom", "data.source._target_=user_modules.DictDigits",
         "trainer.max_epochs=2"],
        27,
    ),
    # About 1,600 windows of 32 characters a training epoch in batches of 8: every stop is mid-epoch;
    # the run ends at step 6 (a stopping point: the resume gives it again).
    "language_model": (
        ["task=language_model", "model=transformer", "data=text", "model.n_layer=1", "model.n_embd=32",
         "data.source.block_size=32", "data.batch_size=8", "data.val_fraction=0.01", "data.test_fraction=0.01",
         "trainer.max_steps=6"],
        3,
    ),
}  # fmt: skip
# One intra-op thread: the fastest for models this small, on a busy machine by far.
QUIET = ["logger=none", "trainer.log_every_n_steps=1", "determinism.num_threads=1"]


def train(run_dir, task: str, *overrides: str) -> dict:
    return train_in_process(run_dir, *RUNS[task][0], *QUIET, *overrides, test_conf=True)


def go_on(task: str) -> str:
    """What the resuming command gives to train past the first command's stopping point."""
    return "trainer.max_steps=6" if task == "language_model" else "trainer.max_steps=null"


@pytest.fixture
def straight(trained_run):
    """straight(task) -> the run never stopped, with no loader workers (shared by the session)."""
    return lambda task: trained_run(*RUNS[task][0], *QUIET, test_conf=True)


def stop_by_signal_in_step(monkeypatch, step: int) -> None:
    """SIGTERM during the given step, as a scheduler sends it at any moment."""
    real_step, calls = framework.engine.training.train_step, []

    def step_then_signal(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(framework.engine.training, "train_step", step_then_signal)


@pytest.fixture
def sigterm_taken():
    """The handler the run hands SIGTERM over to once it has stopped (pytest's own may kill it)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("task", ["regression", "dict"])
def test_a_run_stopped_mid_epoch_by_max_steps_resumes_to_the_same_bits(straight, tmp_path, task):
    run, stop = tmp_path / "run", RUNS[task][1]
    train(run, task, f"trainer.max_steps={stop}")
    position = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["loader_state"]["position"]
    assert position not in (0, None)  # inside an epoch
    train(run, task, f"resume={run}", go_on(task))
    assert read_summary(run)["status"] == "completed"
    assert differences(straight(task), run) == []


@pytest.mark.parametrize("task", ["regression", "dict"])
def test_a_run_stopped_mid_epoch_by_sigterm_resumes_to_the_same_bits(
    straight, tmp_path, monkeypatch, sigterm_taken, task
):
    run, stop = tmp_path / "run", RUNS[task][1]
    with monkeypatch.context() as m:
        stop_by_signal_in_step(m, stop)
        summary = train(run, task)
    assert (summary["status"], summary["signal"], summary["global_step"]) == ("preempted", "SIGTERM", stop)
    train(run, task, "resume=auto")
    assert differences(straight(task), run) == []


# Each task's run depends on a piece of the state that the others may not (the MLP's dropout on
# the torch stream; the dict samples' keyed noise on the epoch; the text windows on the position).
TEETH = {"regression": "torch_rng", "dict": "data_order", "language_model": "data_position"}


@pytest.mark.parametrize("task", TEETH)
def test_a_resume_that_skips_restoring_a_piece_is_caught(straight, tmp_path, monkeypatch, task):
    run, stop = tmp_path / "run", RUNS[task][1]
    train(run, task, f"trainer.max_steps={stop}")
    monkeypatch.setenv("FRAMEWORK_TEST_SKIP_RESTORE", TEETH[task])
    train(run, task, f"resume={run}", go_on(task))
    assert differences(straight(task), run) != []


def test_dict_batches_give_the_same_bits_with_0_and_2_loader_workers(straight, tmp_path):
    train(tmp_path / "two", "dict", "data.num_workers=2")
    assert differences(straight("dict"), tmp_path / "two") == []


def test_a_language_model_resumes_exactly_with_0_and_2_loader_workers(straight, tmp_path, monkeypatch, sigterm_taken):
    """Stopped by max_steps with no workers and resumed with two; stopped by SIGTERM with two
    and resumed with none."""
    by_steps, by_signal, stop = tmp_path / "by_steps", tmp_path / "by_signal", RUNS["language_model"][1]
    train(by_steps, "language_model", f"trainer.max_steps={stop}")
    train(by_steps, "language_model", f"resume={by_steps}", go_on("language_model"), "data.num_workers=2")
    assert differences(straight("language_model"), by_steps) == []

    with monkeypatch.context() as m:
        stop_by_signal_in_step(m, stop)
        assert train(by_signal, "language_model", "data.num_workers=2")["global_step"] == stop
    train(by_signal, "language_model", "resume=auto", "data.num_workers=0")
    assert differences(straight("language_model"), by_signal) == []
