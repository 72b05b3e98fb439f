"""TrainState's optional pieces: the weights' moving average ("ema"), early stopping and the
user's callbacks. Every captured bit comes back, leaving any of them out of restore is caught
(as tests/unit/engine/test_state.py does for the other pieces), and a checkpoint of an older
version, which has none of them, starts them fresh."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from framework.engine.callbacks import Callbacks
from framework.engine.early_stopping import EarlyStopping
from framework.engine.ema import N_AVERAGED, build_ema
from framework.engine.state import PIECES, TrainState

OPTIONAL = ("ema", "early_stopping", "callbacks")
OPTIONAL_KEYS = ("ema_state_dict", "early_stopping", "callbacks_state")


def leaves(tree, path: str = "") -> list[tuple[str, object]]:
    """(path, value) for every leaf of nested dicts, lists and tuples, the containers' types in the paths."""
    if isinstance(tree, dict):
        return [(f"{path}{{}}", sorted(tree))] + [x for k in tree for x in leaves(tree[k], f"{path}/{k}")]
    if isinstance(tree, (list, tuple)):
        return [(f"{path}{type(tree).__name__}", len(tree))] + [
            x for i, v in enumerate(tree) for x in leaves(v, f"{path}/{i}")
        ]
    return [(path, tree)]


def frozen(tree):
    """A copy of a captured state that later steps cannot change: capture() hands out the live
    tensors (a save point's snapshot copies them), and EMA updates its average in place."""
    if isinstance(tree, dict):
        return {k: frozen(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(frozen(v) for v in tree)
    return tree.clone() if isinstance(tree, torch.Tensor) else tree


def same_bits(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        both = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        return both and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b


def assert_same(a, b) -> None:
    """Every leaf of `a` equals `b`'s, to the bit; the first that does not is named."""
    pairs = list(zip(leaves(a), leaves(b), strict=True))
    for (path_a, x), (path_b, y) in pairs:
        assert path_a == path_b and same_bits(x, y), path_a


def train_a_little(state: TrainState, steps: int) -> None:
    """SGD steps on random batches, drawing from every global stream, counted as the loop counts them."""
    for _ in range(steps):
        x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
        loss = torch.nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.global_step += 1
        state.position += 1
        state.last_loss = loss.item()
        state.epoch_loss_sum += state.last_loss
    random.random()
    np.random.rand(2)


def make_state() -> TrainState:
    """A TrainState with all three optional pieces on, as Training builds it; the callback
    (tests/user_modules.py's StepTally) draws from its own generator, keyed by the seed and step."""
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    training = SimpleNamespace(cfg=SimpleNamespace(seed=0))  # what a callback's RunView reads
    section = OmegaConf.create({"tally": {"_target_": "user_modules.StepTally", "scale": 2.0}})
    callbacks = Callbacks(section, training)
    stopping = EarlyStopping("val/loss", "min", patience=3, min_delta=0.0)
    state = TrainState(model, optimizer, scheduler, scaler, build_ema(model, 0.9), stopping, callbacks)
    training.state = state
    return state


def advance(state: TrainState, steps: int) -> None:
    """Train a little, as the loop does after each optimizer step: the average follows the
    weights, a callback is called, and one validation reaches early stopping."""
    for _ in range(steps):
        train_a_little(state, 1)
        state.ema.update_parameters(state.model)
        state.callbacks.call("on_step_end")
    state.early_stopping.update({"val/loss": random.random()}, state.global_step)


def test_every_captured_bit_of_the_optional_pieces_is_restored():
    state = make_state()
    advance(state, 4)
    saved = frozen(state.capture())
    assert int(saved["ema_state_dict"][N_AVERAGED]) == 4
    assert set(saved["ema_state_dict"]) == {*saved["model_state_dict"], N_AVERAGED}  # the model's own keys
    assert saved["callbacks_state"]["tally"]["steps"] == 4
    assert saved["early_stopping"]["best"] is not None
    advance(state, 5)  # scramble every piece
    assert int(state.ema.n_averaged) == 9 and state.callbacks.named["tally"].steps == 9
    state.restore(saved)
    assert_same(state.capture(), saved)


# "model" too: with a frozen copy of the capture, the weights are checked as well.
@pytest.mark.parametrize("piece", [*OPTIONAL, "model"])
def test_an_optional_piece_left_out_of_restore_is_caught(piece):
    state = make_state()
    advance(state, 4)
    saved = frozen(state.capture())
    # Two validations, the second certainly without improvement: early stopping's count moves.
    advance(state, 3)
    state.early_stopping.update({"val/loss": float("inf")}, state.global_step)
    state.restore(saved, [p for p in PIECES if p != piece])
    with pytest.raises(AssertionError):
        assert_same(state.capture(), saved)
    state.restore(saved)  # the control: restoring every piece brings back every bit
    assert_same(state.capture(), saved)


def test_a_checkpoint_of_an_older_version_starts_the_optional_pieces_fresh(caplog):
    trained = make_state()
    advance(trained, 4)
    older = {k: v for k, v in frozen(trained.capture()).items() if k not in OPTIONAL_KEYS}
    resumed = make_state()  # built afresh, as a resumed run builds it
    with caplog.at_level(logging.WARNING, logger="framework"):
        resumed.restore(older)
    assert int(resumed.ema.n_averaged) == 0
    assert "has no moving average of the weights" in caplog.text
    assert "callback tally has no state in the checkpoint" in caplog.text
    assert resumed.early_stopping.state_dict() == EarlyStopping("val/loss", "min", patience=3).state_dict()
    assert resumed.callbacks.named["tally"].steps == 0
    # The average starts at the restored weights (what a resume's check validates), and the
    # first update after resuming copies them.
    assert_same(resumed.model_weights(), older["model_state_dict"])
    assert_same(resumed.average_weights(), {**older["model_state_dict"], N_AVERAGED: torch.tensor(0)})
    resumed.ema.update_parameters(resumed.model)
    assert_same(resumed.average_weights(), {**older["model_state_dict"], N_AVERAGED: torch.tensor(1)})


def test_with_the_optional_pieces_off_the_checkpoint_says_so():
    plain = make_state()
    plain.ema = plain.early_stopping = plain.callbacks = None
    saved = plain.capture()
    assert (saved["ema_state_dict"], saved["early_stopping"], saved["callbacks_state"]) == (None, None, {})
    plain.restore(make_state().capture())  # a checkpoint with them restores into a run without them
