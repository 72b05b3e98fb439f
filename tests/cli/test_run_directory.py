"""Run directories through the real command line: an existing run is refused, archived or
overwritten only as asked and only if it is a run of ours; a live run is never touched; a
finished run run again changes nothing; a checkpoints path that is a file is found before training."""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from helpers import (
    finish_together,
    read_jsonl,
    read_summary,
    refused_in_one_line,
    run_cli,
    start_cli,
    start_in,
    tree,
    wait_until_stopped,
)

from framework.faults import STOP_ENV

# 20 steps an epoch; a periodic file every 10 steps, only the newest one kept.
BASE = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=1"]


@pytest.fixture
def stopped(cli_trained_run):
    """A run stopped at step 25 of 40, with last.pt, best.pt and step_00000020.pt (shared by the
    whole test session: copy_of it to change it)."""
    return cli_trained_run(*BASE, "trainer.max_steps=25")


def copy_of(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    return run


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_run_where_one_is_refused_and_the_old_one_kept(stopped, tmp_path):
    run, kept = copy_of(stopped, tmp_path), copy_of(stopped, tmp_path / "refused")
    before = files_of(run)
    # The refusal on a copy of its own, side by side with the archiving: one on each CPU.
    done = finish_together(
        {
            "refused": start_cli(kept, *BASE),
            "archived": start_cli(run, *BASE, "existing_run=archive", "trainer.max_steps=5"),
        }
    )
    proc, archived = done["refused"], done["archived"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "already holds a run (status 'completed', step 25)" in proc.stderr
    assert "resume=auto" in proc.stderr and "existing_run=archive" in proc.stderr
    assert files_of(kept) == before  # not even Hydra's .hydra/ or train.log

    assert archived.returncode == 0, archived.stderr
    (aside,) = tmp_path.glob("run.archived-*")
    assert files_of(aside) == before and "is now in" in archived.stderr
    fresh = read_summary(run)
    assert fresh["status"] == "completed" and fresh["global_step"] == 5 and "resumes" not in fresh

    first_fresh = files_of(run)
    overwritten = run_cli(run, *BASE, "existing_run=overwrite", "seed=1", "trainer.max_steps=5")
    assert "was deleted" in overwritten.stderr and files_of(run) != first_fresh
    assert read_summary(run)["seed"] == 1 and len(list(tmp_path.glob("run.archived-*"))) == 1


def test_a_second_process_in_a_run_directory_is_refused_and_the_first_goes_on(tmp_path, monkeypatch):
    run = tmp_path / "run"
    short = ["model=mlp", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "logger=none", "resume=auto"]
    # The first stops itself in its first save (step 20), holding the run, until the second is refused.
    monkeypatch.setenv(STOP_ENV, "room_checked:1")
    first = start_cli(run, *short)
    monkeypatch.delenv(STOP_ENV)
    try:
        wait_until_stopped(first)
        second = run_cli(run, *short, check=False)
        assert first.poll() is None, "the first run ended before the second started"
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:  # a run stopped, or never stopped, is not left behind
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"is in use by process {first.pid} on " in second.stderr
    assert first.returncode == 0, err
    steps = [r["step"] for r in read_jsonl(run) if r["event"] == "step"]
    assert steps == list(range(1, 41))  # one history, not two interleaved
    assert not (run / ".lock").exists()  # released with the run


def test_rerunning_a_finished_run_changes_nothing_and_says_so(tmp_path):
    run = tmp_path / "run"
    config = ["model=mlp", "trainer.max_epochs=3", "logger=none", "trainer.max_steps=30", "resume=auto"]
    first = run_cli(run, *config)
    assert "no checkpoint" in first.stdout  # resume=auto with nothing to resume: a fresh start
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "metrics.jsonl")}
    proc = run_cli(run, *config)  # the same command again, as a requeue would
    assert "nothing left to train" in proc.stdout
    assert (run / ".hydra" / "config.yaml").exists() and list((run / ".hydra").glob("resume-*"))
    assert {name: (run / name).read_bytes() for name in before} == before
    assert read_summary(run)["global_step"] == 30


def test_a_checkpoints_path_that_is_a_file_is_found_before_training(refused_starts):
    folder, _, proc = refused_starts[a_checkpoints_path_that_is_a_file]
    run = folder / "run"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "checkpoints is not a folder" in proc.stderr
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)  # before the first step


TINY = ["model=mlp", "trainer.max_steps=2", "logger=none"]


# Long enough to act on while it trains: an epoch (20 steps, a checkpoint) every fraction of a second.
LONG = ["model=mlp", "trainer.max_epochs=500", "trainer.log_every_n_steps=1", "logger=none"]


@pytest.fixture
def finished_run(cli_trained_run) -> Path:
    """A finished run (shared by the whole test session: copy_of_run it to change it)."""
    return cli_trained_run(*TINY)


def copy_of_run(finished_run: Path, folder: Path) -> Path:
    shutil.copytree(finished_run, folder, dirs_exist_ok=True)
    return folder


