"""Early stopping, trained in process: the run ends at the validation where patience is used up,
as completed and stopped by early_stopping; a run stopped before that and resumed ends where the
straight one did, to the bit; a rerun has nothing left to train.

The expected stop is computed here from the validations metrics.jsonl records, not by the
framework's EarlyStopping."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import yaml
from helpers import read_jsonl, read_summary, train_in_process, tree

from framework.cli.compare import compare as differences
from framework.config.errors import ConfigError

PATIENCE, MIN_DELTA, VAL_EVERY = 2, 0.03, 4
STOPPING = [
    "model=mlp",
    "model.hidden=[32]",
    "optimizer=adam",
    "optimizer.lr=0.01",
    "trainer.max_epochs=3",  # 20 steps an epoch: 60 in all; it stops before
    f"trainer.val_every_n_steps={VAL_EVERY}",
    f"trainer.early_stopping.patience={PATIENCE}",
    f"trainer.early_stopping.min_delta={MIN_DELTA}",
    "logger=none",
]
GO_ON = "trainer.max_steps=null"  # a resumed run keeps the max_steps it was stopped by, unless told


def validations(run_dir, monitor: str) -> list[tuple[int, float]]:
    """(step, value) of each validation the run recorded: inside epochs and at their ends."""
    return [(line["step"], line[monitor]) for line in read_jsonl(run_dir) if line["event"] in ("val", "epoch")]


def expected_stop(seen: list[tuple[int, float]], mode: str) -> tuple[int | None, float, int]:
    """The step of the validation after which PATIENCE validations in a row have not improved on
    the best by more than MIN_DELTA (None: none), that best value and its step."""
    best, best_step, without = None, None, 0
    for step, value in seen:
        better = best is None or (value < best - MIN_DELTA if mode == "min" else value > best + MIN_DELTA)
        if better:
            best, best_step, without = value, step, 0
        else:
            without += 1
        if without == PATIENCE:
            return step, best, best_step
    return None, best, best_step


def last_state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


@pytest.fixture
def straight(trained_run):
    """Trained once per test session (copy it to change it)."""
    return trained_run(*STOPPING)


def test_the_run_ends_at_the_validation_where_patience_is_used_up(straight):
    seen = validations(straight, "val/loss")
    stop, best, best_step = expected_stop(seen, "min")  # val/loss: lower is better, as the task declares
    summary = read_summary(straight)
    assert stop is not None and stop < 60, seen
    assert (summary["status"], summary["stopped_by"], summary["global_step"]) == ("completed", "early_stopping", stop)
    assert seen[-1][0] == stop  # no validation after it
    assert read_jsonl(straight)[-1]["event"] == "test"  # a completed run is tested
    saved = last_state(straight)
    assert saved["global_step"] == stop
    assert saved["early_stopping"] == {
        "monitor": "val/loss",
        "best": best,
        "best_step": best_step,
        "bad_validations": PATIENCE,
        "stopped": True,
    }
    assert yaml.safe_load(saved["config"])["trainer"]["early_stopping"]["mode"] == "min"  # recorded, as in force


def test_a_mode_given_wins_over_the_metric_direction(tmp_path):
    run = tmp_path / "run"
    train_in_process(run, *STOPPING, "trainer.early_stopping.monitor=val/acc", "trainer.early_stopping.mode=min")
    seen = validations(run, "val/acc")
    assert read_summary(run)["global_step"] == expected_stop(seen, "min")[0] == seen[-1][0]
    assert expected_stop(seen, "max")[0] != seen[-1][0]


@pytest.fixture(scope="module")
def stopped_before(trained_run, tmp_path_factory):
    """A run stopped by max_steps at the last validation before the straight run's stop: there,
    one validation more without improvement ends it. Copy it to resume it."""
    stop = read_summary(trained_run(*STOPPING))["global_step"]
    run = tmp_path_factory.mktemp("stopped") / "run"
    train_in_process(run, *STOPPING, f"trainer.max_steps={stop - VAL_EVERY}")
    assert read_summary(run)["stopped_by"] == "max_steps"
    assert last_state(run)["early_stopping"]["bad_validations"] == PATIENCE - 1
    return run


def resumed(stopped, tmp_path):
    """A copy of the stopped run, resumed to its end."""
    run = tmp_path / "resumed"
    shutil.copytree(stopped, run)
    train_in_process(run, *STOPPING, f"resume={run}", GO_ON)
    return run


def test_a_stopped_run_resumed_ends_where_the_straight_one_did(straight, stopped_before, tmp_path):
    run = resumed(stopped_before, tmp_path)
    assert read_summary(run)["stopped_by"] == "early_stopping"
    assert differences(straight, run) == []
    assert read_jsonl(run) == read_jsonl(straight)  # the validations inside epochs too
    assert last_state(run)["early_stopping"] == last_state(straight)["early_stopping"]


def test_teeth_a_resume_that_skips_early_stopping_ends_elsewhere(straight, stopped_before, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMEWORK_TEST_SKIP_RESTORE", "early_stopping")
    run = resumed(stopped_before, tmp_path)
    assert last_state(run)["early_stopping"] != last_state(straight)["early_stopping"]
    assert differences(straight, run) != []


def test_a_rerun_of_a_run_that_stopped_early_has_nothing_left(straight, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = tree(run)
    with caplog.at_level(logging.WARNING, logger="framework"):
        summary = train_in_process(run, *STOPPING, "resume=auto")
    stop = read_summary(straight)["global_step"]
    said = f"nothing left to train: the run stopped early at step {stop} (trainer.early_stopping: val/loss did not"
    assert said in caplog.text
    assert summary == read_summary(straight)
    assert tree(run) == before  # the run record, history and checkpoints as they were


def test_an_empty_validation_split_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.early_stopping.monitor=val/loss: the validation split is empty"):
        train_in_process(tmp_path / "run", *STOPPING, "data.val_fraction=0")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_monitor_the_task_does_not_report_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.early_stopping.monitor=val/f1: task \S+ does not report it"):
        train_in_process(tmp_path / "run", *STOPPING, "trainer.early_stopping.monitor=val/f1")
    assert list((tmp_path / "run").iterdir()) == []
