"""Which config a resumed run uses: the checkpoint's, changed only by what the resuming command
line gives, however it is spelt (in process; the bitwise end-to-end proof is in test_resume.py)."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from helpers import train_in_process

from framework.config.errors import ConfigError

# Not the defaults (cnn, sgd, cosine), so that a resume that took today's defaults would show.
FIRST = ["model=mlp", "model.hidden=[32]", "optimizer=adamw", "scheduler=cosine", "trainer.max_epochs=2",
         "logger=none", "trainer.max_steps=5"]  # fmt: skip


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    run = tmp_path_factory.mktemp("reconcile") / "run"
    train_in_process(run, *FIRST)
    return run


def resume(stopped, tmp_path, *overrides):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    return run, train_in_process(run, f"resume={run}", *overrides)


def test_a_resume_takes_the_checkpoints_config_without_its_overrides(stopped, tmp_path):
    run, summary = resume(stopped, tmp_path, "trainer.max_steps=7")
    assert summary["status"] == "completed" and summary["global_step"] == 7
    assert summary["resumes"][-1]["changed_keys"] == ["trainer.max_steps"]
    config = yaml.safe_load(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"])
    assert config["optimizer"]["_target_"] == "torch.optim.AdamW" and config["model"]["hidden"] == [32]


@pytest.mark.parametrize(
    "override,named",
    [
        ("optimizer=adam", "optimizer._target_: 'torch.optim.AdamW' -> 'torch.optim.Adam'"),
        ("optimizer.lr=0.5", "optimizer.lr: 0.001 -> 0.5"),
        ("++optimizer.lr=0.5", "optimizer.lr: 0.001 -> 0.5"),
        ("+optimizer.maximize=true", "optimizer.maximize: '<absent>' -> True"),
        ("model=cnn", "model._target_: 'framework.models.MLP' -> 'framework.models.CNN'"),
        ("seed=1", "seed: 0 -> 1"),
        ("determinism=strict", "determinism.level: 'seeded' -> 'strict'"),
        ("trainer.max_epochs=3", "trainer.max_epochs: 2 -> 3"),  # the cosine schedule's length comes from it
    ],
)
def test_an_override_that_changes_the_trajectory_is_refused_however_spelt(stopped, tmp_path, override, named):
    before = (stopped / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="changes the trajectory") as refused:
        resume(stopped, tmp_path, override)
    assert named in str(refused.value)
    assert (stopped / "checkpoints" / "last.pt").read_bytes() == before


def test_overrides_that_cannot_change_the_trajectory_apply(stopped, tmp_path):
    run, summary = resume(stopped, tmp_path, "logger=tensorboard", "data.num_workers=1", "trainer.max_steps=6")
    assert summary["global_step"] == 6
    assert sorted(summary["resumes"][-1]["changed_keys"]) == [
        "data.num_workers", "logger.tensorboard", "trainer.max_steps"]  # fmt: skip
    assert (run / "tensorboard").is_dir()


def test_a_stopping_point_already_reached_trains_nothing_and_says_how_to_go_on(stopped, tmp_path, caplog):
    before = (stopped / "metrics.json").read_bytes()
    run, summary = resume(stopped, tmp_path)
    assert summary["status"] == "completed" and summary["global_step"] == 5
    assert "nothing left to train" in caplog.text and "trainer.max_steps=null" in caplog.text
    assert (run / "metrics.json").read_bytes() == before  # its results kept as they are
