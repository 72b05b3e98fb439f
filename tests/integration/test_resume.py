"""Exact resume, through the real command line, in new processes.

One configuration exercises every source of randomness: a user model that draws from torch
(dropout), NumPy and Python's `random` in its forward pass; shifted digits; shuffling; two
loader workers; SGD with momentum and a cosine schedule whose length comes from max_epochs.
A run stopped and resumed must end with the same bits as one that never stopped. The teeth
tests skip restoring one piece at a time and require the comparison to fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TEST_CONF, TESTS, read_jsonl, read_summary, run_cli, train_in_process

from framework.cli.compare import compare as differences
from framework.cli.compare import read_history

pytestmark = pytest.mark.slow

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


def train(run_dir: Path, *overrides: str, **kwargs):
    return run_cli(run_dir, *EXACT, *overrides, extra_args=TEST_CONF, **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The straight run, and a run stopped mid-epoch (step 29: epoch 1, batch 9), made once."""
    root = tmp_path_factory.mktemp("resume")
    train(root / "straight")
    train(root / "stopped_mid", "trainer.max_steps=29")
    return root


def test_every_checkpoint_written_loads_with_weights_only(runs):
    files = list(runs.rglob("*.pt"))
    assert len(files) >= 3
    for path in files:
        torch.load(path, map_location="cpu", weights_only=True)


def test_resume_after_a_stop_at_an_epoch_boundary_is_exact(runs, tmp_path):
    run = tmp_path / "boundary"
    train(run, "trainer.max_steps=20")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["loader_state"] == {"epoch": 1, "position": 0}
    train(run, f"resume={run}", GO_ON)
    assert differences(runs / "straight", run) == []
    assert read_summary(run)["fingerprint"] == read_summary(runs / "straight")["fingerprint"]


def test_resume_in_the_middle_of_an_epoch_is_exact(runs, tmp_path):
    run = tmp_path / "mid"
    shutil.copytree(runs / "stopped_mid", run)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["loader_state"] == {"epoch": 1, "position": 9} and ckpt["global_step"] == 29
    proc = train(run, f"resume={run / 'checkpoints' / 'last.pt'}", GO_ON)
    assert differences(runs / "straight", run) == []
    summary = read_summary(run)
    assert summary["fingerprint"] == read_summary(runs / "straight")["fingerprint"]
    assert summary["resumes"][-1]["val_check"]["identical"] is True
    assert "resume check: val/loss" in proc.stdout and "identical" in proc.stdout


def test_resume_after_sigkill_with_resume_auto_is_exact(runs, tmp_path):
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

    out = run_cli(run, *EXACT, "resume=auto", "checkpoint.every_n_steps=7", extra_args=TEST_CONF)
    resumed = read_summary(run)["resumes"][-1]
    assert resumed["position"] != 0, "the kill did not land inside an epoch"
    checked = "the most recent save that passes its check; checked: its size and xxh3 in index.json"
    assert checked in out.stdout
    assert differences(runs / "straight", run) == []


def test_saving_checkpoints_never_changes_the_trajectory(runs, tmp_path):
    # In this process: what is shown is the config's effect (and that it matches the CLI's bits).
    train_in_process(tmp_path / "often", *EXACT, "checkpoint.every_n_steps=3", "checkpoint.every_n_epochs=1",
                     test_conf=True)  # fmt: skip
    train_in_process(tmp_path / "never", *EXACT, "checkpoint=off", test_conf=True)
    assert not (tmp_path / "never" / "checkpoints").exists()
    fingerprints = {read_summary(p)["fingerprint"] for p in (runs / "straight", tmp_path / "often", tmp_path / "never")}
    assert len(fingerprints) == 1
    assert read_history(tmp_path / "often") == read_history(tmp_path / "never") == read_history(runs / "straight")


# Each restored piece, skipped on purpose, must break the comparison; skipping none must not
# (the control: the resumes run in this process, the straight run in its own).
TEETH = ["optimizer", "scheduler", "counters", "data_order", "data_position", "python_rng", "numpy_rng", "torch_rng"]


