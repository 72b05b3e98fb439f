"""Exact resume in new processes: the real command line resumes"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import (
    ROOT,
    TEST_CONF,
    TESTS,
    finish_together,
    read_jsonl,
    read_summary,
    run_cli,
    start_cli,
    train_in_process,
    wait_for_step,
)

from framework.cli.compare import compare as differences

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


@pytest.fixture
def straight(trained_run):
    """The run straight through (in process, shared by the whole test session: copy it to change it)."""
    return trained_run(*EXACT, test_conf=True)


@pytest.fixture
def stopped_mid(trained_run):
    """The run stopped mid-epoch (step 29: epoch 1, batch 9), shared the same way."""
    return trained_run(*EXACT, "trainer.max_steps=29", test_conf=True)


def test_resume_after_sigkill_with_resume_auto_is_exact(straight, tmp_path, caplog):
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "framework",
        *TEST_CONF,
        f"hydra.run.dir={run}",
        *EXACT,
        "resume=auto",
        "checkpoint.every_n_steps=7",
    ]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = run / "checkpoints" / "index.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if index.exists() and "step_00000021.pt" in index.read_text():  # epoch 1, batch 1
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert read_summary(run)["status"] == "running"  # killed: it never wrote an end

    with caplog.at_level("INFO", logger="framework"):  # the requeue, in process (the kill was the command line's part)
        train_in_process(run, *EXACT, "resume=auto", "checkpoint.every_n_steps=7", test_conf=True)
    resumed = read_summary(run)["resumes"][-1]
    assert resumed["position"] != 0, "the kill did not land inside an epoch"
    checked = "the most recent save that passes its check; checked: its size and xxh3 in index.json"
    assert checked in caplog.text
    assert differences(straight, run) == []


def test_a_trajectory_changing_override_is_refused_and_nothing_is_lost(stopped_mid, tmp_path):
    run = tmp_path / "mid"
    shutil.copytree(stopped_mid, run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    proc = run_cli(
        run, *EXACT, f"resume={run}", "optimizer.lr=0.5", "trainer.max_epochs=4", extra_args=TEST_CONF, check=False
    )
    assert proc.returncode != 0
    assert "optimizer.lr: 0.1 -> 0.5" in proc.stderr
    assert "trainer.max_epochs: 3 -> 4" in proc.stderr  # the cosine schedule's length comes from it
    assert "allow_config_changes=true" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_sigterm_stops_with_a_checkpoint_at_that_step_and_resume_is_exact(straight, tmp_path):
    run = tmp_path / "preempted"
    cmd = [sys.executable, "-m", "framework", *TEST_CONF, f"hydra.run.dir={run}", *EXACT, "resume=auto"]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and '"step": 25,' in history.read_text():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    summary = read_summary(run)
    assert summary["status"] == "preempted" and summary["stopped_by"] == "signal"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["global_step"] == summary["global_step"] and ckpt["loader_state"]["position"] != 0
    train_in_process(run, *EXACT, "resume=auto", test_conf=True)  # the requeue, in process: it runs to the end
    assert read_summary(run)["resumes"][-1]["global_step"] == ckpt["global_step"]
    assert differences(straight, run) == []


def test_a_resumed_run_keeps_the_thread_count_it_started_with(straight, stopped_mid, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: the resuming process is given one, as on a smaller machine")

    def one_cpu(cpu):
        return lambda: os.sched_setaffinity(0, {cpu})

    threads = read_summary(straight)["determinism"]["num_threads"]
    assert threads == len(cpus)  # determinism.num_threads=null: every CPU the process may use
    run, other = tmp_path / "mid", tmp_path / "other"
    for copy in (run, other):
        shutil.copytree(stopped_mid, copy)
    # Teeth (other): this machine's own count would have given other bits. Both resumes started at
    # once, each given a CPU of its own.
    one_thread = ["determinism.num_threads=1", "allow_config_changes=true"]
    started = {
        copy: start_cli(copy, *EXACT, f"resume={copy}", GO_ON, *changes, extra_args=TEST_CONF, preexec_fn=one_cpu(cpu))
        for copy, changes, cpu in ((run, [], cpus[0]), (other, one_thread, cpus[1]))
    }
    proc, teeth = finish_together(started).values()
    assert proc.returncode == 0 and teeth.returncode == 0, proc.stderr + teeth.stderr
    assert f"{threads} intra-op threads (as the checkpoint ran)" in proc.stdout
    assert read_summary(run)["determinism"]["num_threads"] == threads
    assert differences(straight, run) == []
    assert differences(straight, other) != []


def test_resume_in_the_middle_of_an_epoch_needs_none_of_the_original_overrides(straight, stopped_mid, tmp_path):
    """`python -m framework resume=RUN_DIR`: no --config-dir, no model, no data, no max_epochs.
    Only `trainer.max_steps=null`, to go past the stopping point the first command set. (Resuming
    from a file, with the first command's overrides: tests/integration/test_resume.py.)"""
    run = tmp_path / "mid"
    shutil.copytree(stopped_mid, run)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["loader_state"] == {"epoch": 1, "position": 9} and ckpt["global_step"] == 29
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}  # where the user's model class lives
    cmd = [sys.executable, "-m", "framework", f"resume={run}", GO_ON]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "outputs").exists()  # continued in its own directory
    summary = read_summary(run)
    assert summary["resumes"][-1]["changed_keys"] == ["trainer.max_steps"]
    assert differences(straight, run) == []
    assert summary["fingerprint"] == read_summary(straight)["fingerprint"]
    assert summary["resumes"][-1]["val_check"]["identical"] is True
    assert "resume check: val/loss" in proc.stdout and "identical" in proc.stdout