def test_existing_run_never_acts_on_the_current_directory_or_one_above_it(finished_run, tmp_path):
    """A project folder with sources and a run in it (as `hydra.run.dir=.` leaves one), then every
    existing_run value from it and from a folder below it: all refused, nothing moved or deleted."""
    project = copy_of_run(finished_run, tmp_path / "project")
    (project / "src").mkdir()
    (project / "src" / "model.py").write_text("precious")
    (project / "sub").mkdir()
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "sentinel").write_text("precious")
    before = tree(tmp_path)

    # All started at once (each pays for its own interpreter): each is refused before it takes any lock.
    attempts = [(".", "refuse"), (".", "archive"), (".", "overwrite"), ("", "overwrite")]
    started = {
        (run_dir, policy): start_in(project, f"hydra.run.dir={run_dir}", f"existing_run={policy}", *TINY)
        for run_dir, policy in attempts
    }
    started["..", "archive"] = start_in(project / "sub", "hydra.run.dir=..", "existing_run=archive", *TINY)
    for (_, policy), proc in finish_together(started).items():
        says = "already holds a run" if policy == "refuse" else "it is the current directory or one above it"
        refused_in_one_line(proc, says)
    assert tree(tmp_path) == before


# Each start refused before it trains, made in a folder of its own: -> (the folder to start in, the
# overrides, the folder that must not change or None). The three start at once (refused_starts).
def a_checkpoints_path_that_is_a_file(finished_run, folder):
    run = folder / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    return folder, [f"hydra.run.dir={run}", "model=mlp", "trainer.max_epochs=1", "logger=none"], None


def an_existing_run_through_a_link(finished_run, folder):
    link = folder / "link"
    link.symlink_to(copy_of_run(finished_run, folder / "run"))
    return folder, [f"hydra.run.dir={link}", "existing_run=overwrite", *TINY], folder


def a_recipe_into_a_finished_run(finished_run, folder):
    run = copy_of_run(finished_run, folder / "run")
    (folder / "recipes").mkdir()
    header = "# @package _global_\n# Always the same directory.\n#   python -m framework recipe=into_run\n"
    (folder / "recipes" / "into_run.yaml").write_text(f"{header}hydra:\n  run:\n    dir: {run}\n")
    return folder, ["recipe=into_run", "seed=1", *TINY], run


@pytest.fixture(scope="module")
def refused_starts(cli_trained_run, tmp_path_factory) -> dict:
    """Each case above, started at once (each pays for its own interpreter): its maker -> (its
    folder, the watched folder's files before the start, the finished process)."""
    finished_run = cli_trained_run(*TINY)
    folders, before, started = {}, {}, {}
    for make in (a_checkpoints_path_that_is_a_file, an_existing_run_through_a_link, a_recipe_into_a_finished_run):
        folders[make] = tmp_path_factory.mktemp(make.__name__)
        cwd, overrides, watched = make(finished_run, folders[make])
        before[make] = tree(watched) if watched else None
        started[make] = start_in(cwd, *overrides)
    done = finish_together(started)
    return {make: (folders[make], before[make], done[make]) for make in started}


def test_existing_run_through_a_link_is_refused_in_one_line(refused_starts):
    folder, before, proc = refused_starts[an_existing_run_through_a_link]
    link = folder / "link"
    refused_in_one_line(proc, f"existing_run=overwrite leaves hydra.run.dir={link} as it is: it is a symbolic link")
    assert tree(folder) == before


def test_a_live_run_is_never_touched_by_another_start(tmp_path, monkeypatch):
    """Archive and overwrite of a live run are refused naming its process (point 2), and so is a
    resume, which changes nothing of it: not its `.hydra/` record, not a line of its train.log
    (point 10)."""
    run = tmp_path / "run"
    (tmp_path / "sentinel").write_text("precious")
    # The live run stops itself in its third save (step 60: two epochs' checkpoints a resume would
    # take), holding the run and leaving the CPUs to the three others, until they are refused.
    monkeypatch.setenv(STOP_ENV, "room_checked:3")
    live = start_cli(run, *LONG)
    monkeypatch.delenv(STOP_ENV)
    try:
        wait_until_stopped(live)
        hydra_record = tree(run / ".hydra")
        # The three started at once (each pays for its own interpreter): none can take the live run's lock.
        attempts = ("existing_run=archive", "existing_run=overwrite", "resume=auto")
        for proc in finish_together({attempt: start_cli(run, *TINY, attempt) for attempt in attempts}).values():
            refused_in_one_line(proc, f"in use by process {live.pid} on ")
        assert live.poll() is None, "the live run ended"
        os.kill(live.pid, signal.SIGCONT)
        live.send_signal(signal.SIGTERM)
        live.communicate(timeout=120)
    finally:  # a run stopped, or never stopped, is not left behind
        if live.poll() is None:
            live.kill()
            live.communicate()
    assert live.returncode == 143  # it went on, and stopped with a checkpoint when told
    assert read_summary(run)["status"] == "preempted" and not list(tmp_path.glob("run.archived-*"))
    assert (tmp_path / "sentinel").read_text() == "precious" and tree(run / ".hydra") == hydra_record
    steps = [r["step"] for r in read_jsonl(run) if r["event"] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # its one history, whole
    # Every step's line in train.log, in order: none cut away by a refused process.
    log = (run / "train.log").read_text()
    logged = [int(n) for n in re.findall(r"\] - epoch \d+/500 step (\d+) train/loss \S+ lr \S+$", log, re.M)]
    assert logged == list(range(1, steps[-1] + 1))


def test_a_run_refused_by_a_recipes_directory_keeps_the_runs_hydra_record(refused_starts):
    folder, before, proc = refused_starts[a_recipe_into_a_finished_run]
    refused_in_one_line(proc, "already holds a run")
    assert tree(folder / "run") == before
