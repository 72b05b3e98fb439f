"""Seed sweeps with real Hydra multiruns (basic, joblib and submitit-local launchers): the summary,
the reproducibility check, jobs that fail or are refused, the sweep command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    ROOT,
    TEST_CONF,
    TESTS,
    finish_together,
    read_summary,
    run_in,
    start_in,
)

from framework.cli.sweep import main as sweep_main

QUICK = ["model=mlp", "trainer.max_epochs=1", "logger=none", "checkpoint=off"]


def fingerprint_of(trained_run, *overrides: str) -> str:
    """The bits of a single run of QUICK, trained in process once per test session (the same bits as
    in a process of its own: tests/cli/test_determinism.py)."""
    return read_summary(trained_run(*QUICK, *overrides))["fingerprint"]


def start_multirun(*overrides: str, sweep_dir: Path) -> subprocess.Popen:
    """`python -m framework --config-dir tests/conf -m OVERRIDES...` from ROOT, started in the
    background (for finish_together)."""
    return start_in(ROOT, *TEST_CONF, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}")


def assert_summary_files(sweep: Path) -> dict:
    summary = json.loads((sweep / "summary.json").read_text())
    table = (sweep / "summary.md").read_text()
    assert "| metric | n | mean | std | min | max | 95% CI |" in table
    png = (sweep / "val_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    return summary

    # strict across processes: test_jobs_in_one_process_do_not_leak_state_into_each_other.


# Side by side, one thread each: two processes of two threads would wait on each other's CPUs.
ONE_THREAD = "determinism.num_threads=1"

# Two sweeps of the basic launcher (its jobs one after the other in one process): name -> overrides.
BASIC = {
    "seeds": ["seed=0,1,2", *QUICK, "trainer.max_epochs=2", ONE_THREAD],
    "failing": ["seed=0", "optimizer.lr=0.1,-1,0.05", *QUICK, ONE_THREAD],
}


@pytest.fixture(scope="module")
def basic_sweeps(tmp_path_factory) -> dict:
    """name -> (its sweep's folder, its finished command): the sweeps of BASIC, started side by side."""
    folder = tmp_path_factory.mktemp("basic")
    started = {name: start_multirun(*overrides, sweep_dir=folder / name) for name, overrides in BASIC.items()}
    return {name: (folder / name, proc) for name, proc in finish_together(started).items()}


@pytest.mark.slow
def test_a_basic_multirun_of_three_seeds_is_summarized(basic_sweeps):
    sweep, proc = basic_sweeps["seeds"]
    assert proc.returncode == 0, proc.stderr
    summary = assert_summary_files(sweep)
    assert (summary["jobs"], summary["completed"], summary["failed"]) == (3, 3, 0)
    acc = summary["metrics"]["test/acc"]
    values = [r["metrics"]["test/acc"] for r in summary["runs"]]
    assert acc["n"] == 3 and acc["min"] == min(values) and acc["max"] == max(values)
    assert acc["ci95_low"] < acc["mean"] < acc["ci95_high"]
    assert sorted(r["seed"] for r in summary["runs"]) == [0, 1, 2]
    assert len({r["fingerprint"] for r in summary["runs"]}) == 3
    table = (sweep / "summary.md").read_text()
    for r in summary["runs"]:
        assert r["fingerprint"][:16] in table
    assert summary["reproducibility_checked"] is False

    # The same summary, rebuilt from disk by the command's main, in process (`python -m framework.sweep`
    # itself: test_sweep_command_says_when_a_folder_is_not_a_sweep).
    for name in ("summary.json", "summary.md", "val_curves.png"):
        (sweep / name).unlink()
    assert sweep_main([str(sweep)]) == 0
    assert json.loads((sweep / "summary.json").read_text())["metrics"] == summary["metrics"]


@pytest.mark.slow
def test_jobs_in_one_process_do_not_leak_state_into_each_other(tmp_path, trained_run):
    # The basic launcher runs both jobs in one process: strict must not stay on for the second,
    # and each job's randomness must start from its own seed.
    sweep = tmp_path / "sweep"
    # Hydra's sweep syntax: the strict re-launch (PYTHONHASHSEED) must see strict inside it.
    started = start_multirun("determinism=choice(strict,seeded)", "seed=0", *QUICK, sweep_dir=sweep)
    # Meanwhile, on the other CPU: the single runs the jobs must equal.
    one_thread = fingerprint_of(trained_run, "seed=0", ONE_THREAD)
    expected = [one_thread, fingerprint_of(trained_run, "seed=0")]
    proc = finish_together({"sweep": started})["sweep"]
    assert proc.returncode == 0, proc.stderr
    first, second = (read_summary(sweep / str(i)) for i in (0, 1))
    assert first["determinism"]["deterministic_algorithms"] is True
    assert second["determinism"]["deterministic_algorithms"] is False
    # strict pins one thread; the seeded job after it is back to every CPU.
    assert first["determinism"]["num_threads"] == 1
    assert first["determinism"]["pythonhashseed"] == os.environ.get("PYTHONHASHSEED", "0")  # re-launched
    assert second["determinism"]["num_threads"] == len(os.sched_getaffinity(0))
    assert [first["fingerprint"], second["fingerprint"]] == expected


@pytest.mark.slow
def test_a_sweep_with_a_failing_job_still_summarizes_the_others(basic_sweeps):
    sweep, proc = basic_sweeps["failing"]
    assert proc.returncode == 1  # a failed job makes the sweep fail, after the summary
    assert "1 of 3 jobs failed" in proc.stderr
    summary = assert_summary_files(sweep)
    assert (summary["completed"], summary["failed"]) == (2, 1)
    failed = next(r for r in summary["runs"] if r["status"] == "failed")
    assert "Invalid learning rate" in failed["error"]
    # A configuration per learning rate: the two that completed are not pooled.
    assert [c["metrics"].get("test/acc", {}).get("n") for c in summary["configurations"]] == [1, None, 1]
    assert "Failed jobs:" in (sweep / "summary.md").read_text()


# The parallel launcher (joblib) and a cluster's (submitit, locally): name -> its overrides.
LAUNCHED = {
    "joblib": ["hydra/launcher=parallel"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


@pytest.fixture(scope="module")
def launched_sweeps(tmp_path_factory) -> dict:
    """name -> (its sweep's folder, its finished command): a sweep of two seeds through each
    launcher of LAUNCHED, the two started side by side."""
    folder = tmp_path_factory.mktemp("launched")
    started = {
        name: start_multirun("seed=0,1", *QUICK, *launcher, sweep_dir=folder / name)
        for name, launcher in LAUNCHED.items()
    }
    return {name: (folder / name, proc) for name, proc in finish_together(started).items()}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHED)
def test_parallel_and_cluster_launchers_produce_the_summary(launched_sweeps, trained_run, launcher):
    sweep, proc = launched_sweeps[launcher]
    assert proc.returncode == 0, proc.stderr
    summary = assert_summary_files(sweep)
    assert (summary["jobs"], summary["completed"]) == (2, 2)
    # Each seed lands on the same bits as in a separate single run.
    assert next(r for r in summary["runs"] if r["seed"] == 0)["fingerprint"] == fingerprint_of(trained_run, "seed=0")


@pytest.mark.slow
def test_reproducibility_check_passes_when_deterministic_and_fails_when_not(tmp_path, capsys):
    # The two sweeps are independent: started side by side, one on each CPU.
    done = finish_together(
        {
            "good": start_multirun("seed=0,1", "repeat=0,1", *QUICK, ONE_THREAD, sweep_dir=tmp_path / "good"),
            "bad": start_multirun(
                "seed=0", "repeat=0,1", *QUICK, ONE_THREAD, "model=unseeded", sweep_dir=tmp_path / "bad"
            ),
        }
    )
    good, bad = done["good"], done["bad"]
    assert good.returncode == 0, good.stderr
    summary = json.loads((tmp_path / "good" / "summary.json").read_text())
    assert summary["all_reproduce"] is True and len(summary["reproducibility"]) == 2
    assert all(r["runs"] == 2 and r["reproduces"] for r in summary["reproducibility"])
    assert summary["metrics"]["test/acc"]["n"] == 2  # identical repeats are not counted twice
    assert "every seed reproduces" in (tmp_path / "good" / "summary.md").read_text()

    assert bad.returncode == 1
    assert "did not reproduce" in bad.stderr
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["all_reproduce"] is False
    assert len(summary["reproducibility"]) == 1 and not summary["reproducibility"][0]["reproduces"]
    capsys.readouterr()
    assert sweep_main([str(tmp_path / "bad")]) == 1  # the command's main, in process
    assert "did not reproduce" in capsys.readouterr().err


@pytest.mark.slow
def test_two_sweeps_started_together_get_their_own_directories(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "framework", "-m", "seed=0", *QUICK, "trainer.max_steps=2"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    assert all((s / "summary.md").is_file() and (s / "0" / "metrics.json").is_file() for s in sweeps)


def test_sweep_command_says_when_a_folder_is_not_a_sweep(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "framework.sweep", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "holds no sweep jobs" in proc.stderr


TINY = ["model=mlp", "trainer.max_steps=2", "logger=none"]


def assert_record_is_the_checkpoints(run: Path) -> dict:
    """The run's `.hydra/config.yaml` says what its checkpoint was trained with."""
    recorded = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    trained = yaml.safe_load(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"])
    for key in ("seed", "optimizer"):
        assert recorded[key] == trained[key], key
    assert not list((run / ".hydra").glob("incoming-*"))
    return trained


LAUNCHERS = {"basic": [], "parallel": ["hydra/launcher=parallel"]}


@pytest.fixture(scope="module")
def sweeps_sharing_a_directory(tmp_path_factory) -> dict:
    """Per launcher, a sweep of two jobs given one directory; the sweeps started at once (each pays
    for its own interpreter): launcher -> (its sweep folder, its finished process)."""
    folder = tmp_path_factory.mktemp("sharing")
    same = ["seed=0,1", "hydra.sweep.subdir=same", *TINY]
    started = {
        name: start_in(ROOT, "-m", *same, f"hydra.sweep.dir={folder / name}", *launcher)
        for name, launcher in LAUNCHERS.items()
    }
    done = finish_together(started)
    return {name: (folder / name, done[name]) for name in LAUNCHERS}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_jobs_sharing_a_directory_the_refused_one_fails_the_sweep(sweeps_sharing_a_directory, launcher):
    sweep, proc = sweeps_sharing_a_directory[launcher]
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 jobs refused" in proc.stderr
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["jobs"], summary["completed"], summary["refused"]) == (2, 1, 1)
    trained = assert_record_is_the_checkpoints(sweep / "same")
    assert read_summary(sweep / "same")["seed"] == trained["seed"]
    refused = next(r for r in summary["runs"] if r["status"] == "refused")
    assert refused["seed"] == 1 - trained["seed"] and "same" in refused["dir"]


TINY_SWEEP = """# @package _global_
# A sweep in one command.
#   python -m framework recipe=tiny_sweep
defaults:
  - override /model: mlp
trainer:
  max_steps: 2
logger:
  tensorboard: false
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      seed: 0
"""


def test_a_recipe_sweep_rerun_with_another_value_is_refused_and_keeps_every_record(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "tiny_sweep.yaml").write_text(TINY_SWEEP)
    sweep = tmp_path / "sweep"
    first = run_in(tmp_path, "recipe=tiny_sweep", f"hydra.sweep.dir={sweep}", "resume=auto")
    assert first.returncode == 0, first.stderr
    assert "Warning: resume=auto" not in first.stderr  # point 11: the sweep's directory is fixed

    for rerun in (["optimizer.lr=0.05"], ["optimizer.lr=0.05", "resume=auto"]):
        proc = run_in(tmp_path, "recipe=tiny_sweep", f"hydra.sweep.dir={sweep}", *rerun)
        assert proc.returncode == 1, proc.stderr
        assert "1 of 2 jobs refused" in proc.stderr
        for job in [sweep / "0"]:
            assert assert_record_is_the_checkpoints(job)["optimizer"]["lr"] == 0.1
            assert read_summary(job)["status"] == "completed" and "resumes" not in read_summary(job)
