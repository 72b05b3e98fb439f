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
import torch
from helpers import (
    ROOT,
    TESTS,
    read_summary,
    start_cli,
    start_in,
    train_in_process,
    wait_for_step,
)

from framework.cli.compare import compare as differences

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


WORKERS = ["model=mlp", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "logger=none", "data.num_workers=2"]


@pytest.fixture
def straight_with_workers(trained_run):
    return trained_run(*WORKERS)


@pytest.mark.parametrize("sig,status,code", [(signal.SIGTERM, "preempted", 143), (signal.SIGINT, "interrupted", 130)])
def test_a_signal_to_the_whole_process_group_still_stops_with_a_checkpoint(
    straight_with_workers, tmp_path, sig, status, code
):
    """SLURM and Kubernetes signal every process of a job; a terminal's Ctrl-C does the same."""
    run = tmp_path / "run"
    proc = start_cli(run, *WORKERS, "resume=auto", start_new_session=True)
    wait_for_step(proc, run, 25)
    os.killpg(proc.pid, sig)  # the loader workers too
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    summary = read_summary(run)
    assert summary["status"] == status and summary["stopped_by"] == "signal"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["global_step"] == summary["global_step"] >= 25

    train_in_process(run, *WORKERS, "resume=auto")  # the requeue (the signal was the command line's part)
    assert differences(straight_with_workers, run) == []


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path):
    run = tmp_path / "run"
    proc = start_cli(run, *WORKERS, start_new_session=True)
    wait_for_step(proc, run, 5)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert read_summary(run)["status"] == "interrupted"


def test_sigterm_to_a_sweep_stops_it_and_the_requeue_finishes_it(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "framework", "-m", "seed=0,1,2", "model=mlp", "trainer.max_epochs=1", "logger=none",
           "trainer.log_every_n_steps=1", "resume=auto", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    wait_for_step(proc, sweep / "0", 10)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "no more jobs started" in err
    assert not (sweep / "1").exists() and not (sweep / "2").exists()
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["stopped"], summary["failed"]) == (1, 0)
    assert summary["runs"][0]["status"] == "preempted" and "resume=auto" in summary["runs"][0]["error"]

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["jobs"], summary["completed"]) == (3, 3)
    assert len(read_summary(sweep / "0")["resumes"]) == 1


TINY = ["model=mlp", "trainer.max_steps=2", "logger=none"]


# Long enough to act on while it trains: an epoch (20 steps, a checkpoint) every fraction of a second.
LONG = ["model=mlp", "trainer.max_epochs=500", "trainer.log_every_n_steps=1", "logger=none"]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.01)
    pytest.fail(f"{what} did not happen (exit {proc.poll()})")


def test_a_signal_between_two_jobs_stops_the_sweep_with_its_summary(tmp_path):
    sweep = tmp_path / "sweep"
    pause = "+hydra.callbacks.pause._target_=user_modules.PauseBeforeLaterJobs"
    proc = start_in(ROOT, "-m", "seed=0,1,2", *TINY, "resume=auto", pause, f"hydra.sweep.dir={sweep}")
    wait_for(lambda: (sweep / "waiting").exists(), proc, "job 1 waiting to start")
    proc.send_signal(signal.SIGTERM)  # job 0 is done, job 1 not started
    (sweep / "go").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM: no more jobs started" in err
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["jobs"], summary["completed"], summary["stopped_by"]) == (1, 1, "SIGTERM")
    assert not (sweep / "1").exists() and not (sweep / "2").exists()


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_signal_to_a_parallel_sweeps_main_process_stops_its_workers_at_a_step(tmp_path):
    sweep = tmp_path / "sweep"
    proc = start_in(
        ROOT, "-m", "hydra/launcher=parallel", "seed=0,1,2", *LONG, "resume=auto", f"hydra.sweep.dir={sweep}"
    )

    def both_train():
        return all(
            (sweep / job / "metrics.jsonl").is_file() and '"step": 5,' in (sweep / job / "metrics.jsonl").read_text()
            for job in ("0", "1")
        )

    wait_for(both_train, proc, "two jobs training")
    workers = children_of(proc.pid)
    try:
        proc.send_signal(signal.SIGTERM)  # the main process alone
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err
        summary = json.loads((sweep / "summary.json").read_text())
        assert (summary["jobs"], summary["stopped"], summary["stopped_by"]) == (2, 2, "SIGTERM")
        for job in ("0", "1"):
            stopped = read_summary(sweep / job)
            saved = torch.load(sweep / job / "checkpoints" / "last.pt", weights_only=True)
            assert stopped["status"] == "preempted" and saved["global_step"] == stopped["global_step"] > 5
        deadline = time.time() + 30
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.1)
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "workers left running"
    finally:
        for pid in [proc.pid, *workers]:  # what a failure here would leave training on
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
