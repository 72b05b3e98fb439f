"""Sharded training (trainer.strategy=fsdp) through the real command line. Under torchrun, 2
processes on CPU (gloo): a run stopped at an epoch end, mid-epoch, by a kill inside a save on
rank 0 and by SIGTERM resumes to the bit of the run never stopped (synchronous saves: the epoch
end and a kill; background saves: mid-epoch, a kill and SIGTERM); a checkpoint of one world
size continues on another only when allowed, and is then recorded off its trajectory. In one
process: a save killed at each of its other commit boundaries leaves a run that resumes
exactly; a save that fails in the background stops the run with one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    TESTS,
    compose_config,
    read_summary,
    run_cli,
    start_cli,
    train_in_process,
    wait_until_stopped,
)

from framework.checkpoint import storage
from framework.cli.compare import compare as differences
from framework.cli.compare import tensor_differences
from framework.config.errors import ConfigError
from framework.faults import KILL_ENV, STOP_ENV
from framework.runs import layout, resume

# Two epochs of the MLP on digits: 10 steps an epoch on each of 2 ranks. A periodic directory
# every 3 steps, the newest 2 kept; a line of metrics.jsonl every step (for the signal's timing);
# one intra-op thread, a rank's share of 2 CPUs, in this process too.
RUN = ["model=mlp", "trainer.max_epochs=2", "logger=none", "trainer.strategy=fsdp", "trainer.log_every_n_steps=1",
       "checkpoint.every_n_steps=3", "checkpoint.keep_last_n=2", "determinism.num_threads=1"]  # fmt: skip
SAVINGS = ("checkpoint.async_save=false", "checkpoint.async_save=true")
SYNC, ASYNC = SAVINGS


def torchrun(run_dir: Path, *overrides: str, env: dict | None = None, background: bool = False):
    """`torchrun --standalone --nproc_per_node=2 -m framework` (as tests/cli/test_distributed.py), with `env`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "framework"]
    cmd += [f"hydra.run.dir={run_dir}", *overrides]
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


def stopped_by_sigterm(run_dir: Path, *overrides: str, after_step: int) -> subprocess.CompletedProcess:
    """The command under torchrun, sent SIGTERM (passed on to both ranks) once it has logged
    `after_step` (train.log, which a killed run before it may have reached that step in too)."""
    log, line = run_dir / "train.log", f" step {after_step} train/loss "
    before = log.read_text().count(line)
    proc = torchrun(run_dir, *overrides, background=True)
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count(line) == before:
            assert proc.poll() is None and time.monotonic() < deadline, f"step {after_step} never logged"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finished(proc: subprocess.CompletedProcess, run: Path) -> tuple:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc, read_summary(run)


def stopped_and_resumed(folder: Path, stops: list[tuple], *overrides: str) -> dict:
    """One run of `overrides`, started by the first of `stops` and resumed by each of the others
    in turn. A stop is ("max_steps", N), ("kill", "BOUNDARY:N"), ("sigterm", STEP: sent once that
    step is logged) or ("end",). What each command left (its process and summary), and copies of
    the run after the first command and of the checkpoints the kill left (the tests read them)."""
    run, left = folder / "run", {}
    for i, (how, *what) in enumerate(stops):
        command = [*overrides, *(["resume=auto"] if i else []), "trainer.max_steps=null"]
        if how == "max_steps":
            left[how, what[0]] = finished(torchrun(run, *command, f"trainer.max_steps={what[0]}"), run)
        elif how == "kill":
            left[how] = torchrun(run, *command, env={KILL_ENV: what[0]}), None
            shutil.copytree(run / layout.CHECKPOINTS, folder / "killed" / layout.CHECKPOINTS)
        elif how == "sigterm":
            left[how] = stopped_by_sigterm(run, *command, after_step=what[0]), read_summary(run)
        else:
            left[how] = finished(torchrun(run, *command), run)
        if i == 0:
            shutil.copytree(run, folder / "first")
    return {"run": run, "first": folder / "first", "killed": folder / "killed", **left}


