"""User callbacks (framework/engine/callbacks.py) without training: the section's checks, the
calls and their errors, the state a checkpoint can hold, the view and its generator
(tests/integration/test_callbacks.py trains with them)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from user_modules import FailsAtStep, RandomDraws, SeenAt

from framework.config.errors import ConfigError
from framework.engine.callbacks import CallbackFailed, Callbacks, RunView, check_callbacks, not_plain

MODEL = torch.nn.Linear(2, 2)  # built once: building one draws its weights from the global stream


def fake_training(step: int = 3, seed: int = 0) -> SimpleNamespace:
    """What a RunView reads of Training."""
    return SimpleNamespace(
        state=SimpleNamespace(global_step=step, epoch=1),
        model=MODEL,
        run_dir=Path("/somewhere"),
        rank=0,
        cfg=OmegaConf.create({"seed": seed}),
    )


def section(**callbacks) -> OmegaConf:
    return OmegaConf.create(callbacks)


# ---- the section ------------------------------------------------------------------------
def test_entries_set_to_null_or_false_are_off():
    chosen = check_callbacks(section(a={"_target_": "user_modules.RandomDraws"}, b=None, c=False))
    assert list(chosen) == ["a"]
    assert check_callbacks(None) == {} and check_callbacks(section()) == {}


@pytest.mark.parametrize(
    "entry, says",
    [
        ({"_target_": "user_modules.FailsAtStep", "step": 2, "every": 3}, "callbacks.x.every: user_modules.FailsAtStep "
                                                                          "takes no argument 'every'. It takes: step"),
        ({"_target_": "user_modules.RandomDraws", "n": 1}, "callbacks.x.n: user_modules.RandomDraws takes no argument "
                                                           "'n'. It takes none."),
        ({"_target_": "no_such_module.Thing"}, "callbacks.x._target_=no_such_module.Thing: cannot import it ("),
        ({"every": 3}, "callbacks.x={'every': 3}: a callback is a section with a _target_ (a class)"),
        (3, "callbacks.x=3: a callback is a section with a _target_ (a class)"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_in_one_line_naming_it(entry, says):
    with pytest.raises(ConfigError) as refused:
        check_callbacks(section(x=entry))
    assert str(refused.value).startswith(says) and "\n" not in str(refused.value)


def test_a_constructor_that_fails_is_refused_naming_the_entry():
    with pytest.raises(ConfigError, match=r"^callbacks.x._target_=user_modules.FailsAtStep: cannot build it \("):
        Callbacks(section(x={"_target_": "user_modules.FailsAtStep"}), fake_training())  # step is missing


# ---- calls ------------------------------------------------------------------------------
def test_only_the_points_a_callback_has_are_called_in_the_config_order():
    callbacks = Callbacks(
        section(draws={"_target_": "user_modules.RandomDraws"}, failing={"_target_": "user_modules.FailsAtStep",
                                                                         "step": 99}),
        fake_training(),
    )  # fmt: skip
    assert callbacks.wanted["on_step_end"] == ["draws", "failing"]
    assert callbacks.wanted["on_fit_start"] == [] and callbacks.wanted["on_save"] == []
    callbacks.call("on_step_end")
    callbacks.call("on_fit_end")  # no callback has it: nothing happens
    assert callbacks.named["draws"].steps == [3]


def test_an_exception_becomes_one_line_naming_the_callback_the_point_and_the_step():
    callbacks = Callbacks(section(picky={"_target_": "user_modules.FailsAtStep", "step": 3}), fake_training(step=3))
    with pytest.raises(CallbackFailed) as failed:
        callbacks.call("on_step_end")
    assert str(failed.value) == (
        "callback picky (FailsAtStep) failed in on_step_end at step 3: ValueError: step 3 is not one I like"
    )
    assert isinstance(failed.value.__cause__, ValueError)


# ---- state ------------------------------------------------------------------------------
def test_the_views_show_the_newest_validation():
    callbacks = Callbacks(section(calls={"_target_": "user_modules.RandomDraws"}), fake_training())
    assert callbacks.views["calls"].metrics == {}
    callbacks.validated({"val/loss": 0.25})
    assert callbacks.views["calls"].metrics == {"val/loss": 0.25}


def test_only_callbacks_with_a_state_dict_are_saved():
    training = fake_training()
    callbacks = Callbacks(
        section(draws={"_target_": "user_modules.RandomDraws"}, failing={"_target_": "user_modules.FailsAtStep",
                                                                         "step": 9}),
        training,
    )  # fmt: skip
    callbacks.call("on_step_end")
    saved = callbacks.state_dict()
    assert list(saved) == ["draws"] and saved["draws"]["steps"] == [3]
    again = Callbacks(section(draws={"_target_": "user_modules.RandomDraws"}), training)
    again.load_state_dict(saved)
    assert again.named["draws"].steps == [3] and torch.equal(again.named["draws"].draws, saved["draws"]["draws"])


def test_a_callback_the_checkpoint_has_no_state_for_starts_fresh_and_says_so(caplog):
    callbacks = Callbacks(section(draws={"_target_": "user_modules.RandomDraws"}), fake_training())
    with caplog.at_level(logging.WARNING, logger="framework"):
        callbacks.load_state_dict({"someone_else": {}})
    assert callbacks.named["draws"].steps == []
    assert "callback draws has no state in the checkpoint: it starts fresh" in caplog.text


def test_a_state_that_does_not_fit_is_refused_naming_the_callback():
    callbacks = Callbacks(section(draws={"_target_": "user_modules.RandomDraws"}), fake_training())
    with pytest.raises(CallbackFailed, match=r"^callback draws \(RandomDraws\) failed in load_state_dict: KeyError"):
        callbacks.load_state_dict({"draws": {"steps": []}})


def test_a_state_a_checkpoint_cannot_hold_is_refused_naming_the_callback():
    callbacks = Callbacks(section(keeper={"_target_": "user_modules.KeepsAnObject"}), fake_training(step=7))
    with pytest.raises(CallbackFailed) as refused:
        callbacks.state_dict()
    assert str(refused.value).startswith(
        "callback keeper (KeepsAnObject) failed in state_dict at step 7: its state holds a user_modules.SeenAt at "
        "['last'], which a checkpoint cannot hold (torch.load(weights_only=True) reads"
    )


@pytest.mark.parametrize(
    "state",
    [
        {"n": 1, "x": 0.5, "ok": True, "name": "a", "raw": b"\x00", "none": None, "z": 1j},
        {"t": torch.ones(2), "p": torch.nn.Parameter(torch.ones(1)), "dtype": torch.float16, "size": torch.Size([2])},
        {"nested": [(1, 2), {3: {"deep": [torch.zeros(1)]}}], "s": {1, 2}, "device": torch.device("cpu")},
    ],
)
def test_what_weights_only_reads_is_plain(state, tmp_path):
    assert not_plain(state) is None
    torch.save(state, tmp_path / "s.pt")
    torch.load(tmp_path / "s.pt", weights_only=True)  # what not_plain lets through does load


@pytest.mark.parametrize(
    "state, says",
    [
        ({"best": np.float64(0.5)}, "a numpy.float64 at ['best']"),
        ({"a": [1, {"b": SeenAt(1)}]}, "a user_modules.SeenAt at ['a'][1]['b']"),
        ({SeenAt(1): 1}, "a user_modules.SeenAt at [<"),
        (np.zeros(2), "a numpy.ndarray at its top"),
        ({"r": range(3)}, "a builtins.range at ['r']"),
    ],
)
def test_what_weights_only_refuses_is_named_with_where_it_is(state, says, tmp_path):
    assert not_plain(state).startswith(says)
    torch.save(state, tmp_path / "s.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(tmp_path / "s.pt", weights_only=True)


# ---- the view ---------------------------------------------------------------------------
def test_the_view_shows_the_run_and_its_metrics_cannot_be_changed():
    training = fake_training(step=5)
    shown = SimpleNamespace(latest={"val/loss": 0.5})  # the Callbacks whose view it is
    view = RunView("mine", training, shown)
    assert (view.step, view.epoch, view.run_dir, view.rank, view.is_main) == (5, 1, Path("/somewhere"), 0, True)
    assert view.model is training.model and view.saved == []
    with pytest.raises(TypeError):
        view.metrics["val/loss"] = 0.0
    assert view.metrics == {"val/loss": 0.5} and shown.latest == {"val/loss": 0.5}


def draw(name: str = "mine", step: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(4, generator=RunView(name, fake_training(step=step, seed=seed), None).generator())


def test_the_generator_is_keyed_by_seed_name_and_step_and_leaves_the_global_streams_alone():
    before = torch.get_rng_state()
    assert torch.equal(draw(), draw())  # the same numbers at the same step, in any process
    assert not torch.equal(draw(), draw(step=4))
    assert not torch.equal(draw(), draw(name="other"))
    assert not torch.equal(draw(), draw(seed=1))
    assert torch.equal(torch.get_rng_state(), before)


def test_random_draws_records_one_number_a_step():
    draws = RandomDraws()
    for step in (1, 2):
        draws.on_step_end(RunView("d", fake_training(step=step), None))
    assert draws.steps == [1, 2] and draws.draws.shape == (2,)
    assert FailsAtStep(5).step == 5
