"""Data-parallel training under real `torchrun` (2 processes, gloo on this CPU machine)."""

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
from helpers import ROOT, TESTS, finish_together, read_summary, run_cli, train_in_process

from framework.cli.compare import compare as differences
from framework.config.errors import ConfigError
from framework.faults import KILL_ENV

pytestmark = pytest.mark.slow

# Two epochs of the MLP on digits: 10 steps an epoch on each of 2 ranks (batch 64 per rank).
RUN = ["model=mlp", "trainer.max_epochs=2", "logger=none"]


def torchrun(run_dir: Path, *overrides: str, background: bool = False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "framework"]
    cmd += [f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory) -> dict:
    """The straight run and the one stopped at the first epoch's end, started side by side (each
    pays for its own interpreters and process group): name -> its folder."""
    folder = tmp_path_factory.mktemp("ddp")
    started = {
        "straight": torchrun(folder / "straight", *RUN, background=True),
        "stopped": torchrun(folder / "stopped", *RUN, "trainer.max_steps=10", background=True),
    }
    for proc in finish_together(started).values():
        assert proc.returncode == 0, proc.stderr
    return {name: folder / name for name in started}


@pytest.fixture(scope="module")
def straight(first_runs):
    return first_runs["straight"]


def test_two_ranks_write_one_run_directory_with_one_set_of_files(straight):
    assert sorted(p.name for p in straight.iterdir()) == [
        ".framework-run",
        ".hydra",
        "checkpoints",
        "metrics.json",
        "metrics.jsonl",
        "train.log",
    ]
    assert (straight / "train.log").read_text().count("done in") == 1  # rank 0 alone logs
    assert sorted(p.name for p in (straight / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert [line.count('"event": "epoch"') for line in (straight / "metrics.jsonl").read_text().splitlines()].count(
        1
    ) == 2
    ckpt = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["meta"]["world_size"] == 2 and ckpt["global_step"] == 20
    assert not any(k.startswith("module.") for k in ckpt["model_state_dict"])
    first, second = ckpt["rng_per_rank"]
    assert not torch.equal(first["rng_state"], second["rng_state"])  # each rank its own streams


@pytest.fixture(scope="module")
def stopped_at_epoch_end(first_runs):
    return first_runs["stopped"]


def test_two_ranks_stopped_at_an_epoch_end_resume_exactly(straight, stopped_at_epoch_end, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_at_epoch_end, run)
    resumed = torchrun(run, "resume=auto", "trainer.max_steps=null")
    assert resumed.returncode == 0, resumed.stderr
    assert differences(straight, run) == []


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_the_resume_is_exact(straight, tmp_path):
    """Saving in the background here (rank 0's copy overlaps the next step on both ranks); the
    straight run saved synchronously."""
    run = tmp_path / "run"
    proc = torchrun(run, *RUN, "checkpoint.async_save=true", background=True)
    history = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and '"step": 10,' in history.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks
    proc.communicate(timeout=120)
    summary = read_summary(run)
    assert summary["status"] == "preempted" and 10 <= summary["global_step"] < 20, summary
    resumed = torchrun(run, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert differences(straight, run) == []


# The same run through the plain command, last.pt and a periodic file every 4 steps.
TWO_RANKS = [*RUN, "checkpoint.every_n_steps=4", "trainer.processes=2"]


def test_two_ranks_killed_after_a_save_inside_an_epoch_resume_to_the_same_epoch_loss(straight, tmp_path):
    """SIGKILL once last.pt of step 8 (of 10 in the first epoch) is listed: the epoch's train/loss
    after the resume is the mean over the ranks of each rank's own running sum, as in the run never
    stopped (a save's other boundaries: tests/cli/test_killed_saves.py). Both commands are the
    plain one: trainer.processes=2 becomes torchrun --standalone --nproc_per_node=2, the same job
    as the straight run's under torchrun, to the bits."""
    run = tmp_path / "run"
    killed = run_cli(run, *TWO_RANKS, env={KILL_ENV: "indexed:2"}, check=False)
    assert killed.returncode != 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["global_step"] == 8
    run_cli(run, *TWO_RANKS, "resume=auto")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["meta"]["world_size"] == 2
    assert differences(straight, run) == []
    assert read_summary(run)["fingerprint"] == read_summary(straight)["fingerprint"]
    ckpt = torch.load(run / "checkpoints" / "step_00000004.pt", weights_only=True)
    sums = [own["epoch_loss_sum"] for own in ckpt["counters_per_rank"]]
    assert sums[0] != sums[1] and ckpt["epoch_loss_sum"] == sum(sums) / 2


def test_a_two_rank_checkpoint_on_one_process_is_refused_then_allowed(stopped_at_epoch_end, tmp_path):
    run = tmp_path / "one"
    shutil.copytree(stopped_at_epoch_end, run)
    before = (run / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="written by 2 process"):
        train_in_process(run, f"resume={run}", "trainer.max_steps=null")
    assert (run / "metrics.json").read_bytes() == before
    summary = train_in_process(run, f"resume={run}", "trainer.max_steps=null", "allow_config_changes=true")
    assert summary["status"] == "completed" and summary["global_step"] == 30  # one rank: 20 steps an epoch
    assert summary["follows_original_trajectory"] is False
    # The validation loss the two ranks recorded is the one this single process computes on the
    # same weights, to the bit: metrics reduced over the ranks are the one-process metrics.
    assert summary["resumes"][-1]["val_check"]["identical"] is True
    assert summary["resumes"][-1]["val_check"]["rebatched"] is False


def test_a_rank_that_raises_brings_the_job_down_soon_naming_it_and_leaving_whole_checkpoints(tmp_path):
    run = tmp_path / "run"
    started = time.time()
    proc = torchrun(run, *RUN, "model._target_=user_modules.FailsOnOneRank", "+model.after=12")
    assert proc.returncode != 0 and time.time() - started < 90  # not torch's 30-minute collective timeout
    root_cause = proc.stderr.split("Root Cause")[1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "this rank failed on purpose" in root_cause
    assert read_summary(run)["status"] == "failed"
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best.pt", "index.json", "last.pt"]  # no temporary file left
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["global_step"] == 10


def test_a_sweep_of_two_task_jobs_through_submitit_trains_each_job_on_two_ranks(straight, tmp_path):
    """Hydra's submitit launcher (locally) with two tasks per job: the tasks form one group, and
    the job's bits are those of the same run under torchrun."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "framework", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"]
    cmd += [*RUN, "seed=0", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    job = sweep / "0"
    assert torch.load(job / "checkpoints" / "last.pt", weights_only=True)["meta"]["world_size"] == 2
    assert (job / "train.log").read_text().count("done in") == 1
    assert read_summary(job)["fingerprint"] == read_summary(straight)["fingerprint"]
