"""Preemption that cooperates with the cluster: SIGUSR1 and SIGUSR2 stop a run at a
step boundary with a checkpoint, then the handler they replaced is called (submitit's requeues
the job); the requeued job resumes exactly."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import train_in_process

import framework.engine.training
from framework.cli.compare import compare as differences
from framework.config.errors import ConfigError

# 22 steps an epoch (synthetic data, 1400 training samples, batches of 64).
RUN = ["model=mlp", "model.hidden=[32]", "data=synthetic", "trainer.max_epochs=2", "logger=none"]
STOP_AT = 7


@pytest.fixture
def straight(trained_run):
    """The run never stopped (shared by the whole test session)."""
    return trained_run(*RUN)


def signal_at_step(monkeypatch, sig: signal.Signals, step: int) -> None:
    """The process signals itself during the given step, as a scheduler would at any moment."""
    real_step, calls = framework.engine.training.train_step, []

    def step_then_signal(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), sig)
        return loss

    monkeypatch.setattr(framework.engine.training, "train_step", step_then_signal)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2])
def test_a_user_signal_stops_at_a_step_then_hands_over_and_resume_is_exact(straight, tmp_path, monkeypatch, sig):
    handed_over = []
    previous = signal.signal(sig, lambda signum, frame: handed_over.append(signum))
    try:
        with monkeypatch.context() as m:
            signal_at_step(m, sig, STOP_AT)
            summary = train_in_process(tmp_path / "run", *RUN)
        assert (summary["status"], summary["signal"], summary["global_step"]) == ("preempted", sig.name, STOP_AT)
        ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
        assert ckpt["global_step"] == STOP_AT
        # Called once, after the checkpoint was written, and put back in place for the next job.
        assert handed_over == [sig]
        assert signal.getsignal(sig) is not None and signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN)
        signal.getsignal(sig)(sig, None)
        assert handed_over == [sig, sig]
    finally:
        signal.signal(sig, previous)

    train_in_process(tmp_path / "run", *RUN, "resume=auto")
    assert differences(straight, tmp_path / "run") == []


def test_a_signal_left_out_of_stop_signals_is_not_taken(tmp_path, monkeypatch):
    """trainer.stop_signals sets the list: SIGUSR1 left out reaches the handler already there."""
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        signal_at_step(monkeypatch, signal.SIGUSR1, 3)
        summary = train_in_process(tmp_path / "run", *RUN, "trainer.stop_signals=[SIGTERM]")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert summary["status"] == "completed" and seen == [signal.SIGUSR1]


def test_stop_signals_must_be_signals_a_process_can_catch(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.stop_signals: 'SIGKILL' is not a signal name a process can catch"):
        train_in_process(tmp_path / "run", *RUN, "trainer.stop_signals=[SIGUSR1,SIGKILL]")
