"""What broke when run directories, sweeps and the command line were attacked a second time
(issue 17, points 1-3 and 9-12), each through the real command line.

Every test here was run against the code before its fix and failed there."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, TESTS, read_jsonl, read_summary, run_cli, start_cli, wait_for_step

from framework.runs.run_dir import RunDirRefused, make_room

pytestmark = pytest.mark.slow

TINY = ["model=mlp", "trainer.max_steps=2", "logger=none"]
# Long enough to act on while it trains: an epoch (20 steps, a checkpoint) every fraction of a second.
LONG = ["model=mlp", "trainer.max_epochs=500", "trainer.log_every_n_steps=1", "logger=none"]


def framework(cwd: Path, *args: str, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    """`python -m framework ARGS` started in `cwd`."""
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    cmd = [sys.executable, "-m", "framework", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300, **popen)


def start_framework(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "framework", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def refused_in_one_line(proc: subprocess.CompletedProcess, says: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr, proc.stderr


def tree(folder: Path) -> dict:
    """Every file below `folder` (links as links), with its bytes: what must not change."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[path.relative_to(folder)] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[path.relative_to(folder)] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    run_cli(run, *TINY)
    return run


def copy_of_run(finished_run: Path, folder: Path) -> Path:
    shutil.copytree(finished_run, folder, dirs_exist_ok=True)
    return folder


# ---- 1. existing_run deletes or moves only a run of ours ----------------------------------------
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

    for run_dir, policy in [(".", "refuse"), (".", "archive"), (".", "overwrite"), ("", "overwrite")]:
        proc = framework(project, f"hydra.run.dir={run_dir}", f"existing_run={policy}", *TINY)
        says = "already holds a run" if policy == "refuse" else "it is the current directory or one above it"
        refused_in_one_line(proc, says)
    refused_in_one_line(
        framework(project / "sub", "hydra.run.dir=..", "existing_run=archive", *TINY),
        "it is the current directory or one above it",
    )
    assert tree(tmp_path) == before


def home_folder(finished_run, tmp_path, small_disk):
    return copy_of_run(finished_run, tmp_path / "home"), "it is the home folder or the root of a file system"


def mount_point(finished_run, tmp_path, small_disk):
    return copy_of_run(finished_run, small_disk("64m", 1000)), "it is the home folder or the root of a file system"


def not_a_run_of_ours(finished_run, tmp_path, small_disk):
    folder = tmp_path / "theirs"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "train.py").write_text("precious")
    (folder / "metrics.json").write_text('{"status": "completed"}')  # another tool's
    return folder, "it has no .framework-run file"


def run_with_a_file_of_the_user(finished_run, tmp_path, small_disk):
    folder = copy_of_run(finished_run, tmp_path / "run")
    (folder / "notes.txt").write_text("precious")
    return folder, "it holds what no run writes (notes.txt): move that out first"


def link_to_a_run(finished_run, tmp_path, small_disk):
    link = tmp_path / "link"
    link.symlink_to(copy_of_run(finished_run, tmp_path / "run"))
    return link, "it is a symbolic link"


@pytest.mark.parametrize(
    "make", [home_folder, mount_point, not_a_run_of_ours, run_with_a_file_of_the_user, link_to_a_run]
)
@pytest.mark.parametrize("policy", ["archive", "overwrite"])
def test_existing_run_acts_only_on_a_run_of_ours(finished_run, tmp_path, small_disk, monkeypatch, make, policy):
    folder, says = make(finished_run, tmp_path, small_disk)
    (tmp_path / "sentinel").write_text("precious")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    before, inside = tree(tmp_path), tree(folder)
    with pytest.raises(RunDirRefused) as refused:
        make_room(folder, policy)
    assert str(refused.value).startswith(f"existing_run={policy} leaves hydra.run.dir={folder} as it is: {says}")
    assert tree(tmp_path) == before and tree(folder) == inside


def test_existing_run_through_a_link_is_refused_in_one_line(finished_run, tmp_path):
    link, says = link_to_a_run(finished_run, tmp_path, None)
    before = tree(tmp_path)
    proc = framework(tmp_path, f"hydra.run.dir={link}", "existing_run=overwrite", *TINY)
    refused_in_one_line(proc, f"existing_run=overwrite leaves hydra.run.dir={link} as it is: {says}")
    assert tree(tmp_path) == before


