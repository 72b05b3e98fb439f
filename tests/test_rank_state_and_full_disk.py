"""Two ranks resume their own running losses. Through the real command line."""

from __future__ import annotations

import pytest
import torch
from helpers import run_cli

from framework.compare import compare as differences
from framework.faults import KILL_ENV
from framework.state import TrainState, as_rank_restores_it

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
