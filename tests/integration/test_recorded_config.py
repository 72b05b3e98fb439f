"""A resumed run and the model keys a checkpoint records as filled in from the data: null on the
command line means "from the data" and is no change; another value is one."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from helpers import compose_config, train_in_process

from framework.config.errors import ConfigError
from framework.runs.resume import reconcile

FIRST = ["model=mlp", "model.hidden=[16]", "trainer.max_epochs=2", "trainer.max_steps=5", "logger=none"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    run = tmp_path_factory.mktemp("filled") / "run"
    train_in_process(run, *FIRST)
    return run


def resume(stopped, tmp_path, *overrides):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    return run, train_in_process(run, f"resume={run}", *overrides)


def last_checkpoint(run) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_a_resume_that_names_the_model_again_is_no_change(stopped, tmp_path):
    """`model=mlp` gives every model key, input_shape: null among them."""
    assert yaml.safe_load(last_checkpoint(stopped)["config"])["model"]["input_shape"] == [1, 8, 8]
    run, summary = resume(stopped, tmp_path, "model=mlp", "model.hidden=[16]", "trainer.max_steps=7")
    assert summary["status"] == "completed" and summary["global_step"] == 7
    assert summary["resumes"][-1]["changed_keys"] == ["trainer.max_steps"]
    assert summary["follows_original_trajectory"] is True
    assert yaml.safe_load(last_checkpoint(run)["config"])["model"]["num_classes"] == 10


def test_a_resume_compared_key_by_key_sees_no_change_in_a_filled_value(stopped):
    ckpt = last_checkpoint(stopped)
    merged, changed, follows = reconcile(compose_config(*FIRST), ckpt, given=None)
    assert (changed, follows) == ([], True)
    assert list(merged.model.input_shape) == [1, 8, 8] and merged.model.num_classes == 10


def test_another_value_than_the_recorded_one_is_a_change(stopped, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.num_classes: 10 -> 12"):
        resume(stopped, tmp_path, "model.num_classes=12")


def test_a_checkpoint_that_recorded_null_still_resumes(stopped):
    """Written before the values were recorded: null in the checkpoint, filled at build time."""
    ckpt = last_checkpoint(stopped)
    old = yaml.safe_load(ckpt["config"])
    old["model"].update(input_shape=None, num_classes=None)
    ckpt["config"] = yaml.safe_dump(old)
    merged, changed, _ = reconcile(compose_config(*FIRST), ckpt, given=["model"])
    assert changed == [] and merged.model.input_shape is None and merged.model.num_classes is None