# ---- 2 and 10. a live run is never touched by another start ---------------------------------------
def test_a_live_run_is_never_touched_by_another_start(tmp_path):
    """Archive and overwrite of a live run are refused naming its process (point 2), and so is a
    resume, which changes nothing of it: not its `.hydra/` record, not a line of its train.log
    (point 10)."""
    run = tmp_path / "run"
    (tmp_path / "sentinel").write_text("precious")
    live = start_cli(run, *LONG)
    wait_for_step(live, run, 45)  # two epochs done: checkpoints a resume would take
    hydra_record = tree(run / ".hydra")
    for attempt in ("existing_run=archive", "existing_run=overwrite", "resume=auto"):
        refused_in_one_line(run_cli(run, *TINY, attempt, check=False), f"in use by process {live.pid} on ")
    assert live.poll() is None, "the live run ended"
    live.send_signal(signal.SIGTERM)
    live.communicate(timeout=120)
    assert live.returncode == 143  # it went on, and stopped with a checkpoint when told
    assert read_summary(run)["status"] == "preempted" and not list(tmp_path.glob("run.archived-*"))
    assert (tmp_path / "sentinel").read_text() == "precious" and tree(run / ".hydra") == hydra_record
    steps = [r["step"] for r in read_jsonl(run) if r["event"] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # its one history, whole
    # Every step's line in train.log, in order: none cut away by a refused process.
    log = (run / "train.log").read_text()
    logged = [int(n) for n in re.findall(r"\] - epoch \d+/500 step (\d+) train/loss \S+ lr \S+$", log, re.M)]
    assert logged == list(range(1, steps[-1] + 1))


# ---- 3. a refused job is a failed job, and its Hydra files never replace the run's ---------------
def multirun(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return framework(cwd, "-m", *args, env=env)


def assert_record_is_the_checkpoints(run: Path) -> dict:
    """The run's `.hydra/config.yaml` says what its checkpoint was trained with."""
    recorded = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    trained = yaml.safe_load(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"])
    for key in ("seed", "optimizer"):
        assert recorded[key] == trained[key], key
    assert not list((run / ".hydra").glob("incoming-*"))
    return trained


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=parallel"]], ids=["basic", "parallel"])
def test_jobs_sharing_a_directory_the_refused_one_fails_the_sweep(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = multirun(ROOT, "seed=0,1", "hydra.sweep.subdir=same", f"hydra.sweep.dir={sweep}", *TINY, *launcher)
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
    first = framework(tmp_path, "recipe=tiny_sweep", f"hydra.sweep.dir={sweep}", "resume=auto")
    assert first.returncode == 0, first.stderr
    assert "Warning: resume=auto" not in first.stderr  # point 11: the sweep's directory is fixed

    for rerun in (["optimizer.lr=0.05"], ["optimizer.lr=0.05", "resume=auto"]):
        proc = framework(tmp_path, "recipe=tiny_sweep", f"hydra.sweep.dir={sweep}", *rerun)
        assert proc.returncode == 1, proc.stderr
        assert "1 of 2 jobs refused" in proc.stderr
        for job in [sweep / "0"]:
            assert assert_record_is_the_checkpoints(job)["optimizer"]["lr"] == 0.1
            assert read_summary(job)["status"] == "completed" and "resumes" not in read_summary(job)


def test_a_run_refused_by_a_recipes_directory_keeps_the_runs_hydra_record(finished_run, tmp_path):
    run = copy_of_run(finished_run, tmp_path / "run")
    (tmp_path / "recipes").mkdir()
    header = "# @package _global_\n# Always the same directory.\n#   python -m framework recipe=into_run\n"
    (tmp_path / "recipes" / "into_run.yaml").write_text(f"{header}hydra:\n  run:\n    dir: {run}\n")
    before = tree(run)
    refused_in_one_line(framework(tmp_path, "recipe=into_run", "seed=1", *TINY), "already holds a run")
    assert tree(run) == before


# ---- 9. the command line: overrides Hydra cannot read, HYDRA_FULL_ERROR -------------------------
def test_an_unreadable_override_and_hydra_full_error_0_get_one_line(tmp_path):
    huge = framework(tmp_path, f"seed={'9' * 5000}")
    refused_in_one_line(huge, "cannot read the override seed=99999")
    assert len(huge.stderr.strip().splitlines()) == 1  # not the 5000 digits' traceback
    for value in ("0", ""):
        proc = framework(tmp_path, "optimizer.lrr=1", *TINY, env={"HYDRA_FULL_ERROR": value})
        refused_in_one_line(proc, "optimizer.lrr: torch.optim.SGD takes no argument 'lrr'")


# ---- 12. a stop signal stops a sweep with its summary, whenever and wherever it lands -------------
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
    proc = start_framework(ROOT, "-m", "seed=0,1,2", *TINY, "resume=auto", pause, f"hydra.sweep.dir={sweep}")
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
    proc = start_framework(
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
