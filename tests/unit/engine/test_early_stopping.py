"""Early stopping (framework/engine/early_stopping.py): when it stops, its state, and the config
checks that put its mode in force (tests/integration/test_early_stopping.py trains with it)."""

from __future__ import annotations

import logging
import re

import pytest
from helpers import compose_config
from omegaconf import OmegaConf

from framework.config.checks import check
from framework.config.errors import ConfigError
from framework.engine.build import build_task
from framework.engine.early_stopping import EarlyStopping, check_monitor, stopped_early
from framework.engine.run import nothing_left
from framework.engine.training import check_metric_names

LOSSES = [2.0, 1.5, 1.45, 1.2, 1.25, 1.19, 1.3]  # improvements over 0.1: 1.5 and 1.2 only


def stop_index(stopping: EarlyStopping, values: list[float]) -> int | None:
    """The index of the validation after which the run stops (None: it never does)."""
    for index, value in enumerate(values):
        if stopping.update({stopping.monitor: value, "other": 0.0}, step=10 * (index + 1)):
            return index
    return None


def test_an_improvement_smaller_than_min_delta_does_not_count():
    stopping = EarlyStopping("val/loss", "min", patience=3, min_delta=0.1)
    assert stop_index(stopping, LOSSES) == 6  # 1.25, 1.19 and 1.3 are not 0.1 better than 1.2
    assert stopping.state_dict() == {
        "monitor": "val/loss",
        "best": 1.2,
        "best_step": 40,
        "bad_validations": 3,
        "stopped": True,
    }


def test_without_min_delta_any_improvement_resets_the_count():
    assert stop_index(EarlyStopping("val/loss", "min", patience=3), LOSSES) is None


def test_mode_max_wants_the_metric_higher():
    accuracies = [0.5, 0.6, 0.59, 0.6, 0.58]  # equal to the best is no improvement
    assert stop_index(EarlyStopping("val/acc", "max", patience=3), accuracies) == 4
    assert stop_index(EarlyStopping("val/acc", "min", patience=3), accuracies) == 3


def test_a_validation_without_the_metric_changes_nothing():
    stopping = EarlyStopping("val/loss", "min", patience=1)
    stopping.update({"val/loss": 1.0}, step=1)
    before = stopping.state_dict()
    assert stopping.update({"val/acc": 0.3}, step=2) is False
    assert stopping.state_dict() == before


def test_restored_state_counts_on_where_it_was():
    straight = EarlyStopping("val/loss", "min", patience=3, min_delta=0.1)
    first = EarlyStopping("val/loss", "min", patience=3, min_delta=0.1)
    assert stop_index(first, LOSSES[:5]) is None
    resumed = EarlyStopping("val/loss", "min", patience=3, min_delta=0.1)
    resumed.load_state_dict(first.state_dict())
    assert stop_index(resumed, LOSSES[5:]) == 1  # the sixth validation: 3 without improvement
    assert stop_index(straight, LOSSES) == 6
    assert resumed.state_dict() == straight.state_dict()


def test_a_nan_is_never_an_improvement():
    stopping = EarlyStopping("val/loss", "min", patience=2)
    assert stop_index(stopping, [float("nan"), 1.0, 0.5, float("nan"), float("nan")]) == 4
    assert (stopping.best, stopping.best_step) == (0.5, 30)


def test_a_stop_is_logged_with_the_best_value_even_when_there_is_none(caplog):
    with caplog.at_level(logging.INFO, logger="framework"):
        stop_index(EarlyStopping("val/loss", "min", patience=2), [float("nan")] * 2)
        stop_index(EarlyStopping("val/loss", "min", patience=1, min_delta=0.5), [1.0, 0.9])
    assert "val/loss has not improved by more than 0 for 2 validations (best none: every value was NaN)" in caplog.text
    assert "at step 20: val/loss has not improved by more than 0.5 for 1 validations (best 1 at step 10)" in caplog.text


def test_once_stopped_it_stays_stopped():
    stopping = EarlyStopping("val/loss", "min", patience=1)
    stop_index(stopping, [1.0, 2.0])
    assert stopping.update({"val/loss": 0.1}, step=99) is True
    assert stopping.best == 1.0


def test_a_checkpoint_that_stopped_early_has_nothing_left_while_early_stopping_is_on():
    stopping = EarlyStopping("val/loss", "min", patience=1)
    stop_index(stopping, [1.0, 2.0])
    ckpt = {"epoch": 2, "global_step": 40, "early_stopping": stopping.state_dict()}
    on = OmegaConf.create({"trainer": {"max_epochs": 30, "max_steps": None, "early_stopping": {"patience": 1}}})
    off = OmegaConf.create({"trainer": {"max_epochs": 30, "max_steps": None, "early_stopping": {"patience": None}}})
    assert stopped_early(ckpt) and nothing_left(ckpt, on)
    assert not nothing_left(ckpt, off)  # turned off (allow_config_changes): it trains on
    assert not stopped_early({"epoch": 2, "global_step": 40})  # an older checkpoint, or early stopping off


def checked(*overrides: str):
    cfg = compose_config(*overrides)
    check_metric_names(cfg, build_task(cfg.task))
    return cfg


def test_mode_follows_the_metric_direction_unless_given():
    assert checked("trainer.early_stopping.patience=2").trainer.early_stopping.mode == "min"  # val/loss
    by_acc = checked("trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/acc")
    assert by_acc.trainer.early_stopping.mode == "max"
    given = checked(
        "trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/acc", "trainer.early_stopping.mode=min"
    )
    assert given.trainer.early_stopping.mode == "min"
    assert checked().trainer.early_stopping.mode is None  # off: nothing put in force


def test_a_monitor_the_task_does_not_report_is_refused_in_one_line():
    with pytest.raises(ConfigError) as refused:
        checked("trainer.early_stopping.patience=2", "trainer.early_stopping.monitor=val/f1")
    said = str(refused.value)
    assert "\n" not in said
    assert said.startswith("trainer.early_stopping.monitor=val/f1: task ") and "val/loss, val/acc" in said
    checked("trainer.early_stopping.monitor=val/f1")  # off: the monitor is not read


def test_bad_values_are_refused_naming_their_keys():
    cfg = compose_config(
        "trainer.early_stopping.patience=0", "trainer.early_stopping.mode=up", "trainer.early_stopping.min_delta=-1"
    )
    with pytest.raises(ConfigError) as refused:
        check(cfg)
    for key in ("patience=0", "mode='up'", "min_delta=-1"):
        assert f"trainer.early_stopping.{key}" in str(refused.value)


@pytest.mark.parametrize(
    "monitor, val_samples, says",
    [
        ("test/acc", 100, "trainer.early_stopping.monitor=test/acc: early stopping watches the validations"),
        ("val/loss", 0, "trainer.early_stopping.monitor=val/loss: the validation split is empty"),
    ],
)
def test_a_monitor_early_stopping_would_never_see_is_refused(monitor, val_samples, says):
    with pytest.raises(ConfigError, match="^" + re.escape(says)):
        check_monitor(monitor, val_samples)
    check_monitor("val/loss", 1)
    check_monitor("train/loss", 0)  # at epoch ends
