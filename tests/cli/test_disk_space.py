"""No room for the checkpoints is found before training; a disk that fills during a save stops the
run with one line, keeps its checkpoints and resumes exactly. Through the real command line."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import finish_together, read_jsonl, read_summary, start_cli, train_in_process, wait_until_stopped

from framework.cli.compare import compare as differences
from framework.faults import STOP_ENV

NO_ROOM = [("16m", 10000, "not enough free disk space"), ("256m", 10, "free inodes")]


@pytest.fixture(scope="module")
def no_room(tmp_path_factory):
    """(size, inodes) -> (the run, its finished command): each case's run on a real, small file
    system (tmpfs, as conftest's small_disk mounts), the commands started at once (each pays for
    its own interpreter)."""
    folder, disks = tmp_path_factory.mktemp("no_room"), {}
    try:
        for size, inodes, _ in NO_ROOM:
            disk = folder / f"{size}-{inodes}"
            disk.mkdir()
            options = f"size={size},nr_inodes={inodes}"
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True, text=True
            )
            if mounted.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
            disks[size, inodes] = disk
        started = {
            key: start_cli(disk / "run", "model=mlp", "trainer.max_epochs=1", "logger=none")
            for key, disk in disks.items()
        }
        done = finish_together(started)
        yield {key: (disk / "run", done[key]) for key, disk in disks.items()}
    finally:
        for disk in disks.values():
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("size,inodes,says", NO_ROOM)
def test_no_room_for_checkpoints_is_found_before_training_and_recorded(no_room, size, inodes, says):
    run, proc = no_room[size, inodes]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr
    assert read_summary(run)["status"] == "failed"  # not left at "running"
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)


# One epoch of the MLP in one process (20 steps), last.pt and a periodic file every 5 steps.
ONE_PROCESS = ["model=mlp", "trainer.max_epochs=1", "logger=none", "checkpoint.every_n_steps=5"]


@pytest.fixture
def one_process_straight(trained_run):
    return trained_run(*ONE_PROCESS)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all of `disk`'s free space but `leave` bytes."""
    usage = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, usage.f_bavail * usage.f_frsize - leave)
    return filler


@pytest.mark.parametrize("saving", ["checkpoint.async_save=false", "checkpoint.async_save=true"])
def test_a_disk_that_fills_during_a_save_gets_one_line_and_the_resume_is_exact(
    one_process_straight, small_disk, tmp_path, monkeypatch, saving
):
    """The second save stops itself after its room check; the disk is filled (room left for
    metrics.json, not for the checkpoint); the write meets a real ENOSPC."""
    run = small_disk("80m", 10000) / "run"
    monkeypatch.setenv(STOP_ENV, "room_checked:2")
    proc = start_cli(run, *ONE_PROCESS, saving)
    try:
        wait_until_stopped(proc)
        filler = fill(run.parent, leave=64 * 1024)
        os.kill(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    finally:  # a run stopped again, or never stopped, is not left behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    says = f"no space left on device while writing checkpoint {run / 'checkpoints' / 'last.pt'}"
    assert proc.returncode == 1 and "Traceback" not in stderr and says in stderr, stderr
    summary = read_summary(run)
    assert summary["status"] == "failed" and says in summary["error"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["index.json", "last.pt", "step_00000005.pt"]  # no temporary file left
    filler.unlink()
    monkeypatch.delenv(STOP_ENV)
    train_in_process(run, *ONE_PROCESS, saving, "resume=auto")  # the requeue, in process: what it saved resumes
    assert differences(one_process_straight, run) == []
