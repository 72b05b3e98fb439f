"""Preemption through the real command line: the exit status names the signal; a submitit job
is requeued and resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TESTS, read_summary

# 22 steps an epoch (synthetic data, 1400 training samples, batches of 64).
RUN = ["model=mlp", "model.hidden=[32]", "data=synthetic", "trainer.max_epochs=2", "logger=none"]


@pytest.fixture
def straight(trained_run):
    """The run never stopped (shared by the whole test session)."""
    return trained_run(*RUN)


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