# Synchronous saves: stopped at the first epoch's end (max_steps), killed on rank 0 in step 12's
# save once its directory is whole under the temporary name (rank 1 waiting), then resumed to the
# end. In the background: stopped mid-epoch (max_steps), killed in the epoch end's save once its
# directory is renamed into place but not yet listed (it is resumed), by SIGTERM (a save may be
# in flight), resumed to the end. The signal leaves 9 steps to stop in. (A SIGTERM with
# synchronous saves too would cost a torchrun start, 6 s of the full suite's budget: the
# signal's path to a save is the same, and tests/cli/test_distributed.py stops DDP that way.)
CHAINS = {
    SYNC: [("max_steps", 10), ("kill", "written:1"), ("end",)],
    ASYNC: [("max_steps", 7), ("kill", "renamed:2"), ("sigterm", 11), ("end",)],
}
# The step `last` holds after each chain's kill: the save's before the killed one, or the killed one's.
LAST_AFTER_KILL = {SYNC: 10, ASYNC: 10}


# One process (a one-rank group), one thread (two would spin on 2 CPUs): 20 steps, a directory
# every 3 steps, the newest 2 kept (tests/integration/test_sharded_store.py trains the same run
# never stopped).
ONE_PROCESS = ["model=mlp", "trainer.max_epochs=1", "logger=none", "trainer.strategy=fsdp",
               "checkpoint.every_n_steps=3", "checkpoint.keep_last_n=2", "determinism.num_threads=1"]  # fmt: skip

# Each kill in turn, each resuming what the one before left: (boundary, which time it is reached
# in that process, the step `last` holds after it). Before anything is written (step 6's save:
# `last` stays step 3's), once listed (step 9's `last`, its periodic name not made yet), once
# the periodic name exists but is not listed (step 15's), once retention is done (step 18's).
KILLS = [("room_checked:2", 3), ("indexed:2", 9), ("linked:2", 15), ("retained:1", 18)]


def killed_in_turn(run: Path) -> list:
    """Each kill's process, and a copy of the checkpoints it left."""
    left = []
    for i, (boundary, _) in enumerate(KILLS):
        resumed = ["resume=auto"] if i else []
        proc = run_cli(run, *ONE_PROCESS, *resumed, env={KILL_ENV: boundary}, check=False)
        copy = shutil.copytree(run / layout.CHECKPOINTS, run.parent / f"after_{i}" / layout.CHECKPOINTS)
        left.append((proc, copy.parent))
    return left


def failed_in_the_background(run: Path) -> tuple[int, str]:
    """A background save whose temporary directory is replaced by a file while the process is
    stopped after its room check (step 6's save): DCP cannot write there."""
    proc = start_cli(run, *ONE_PROCESS, "checkpoint.async_save=true", env={STOP_ENV: "room_checked:2"})
    try:
        wait_until_stopped(proc)
        (tmp,) = (run / layout.CHECKPOINTS).glob(layout.TEMPORARIES)
        tmp.rmdir()
        tmp.write_text("in the way")
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every command of this file, in lanes side by side (each pays for its interpreters and its
    process group): the straight run, the two chains, the one-process kills, the failing
    background save, and a one-process checkpoint (trained here meanwhile) continued on 2 ranks."""
    folder = tmp_path_factory.mktemp("fsdp")
    lanes = {"straight": folder / "straight", SYNC: folder / "sync", ASYNC: folder / "async"}
    lanes.update(killed=folder / "killed", failed=folder / "failed")
    one = folder / "one_to_two"
    lanes["killed"].mkdir()
    with ThreadPoolExecutor(len(lanes)) as pool:
        started = {
            "straight": pool.submit(torchrun, lanes["straight"], *RUN),
            **{
                saving: pool.submit(stopped_and_resumed, lanes[saving], stops, *RUN, saving)
                for saving, stops in CHAINS.items()
            },
            "killed": pool.submit(killed_in_turn, lanes["killed"] / "run"),
            "failed": pool.submit(failed_in_the_background, lanes["failed"]),
        }
        train_in_process(one, *RUN, "trainer.max_steps=10")  # mid-epoch: 20 steps an epoch
        continued = torchrun(one, *RUN, "resume=auto", "trainer.max_steps=null", "allow_config_changes=true")
        done = {name: lane.result() for name, lane in started.items()}
    finished(done["straight"], lanes["straight"])
    done["killed"] = lanes["killed"] / "run", done["killed"]
    done["failed"] = lanes["failed"], done["failed"]
    return {**done, "straight": lanes["straight"], "one_to_two": (one, continued)}


def final_state(run: Path) -> dict:
    """The final `last` directory's model and optimizer, whole, and its counters."""
    from framework.checkpoint import dcp_io

    store = storage.for_folder(run / layout.CHECKPOINTS, compose_config(*RUN))
    ckpt, _ = store.read("last")
    return {**dcp_io.load_whole(store.where("last")), "epoch": ckpt["epoch"], "global_step": ckpt["global_step"]}


