"""A save killed at any point leaves a run that resumes exactly, through the real command line."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import read_summary, run_cli, train_in_process

from framework.cli.compare import compare as differences

# Only last.pt, written at each epoch end: a save cut short can fall back on no other file.
ONLY_LAST = ["model=mlp", "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "logger=none",
             "checkpoint.monitor=null"]  # fmt: skip


# last.pt and a periodic file (a hard link to it) every 7 steps, the newest periodic one kept.
PERIODIC = [*ONLY_LAST, "checkpoint.every_n_steps=7", "checkpoint.keep_last_n=1"]


@pytest.fixture
def periodic_straight(trained_run):
    """The run never stopped (checkpoints never change a trajectory: test_resume.py)."""
    return trained_run(*PERIODIC)


ALL_BOUNDARIES = ("written", "renamed", "indexed", "linked", "retained")
CHAINS = {"checkpoint.async_save=false": ALL_BOUNDARIES, "checkpoint.async_save=true": ("written", "indexed")}


def killed_in_turn(run: Path, saving: str, boundaries) -> list:
    """The requeue command on `run`, killed at each of `boundaries` in turn: each one's process."""
    return [
        run_cli(run, *PERIODIC, saving, "resume=auto", env={"FRAMEWORK_TEST_KILL_AT": f"{boundary}:2"}, check=False)
        for boundary in boundaries
    ]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory) -> dict:
    """saving -> (its run, its killed commands); the two chains side by side, one on each CPU
    (each chain's commands one after the other: each resumes what the one before left)."""
    folder = tmp_path_factory.mktemp("killed")
    runs = {saving: folder / f"run{i}" for i, saving in enumerate(CHAINS)}
    with ThreadPoolExecutor(len(CHAINS)) as pool:
        chains = {saving: pool.submit(killed_in_turn, runs[saving], saving, b) for saving, b in CHAINS.items()}
        return {saving: (runs[saving], chain.result()) for saving, chain in chains.items()}


@pytest.mark.parametrize("saving,boundaries", list(CHAINS.items()))
def test_a_save_killed_at_each_of_its_boundaries_leaves_a_run_that_resumes_exactly(
    periodic_straight, killed_runs, saving, boundaries
):
    """The requeue command, killed (SIGKILL) at each boundary of a save in turn, each time in
    the second save of the process: temp file written, renamed (the index still describes the
    old file), indexed, linked (a periodic name not yet listed), retention done. Written in the
    background, the kill lands in that thread while training goes on (two boundaries: the
    commit order is the same code)."""
    run, killed_commands = killed_runs[saving]
    for boundary, killed in zip(boundaries, killed_commands, strict=True):
        assert killed.returncode == -signal.SIGKILL, f"never reached {boundary}: {killed.stderr}"
    train_in_process(run, *PERIODIC, saving, "resume=auto")  # the last requeue, in process: it runs to the end
    assert differences(periodic_straight, run) == []
    assert len(read_summary(run)["resumes"]) == len(boundaries)
    # A periodic file written but not yet listed when a run was killed is not left behind.
    assert [p.name for p in (run / "checkpoints").glob("step_*.pt")] == ["step_00000056.pt"]
