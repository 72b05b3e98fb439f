"""TrainState captures every piece and restores every piece it captures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from framework.engine.state import PIECES, TrainState, as_rank_restores_it, load_model_weights, strip_prefixes


def make_state(precision_scaler: bool = False) -> TrainState:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=precision_scaler, init_scale=1024.0, growth_interval=2)
    return TrainState(model, optimizer, scheduler, scaler)


def train_a_little(state: TrainState, steps: int) -> None:
    for _ in range(steps):
        x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
        loss = torch.nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad()
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        state.global_step += 1
        state.position += 1
        state.epoch_loss_sum += loss.item()
        state.last_loss = loss.item()
    random.random()
    np.random.rand(3)
    state.epoch += 1
    state.data_epoch += 2
    state.best_metric = random.random()


def assert_same(a, b, path=""):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("scaler", [False, True])
def test_every_captured_bit_is_restored(scaler):
    state = make_state(scaler)
    train_a_little(state, 4)
    saved = state.capture()
    train_a_little(state, 5)  # scramble every piece: weights, moments, schedule, counters, streams
    assert state.global_step == 9
    state.restore(saved)
    assert_same(state.capture(), saved)


def test_a_piece_left_out_of_restore_is_caught():
    state = make_state()
    train_a_little(state, 4)
    saved = state.capture()
    for piece in (
        "optimizer",
        "scheduler",
        "counters",
        "data_order",
        "data_position",
        "python_rng",
        "numpy_rng",
        "torch_rng",
    ):
        train_a_little(state, 3)
        state.restore(saved, [p for p in PIECES if p != piece])
        with pytest.raises(AssertionError):
            assert_same(state.capture(), saved)


def test_checkpoint_keys_are_the_plain_pytorch_names():
    saved = make_state().capture()
    assert {
        "epoch",
        "global_step",
        "model_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "scaler_state_dict",
        "loss",
        "best_metric",
        "rng_state",
        "cuda_rng_state",
        "numpy_rng_state",
        "python_rng_state",
        "rng_per_rank",
        "loader_state",
    } <= saved.keys()
    assert saved["cuda_rng_state"] == [] or torch.cuda.is_available()
    assert isinstance(saved["numpy_rng_state"]["keys"], torch.Tensor)  # not an ndarray


def test_wrapped_models_save_without_prefixes_and_prefixed_files_still_load():
    state = make_state()
    plain_keys = set(state.model.state_dict())
    state.model = torch.nn.DataParallel(state.model)  # keys gain a `module.` prefix
    assert set(state.model.state_dict()) != plain_keys
    assert set(state.capture()["model_state_dict"]) == plain_keys
    fresh = make_state().model
    prefixed = {f"module._orig_mod.{k}": v for k, v in state.capture()["model_state_dict"].items()}
    load_model_weights(fresh, prefixed, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state.model.module.state_dict().values()))
    assert set(strip_prefixes(prefixed)) == plain_keys


def test_strict_load_names_every_difference_and_non_strict_loads_what_fits():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 5), torch.nn.Linear(5, 2))
    with pytest.raises(RuntimeError) as err:
        load_model_weights(model, other.state_dict(), strict=True)
    message = str(err.value)
    assert "unexpected keys: 2.bias, 2.weight" in message
    assert "1.weight: checkpoint (5, 8) vs model (3, 8)" in message
    notes = load_model_weights(model, other.state_dict(), strict=False)
    assert torch.equal(model[0].weight, other[0].weight)  # what fits is loaded
    assert any("shape differences" in n for n in notes) and any("unexpected" in n for n in notes)


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