def test_the_straight_run_keeps_two_periodic_directories_and_its_aliases(runs):
    kept = sorted(p.name for p in (runs["straight"] / layout.CHECKPOINTS).iterdir())
    assert kept == ["best", "index.json", "last", "step_00000015", "step_00000018"]  # no temporary left
    summary = read_summary(runs["straight"])
    assert summary["status"] == "completed" and summary["global_step"] == 20


@pytest.mark.parametrize("saving", SAVINGS)
def test_stopped_at_an_epoch_end_mid_epoch_by_a_kill_and_by_sigterm_the_run_resumes_exactly(runs, saving):
    """Each stop where it was asked for; the end equal to the straight run (synchronous saves) in
    its fingerprint, its history and its final checkpoint's tensors: background saves leave the
    trajectory as it is, and every kind of stop resumes exactly."""
    chain = runs[saving]
    for how, step in [stop for stop in CHAINS[saving] if stop[0] == "max_steps"]:
        _, summary = chain[how, step]
        assert (summary["status"], summary["stopped_by"], summary["global_step"]) == ("completed", "max_steps", step)
    killed, _ = chain["kill"]
    assert killed.returncode != 0, killed.stderr[-3000:]
    for _, at in [stop for stop in CHAINS[saving] if stop[0] == "sigterm"]:
        proc, summary = chain["sigterm"]
        assert summary["status"] == "preempted" and at <= summary["global_step"] < 20, (summary, proc.stderr[-3000:])
    _, summary = chain["end"]
    assert summary["status"] == "completed" and len(summary["resumes"]) == len(CHAINS[saving]) - 1
    assert differences(runs["straight"], chain["run"]) == []
    assert tensor_differences(final_state(runs["straight"]), final_state(chain["run"])) == []


@pytest.mark.parametrize("saving", SAVINGS)
def test_a_save_killed_on_rank_0_leaves_the_newest_whole_checkpoint_to_resume_from(runs, saving):
    """Written (not yet renamed): `last` is still the save's before; renamed (not yet listed):
    `last` is the killed save's, read by its own manifest. A temporary directory, whole as it may
    be, is never taken for a checkpoint."""
    killed = runs[saving]["killed"]
    cfg = compose_config(*RUN, saving)
    listed = storage.for_run(cfg, killed).entry("last")["step"]
    if saving == SYNC:  # the whole directory (step 12's) the kill left under its temporary name
        (left,) = (killed / layout.CHECKPOINTS).glob(layout.TEMPORARIES)
        assert (left / "checksums.json").is_file() and listed == 10
    else:  # index.json still describes the `last` the renamed one replaced
        assert listed == 9
    point = resume.find("auto", killed, cfg)
    assert point.path.name == "last" and point.ckpt["global_step"] == LAST_AFTER_KILL[saving]
    assert point.ckpt["meta"]["world_size"] == 2