# 20 steps an epoch; a periodic file every 10 steps, only the newest one kept.
BASE = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=1"]


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_start_replaces_the_history_of_an_attempt_that_saved_nothing(tmp_path):
    run = tmp_path / "run"
    unsaved = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint=off", "resume=auto"]
    proc = start_cli(run, *unsaved)
    wait_for_step(proc, run, 20)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert "nothing was saved" in out + err and "continue with resume=auto" not in out + err

    train_in_process(run, *unsaved)  # the requeue (in process): same command, nothing to resume from, a fresh start
    history = read_jsonl(run)  # one history, not the killed one and another after it
    assert [r["step"] for r in history if r["event"] == "step"] == [10, 20, 30, 40]  # logged every 10 steps
    assert [r["event"] for r in history if r["event"] != "step"] == ["epoch", "epoch", "test"]


REFUSED = [
    (["optimizer.lr=0.5"], "optimizer.lr: 0.1 -> 0.5"),  # refused by the config check
    (["model.hidden=[32,32]", "allow_config_changes=true", GO_ON], "do not fit the model"),  # by the restore
]


@pytest.fixture(scope="module")
def refused_resumes(cli_trained_run, tmp_path_factory) -> dict:
    """Each change of REFUSED resumed with, in its own copy of a run stopped at step 25 of 40 (last.pt,
    best.pt, step_00000020.pt, Hydra's record, and a train.log of the first run's), all started at
    once (each pays for its own interpreter): the change, as a tuple -> (the copy, its files before,
    the finished process)."""
    stopped = cli_trained_run(*BASE, "trainer.max_steps=25")
    folder = tmp_path_factory.mktemp("refused")
    runs, before, started = {}, {}, {}
    for i, (change, _) in enumerate(REFUSED):
        run = runs[tuple(change)] = shutil.copytree(stopped, folder / f"run{i}")
        (run / "train.log").write_text("the first run's log\n")
        before[tuple(change)] = files_of(run)
        started[tuple(change)] = start_cli(run, *BASE, f"resume={run}", *change)
    done = finish_together(started)
    return {change: (runs[change], before[change], done[change]) for change in started}


@pytest.mark.parametrize("change,says", REFUSED)
def test_a_refused_or_failed_resume_leaves_the_run_as_it_was(refused_resumes, change, says):
    run, before, proc = refused_resumes[tuple(change)]
    assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr
    assert files_of(run) == before  # status, history, checkpoints, .hydra/ and train.log untouched


def test_resume_auto_without_a_fixed_directory_is_warned_about(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    cmd = [sys.executable, "-m", "framework", "resume=auto", "model=mlp", "trainer.max_steps=2", "logger=none"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0
    assert "Warning: resume=auto without hydra.run.dir" in proc.stderr
