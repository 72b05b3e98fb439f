"""Two ranks resume their own running losses; a disk that fills during a save stops the run with
one line, keeps the checkpoints it had and resumes exactly. Through the real command line."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import read_summary, run_cli, start_cli

from framework.cli.compare import compare as differences
from framework.engine.state import TrainState, as_rank_restores_it
from framework.faults import KILL_ENV, STOP_ENV

pytestmark = pytest.mark.slow

# One epoch of the MLP on two ranks (10 steps on each), last.pt and a periodic file every 4 steps.
TWO_RANKS = ["model=mlp", "trainer.max_epochs=1", "logger=none", "checkpoint.every_n_steps=4", "trainer.processes=2"]


@pytest.fixture(scope="module")
def two_ranks_straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("ranks") / "straight"
    run_cli(run, *TWO_RANKS)
    return run


def test_two_ranks_killed_after_a_save_inside_an_epoch_resume_to_the_same_epoch_loss(two_ranks_straight, tmp_path):
    """SIGKILL once last.pt of step 8 (of 10) is listed: the epoch's train/loss after the resume
    is the mean over the ranks of each rank's own running sum, as in the run never stopped."""
    run = tmp_path / "run"
    killed = run_cli(run, *TWO_RANKS, env={KILL_ENV: "indexed:2"}, check=False)
    assert killed.returncode != 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["global_step"] == 8
    run_cli(run, *TWO_RANKS, "resume=auto")
    assert differences(two_ranks_straight, run) == []
    ckpt = torch.load(run / "checkpoints" / "step_00000004.pt", weights_only=True)
    sums = [own["epoch_loss_sum"] for own in ckpt["counters_per_rank"]]
    assert sums[0] != sums[1] and ckpt["epoch_loss_sum"] == sum(sums) / 2


def state_with_losses(loss_sum: float) -> TrainState:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))
    state.epoch_loss_sum, state.last_loss = loss_sum, loss_sum / 4
    return state


def test_each_rank_restores_its_own_losses_and_a_file_without_them_its_plain_ones():
    ranks = [state_with_losses(1.5), state_with_losses(2.25)]
    ckpt = ranks[0].capture([state.own_state() for state in ranks])
    assert (ckpt["epoch_loss_sum"], ckpt["loss"]) == (1.875, 1.875 / 4)  # the mean over the ranks
    resumed = state_with_losses(0.0)
    for rank, state in enumerate(ranks):
        resumed.restore(as_rank_restores_it(ckpt, rank), ["counters"])
        assert (resumed.epoch_loss_sum, resumed.last_loss) == (state.epoch_loss_sum, state.last_loss)
    older = {k: v for k, v in ckpt.items() if k != "counters_per_rank"}
    resumed.restore(as_rank_restores_it(older, 0), ["counters"])
    assert resumed.epoch_loss_sum == 1.875


# One epoch of the MLP in one process (20 steps), last.pt and a periodic file every 5 steps.
ONE_PROCESS = ["model=mlp", "trainer.max_epochs=1", "logger=none", "checkpoint.every_n_steps=5"]


@pytest.fixture(scope="module")
def one_process_straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("disk") / "straight"
    run_cli(run, *ONE_PROCESS)
    return run


def wait_until_stopped(pid: int, timeout: float = 120) -> None:
    """Until the process has stopped itself (SIGSTOP): state T in /proc/PID/stat."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.01)
    pytest.fail(f"process {pid} never reached the boundary")


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
    wait_until_stopped(proc.pid)
    filler = fill(run.parent, leave=64 * 1024)
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    says = f"no space left on device while writing checkpoint {run / 'checkpoints' / 'last.pt'}"
    assert proc.returncode == 1 and "Traceback" not in stderr and says in stderr, stderr
    summary = read_summary(run)
    assert summary["status"] == "failed" and says in summary["error"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["index.json", "last.pt", "step_00000005.pt"]  # no temporary file left
    filler.unlink()
    monkeypatch.delenv(STOP_ENV)
    run_cli(run, *ONE_PROCESS, saving, "resume=auto")
    assert differences(one_process_straight, run) == []