def test_a_two_rank_checkpoint_on_one_process_is_refused_then_allowed_and_recorded(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[SYNC]["first"], run)  # stopped at the first epoch's end
    before = (run / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\), this run has 1") as refused:
        train_in_process(run, *RUN, "resume=auto", "trainer.max_steps=null")
    assert "\n" not in str(refused.value)
    assert (run / "metrics.json").read_bytes() == before
    summary = train_in_process(run, *RUN, "resume=auto", "trainer.max_steps=null", "allow_config_changes=true")
    assert summary["status"] == "completed" and summary["global_step"] == 30  # one process: 20 steps an epoch
    assert summary["follows_original_trajectory"] is False
    # Resharded whole: the validation loss this process computes on the loaded weights is the one
    # the 2 ranks recorded, to the bit.
    assert summary["resumes"][-1]["val_check"]["identical"] is True


def test_a_one_process_checkpoint_continues_on_two_ranks_when_allowed_and_is_recorded(runs):
    run, continued = runs["one_to_two"]
    assert continued.returncode == 0, continued.stderr[-3000:]
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["follows_original_trajectory"] is False
    assert "resuming a 1-process checkpoint on 2" in (run / "train.log").read_text()
    assert summary["resumes"][-1]["val_check"]["identical"] is True  # resharded over 2 ranks, to the bit
    assert final_state(run)["global_step"] == summary["global_step"]
    # Stopped at batch 10 of the one process's 20: the 2 ranks go on at their batch 5 of 10, so
    # the rest of the epoch is trained on (5 steps), then a whole epoch (10): step 25, not 20.
    assert summary["global_step"] == 25


def test_a_save_killed_at_each_boundary_leaves_its_newest_whole_checkpoint_and_the_run_resumes_exactly(
    runs, trained_run
):
    run, kills = runs["killed"]
    cfg = compose_config(*ONE_PROCESS)
    for (boundary, step), (proc, after) in zip(KILLS, kills, strict=True):
        assert proc.returncode == -signal.SIGKILL, f"never reached {boundary}: {proc.stderr[-3000:]}"
        point = resume.find("auto", after, cfg)  # read back: every file checked against its checksums
        assert (point.path.name, point.ckpt["global_step"]) == ("last", step), boundary
    train_in_process(run, *ONE_PROCESS, "resume=auto")  # the last requeue, in process: to the end
    assert differences(trained_run(*ONE_PROCESS), run) == []
    assert len(read_summary(run)["resumes"]) == len(KILLS)
    # The periodic directory listed by no index when its run was killed (step 15's) is counted by
    # retention: the newest 2 are kept, nothing temporary is left.
    kept = sorted(p.name for p in (run / layout.CHECKPOINTS).iterdir())
    assert kept == ["best", "index.json", "last", "step_00000015", "step_00000018"]


def test_a_background_save_that_fails_stops_the_run_with_one_line_and_lists_nothing_it_did_not_write(runs):
    run, (code, stderr) = runs["failed"]
    assert code == 1 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert f"cannot write {run / layout.CHECKPOINTS / 'last'}: [Errno 17] File exists" in stderr, stderr
    summary = read_summary(run)
    assert summary["status"] == "failed" and "cannot write" in summary["error"]
    # The failed save is claimed nowhere: last is step 3's, in the index and on disk, and the
    # log says only that step 3's was saved.
    cfg = compose_config(*ONE_PROCESS)
    assert resume.find("auto", run, cfg).ckpt["global_step"] == 3
    assert {e["step"] for e in storage.for_run(cfg, run).index.entries.values()} == {3}
    log = (run / "train.log").read_text()
    assert "checkpoint at epoch 0 step 3: last, step_00000003" in log and "step 6: last" not in log
