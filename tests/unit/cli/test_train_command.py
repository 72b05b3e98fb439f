"""`python -m framework` carries out its launch plan: printing, exit codes, exec, making room, then
Hydra's main with the planned command line. In this process: exec and Hydra's main are stand-ins
where a test does not need them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from framework.cli import train
from framework.runs.layout import MARKER


@pytest.fixture
def hydra_runs(monkeypatch):
    """Hydra's main replaced: what it would be called with (sys.argv, HYDRA_FULL_ERROR, tracebacks)."""
    calls = []
    monkeypatch.setattr(sys, "argv", ["framework"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "untouched")  # restored after the test

    def run_hydra(tracebacks: bool) -> None:
        calls.append((sys.argv[1:], os.environ["HYDRA_FULL_ERROR"], tracebacks))

    monkeypatch.setattr(train, "run_hydra", run_hydra)
    return calls


def a_run(folder: Path, ours: bool = True) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "global_step": 3}))
    if ours:
        (folder / MARKER).write_text("{}")
    return folder


def test_the_version_is_printed_and_hydra_never_runs(hydra_runs, capsys):
    train.carry_out(train.LaunchPlan(print_version=True))
    out = capsys.readouterr().out
    assert out.startswith("framework ") and "Hydra " in out and "torch " in out and hydra_runs == []


def test_an_error_is_one_line_on_stderr_and_its_exit_code(hydra_runs, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.carry_out(train.LaunchPlan(error="seed: not a number", exit_code=1))
    assert stopped.value.code == 1 and capsys.readouterr().err == "Error: seed: not a number\n"
    assert hydra_runs == []


def test_a_relaunch_replaces_the_process_with_its_command_and_environment(hydra_runs, monkeypatch):
    execs = []

    def execve(path, args, env):
        execs.append((path, args, env))
        raise SystemExit(0)  # exec never returns

    monkeypatch.setattr(os, "execve", execve)
    relaunch = train.launch_plan.Relaunch(("/bin/py", "-m", "framework", "seed=1"), {"PYTHONHASHSEED": "0"})
    with pytest.raises(SystemExit):
        train.carry_out(train.LaunchPlan(relaunch=relaunch))
    assert execs == [("/bin/py", ["/bin/py", "-m", "framework", "seed=1"], {"PYTHONHASHSEED": "0"})]


def test_room_is_made_then_hydra_runs_with_the_planned_command_line(hydra_runs, tmp_path, capsys):
    run = a_run(tmp_path / "run")
    room = train.launch_plan.MakeRoom(run, "archive", "hydra.run.dir")
    train.carry_out(train.LaunchPlan(make_room=room, hydra_argv=(f"hydra.run.dir={run}", "seed=1")))
    archived = list(tmp_path.glob("run.archived-*"))
    assert len(archived) == 1 and (archived[0] / "metrics.json").is_file() and not run.exists()
    assert capsys.readouterr().err == f"the run that was in {run} is now in {archived[0]}\n"
    assert hydra_runs == [([f"hydra.run.dir={run}", "seed=1"], "1", False)]


def test_room_that_may_not_be_made_is_refused_in_one_line_and_nothing_moves(hydra_runs, tmp_path, capsys):
    run = a_run(tmp_path / "run", ours=False)
    room = train.launch_plan.MakeRoom(run, "overwrite", "hydra.run.dir")
    with pytest.raises(SystemExit) as stopped:
        train.carry_out(train.LaunchPlan(make_room=room, hydra_argv=("seed=1",)))
    err = capsys.readouterr().err
    assert stopped.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"Error: existing_run=overwrite leaves hydra.run.dir={run} as it is: it has no {MARKER}")
    assert (run / "metrics.json").is_file() and hydra_runs == []


def test_the_run_directory_rank_0_proposes_reaches_hydra(hydra_runs):
    """One process: rank 0's proposal is its own (framework.distributed.from_main)."""
    train.carry_out(train.LaunchPlan(hydra_argv=("seed=1",), run_dir_from_rank_0="outputs/a b", show_tracebacks=True))
    assert hydra_runs == [(["seed=1", "hydra.run.dir='outputs/a b'"], "1", True)]
