"""Preemption that cooperates with the cluster (issue 11): SIGUSR1 and SIGUSR2 stop a run at a
step boundary with a checkpoint, then the handler they replaced is called (submitit's requeues
the job); the requeued job resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TESTS, read_summary, train_in_process

import framework.engine.training
from framework.cli.compare import compare as differences
from framework.config.errors import ConfigError
from framework.engine.preemption import StopOnSignal

# 22 steps an epoch (synthetic data, 1400 training samples, batches of 64).
RUN = ["model=mlp", "model.hidden=[32]", "data=synthetic", "trainer.max_epochs=2", "logger=none"]
STOP_AT = 7


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("preemption") / "straight"
    train_in_process(run, *RUN)
    return run


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


def test_ctrl_c_is_not_handed_to_pythons_own_handler():
    """Python's SIGINT handler raises KeyboardInterrupt: the run has already stopped cleanly."""
    stop = StopOnSignal(["SIGINT"])
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.stop_requested()
    finally:
        stop.close()
    stop.hand_over()  # no KeyboardInterrupt


@pytest.mark.slow
def test_through_the_command_line_the_exit_status_names_the_signal(tmp_path):
    """128 + the signal's number, as if it had killed the process: SIGUSR1 gives 138."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "framework", f"hydra.run.dir={run}", *RUN, "trainer.log_every_n_steps=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history, deadline = run / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (history.exists() and '"step": 3,' in history.read_text()):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 138 and "Traceback" not in err
    summary = read_summary(run)
    assert (summary["status"], summary["signal"]) == ("preempted", "SIGUSR1")
    assert "received SIGUSR1: stopping after this step, with a checkpoint" in (run / "train.log").read_text()


def task_pids(marker: str) -> list[int]:
    """The processes whose command line mentions `marker` (submitit's task processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and marker in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_submitit_requeues_a_job_stopped_by_its_signal_and_the_requeued_job_resumes_exactly(straight, tmp_path):
    """The whole path on a real submitit job (submitit_local, as Hydra's launcher starts it): its
    preemption signal (SIGUSR2) reaches the task, the run saves at a step boundary, submitit's own
    handler requeues the job, and the requeued job resumes with resume=auto where it stopped."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "framework", "-m", "hydra/launcher=submitit_local", *RUN, "resume=auto",
           "trainer.log_every_n_steps=1", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history, deadline = sweep / "0" / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (history.exists() and '"step": 5,' in history.read_text()):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    (task,) = task_pids("submitit.core._submit")
    os.kill(task, signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    summary = read_summary(sweep / "0")
    assert summary["status"] == "completed"
    (resume,) = summary["resumes"]
    assert resume["global_step"] >= 5 and resume["exact"]
    logs = "\n".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "received SIGUSR2: stopping after this step" in logs
    assert "Requeued job" in logs  # submitit's own handler ran, after the save
    assert json.loads((sweep / "summary.json").read_text())["completed"] == 1
    assert summary["fingerprint"] == read_summary(straight)["fingerprint"]