@pytest.mark.parametrize("piece", ["none", *TEETH])
def test_skipping_any_restored_piece_breaks_exact_resume(runs, tmp_path, monkeypatch, piece):
    run = tmp_path / "mid"
    shutil.copytree(runs / "stopped_mid", run)
    monkeypatch.setenv("FRAMEWORK_TEST_SKIP_RESTORE", "" if piece == "none" else piece)
    train_in_process(run, *EXACT, f"resume={run}", GO_ON, test_conf=True)
    assert (differences(runs / "straight", run) == []) == (piece == "none")


def test_a_trajectory_changing_override_is_refused_and_nothing_is_lost(runs, tmp_path):
    run = tmp_path / "mid"
    shutil.copytree(runs / "stopped_mid", run)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    proc = run_cli(
        run, *EXACT, f"resume={run}", "optimizer.lr=0.5", "trainer.max_epochs=4", extra_args=TEST_CONF, check=False
    )
    assert proc.returncode != 0
    assert "optimizer.lr: 0.1 -> 0.5" in proc.stderr
    assert "trainer.max_epochs: 3 -> 4" in proc.stderr  # the cosine schedule's length comes from it
    assert "allow_config_changes=true" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def test_extending_a_finished_run_is_allowed_explicitly_and_recorded(runs, tmp_path):
    run = tmp_path / "extended"
    shutil.copytree(runs / "straight", run)
    train(run, f"resume={run}", "trainer.max_epochs=4", "allow_config_changes=true")
    summary = read_summary(run)
    assert summary["epochs_completed"] == 4 and summary["follows_original_trajectory"] is False
    assert summary["resumes"][-1]["changed_keys"] == ["trainer.max_epochs"]
    meta = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["meta"]
    assert meta["follows_original_trajectory"] is False


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_by_name(runs, tmp_path):
    run = tmp_path / "mid"
    shutil.copytree(runs / "stopped_mid", run)
    proc = run_cli(
        run, *EXACT, f"resume={run}", "model.width=32", "allow_config_changes=true", GO_ON, extra_args=TEST_CONF,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "inp.weight: checkpoint (64, 64) vs model (32, 64)" in proc.stderr
    loose = run_cli(
        run,
        *EXACT,
        f"resume={run}",
        "model.width=32",
        "allow_config_changes=true",
        "checkpoint.strict_load=false",
        GO_ON,
        extra_args=TEST_CONF,
    )
    assert "non-strict load" in loose.stdout and read_summary(run)["status"] == "completed"


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


def test_sigterm_stops_with_a_checkpoint_at_that_step_and_resume_is_exact(runs, tmp_path):
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
    run_cli(run, *EXACT, "resume=auto", extra_args=TEST_CONF)
    assert read_summary(run)["resumes"][-1]["global_step"] == ckpt["global_step"]
    assert differences(runs / "straight", run) == []


def test_a_resumed_run_keeps_the_thread_count_it_started_with(runs, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: the resuming process is given one, as on a smaller machine")

    def one_cpu():
        os.sched_setaffinity(0, {cpus[0]})

    threads = read_summary(runs / "straight")["determinism"]["num_threads"]
    assert threads == len(cpus)  # determinism.num_threads=null: every CPU the process may use
    run = tmp_path / "mid"
    shutil.copytree(runs / "stopped_mid", run)
    proc = train(run, f"resume={run}", GO_ON, preexec_fn=one_cpu)
    assert f"{threads} intra-op threads (as the checkpoint ran)" in proc.stdout
    assert read_summary(run)["determinism"]["num_threads"] == threads
    assert differences(runs / "straight", run) == []

    # Teeth: this machine's own count would have given other bits.
    other = tmp_path / "other"
    shutil.copytree(runs / "stopped_mid", other)
    train(other, f"resume={other}", GO_ON, "determinism.num_threads=1", "allow_config_changes=true", preexec_fn=one_cpu)
    assert differences(runs / "straight", other) != []


def test_a_resume_needs_none_of_the_original_overrides(runs, tmp_path):
    """`python -m framework resume=RUN_DIR`: no --config-dir, no model, no data, no max_epochs.
    Only `trainer.max_steps=null`, to go past the stopping point the first command set."""
    run = tmp_path / "mid"
    shutil.copytree(runs / "stopped_mid", run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}  # where the user's model class lives
    cmd = [sys.executable, "-m", "framework", f"resume={run}", GO_ON]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "outputs").exists()  # continued in its own directory
    assert read_summary(run)["resumes"][-1]["changed_keys"] == ["trainer.max_steps"]
    assert differences(runs / "straight", run) == []
