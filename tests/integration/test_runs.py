"""Training in process: every option runs, max_steps, precision, a failure's record, TensorBoard.
(What only the command line shows is in tests/cli/test_runs.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import QUICK, read_jsonl, read_summary, read_tensorboard, train_in_process

from framework.config.errors import ConfigError

# Four runs that between them use every option of model, optimizer, scheduler and data.
OPTION_RUNS = [
    ["model=mlp", "optimizer=sgd", "scheduler=none", "data=digits"],
    ["model=cnn", "optimizer=adam", "scheduler=step", "data=synthetic"],
    ["model=mlp", "optimizer=adamw", "scheduler=cosine", "data=npz"],
    ["model=cnn", "optimizer=sgd", "scheduler=warmup_cosine", "data=synthetic", "data.source.input_shape=[3,6,6]"],
]


@pytest.mark.parametrize("overrides", OPTION_RUNS, ids=[" ".join(o) for o in OPTION_RUNS])
def test_each_option_trains(tmp_path, overrides):
    if "data=npz" in overrides:
        rng = np.random.default_rng(0)
        y = np.arange(300) % 3
        x = (rng.standard_normal((300, 5)) + y[:, None]).astype(np.float32)
        np.savez(tmp_path / "mine.npz", features=x, labels=y)
        overrides = overrides + [
            f"data.source.path={tmp_path / 'mine.npz'}",
            "data.source.x_key=features",
            "data.source.y_key=labels",
        ]
    run_dir = tmp_path / "run"
    train_in_process(run_dir, *overrides, *QUICK, "trainer.max_epochs=2")
    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == 2
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc", "lr"):
        assert np.isfinite(summary["metrics"][key]), key
    epochs = [r for r in read_jsonl(run_dir) if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert epochs[1]["train/loss"] < epochs[0]["train/loss"]  # it learns


def test_max_steps_is_a_stopping_point_not_part_of_the_schedule(tmp_path):
    common = ["model=mlp", "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "logger=none"]
    train_in_process(tmp_path / "full", *common)
    train_in_process(tmp_path / "stopped", *common, "trainer.max_steps=29")  # mid-epoch 2 (20 steps an epoch)
    full = [r for r in read_jsonl(tmp_path / "full") if r["event"] == "step"]
    stopped = [r for r in read_jsonl(tmp_path / "stopped") if r["event"] == "step"]
    assert len(full) == 60 and len(stopped) == 29
    assert stopped == full[:29]  # same losses and learning rates, to the bit
    summary = read_summary(tmp_path / "stopped")
    assert summary["stopped_by"] == "max_steps" and summary["global_step"] == 29
    assert summary["epochs_completed"] == 1
    assert [r["event"] for r in read_jsonl(tmp_path / "stopped") if r["event"] != "step"] == ["epoch", "stop", "test"]


@pytest.mark.parametrize("precision", ["bf16", "16-mixed"])
def test_reduced_precision_runs(tmp_path, precision):
    summary = train_in_process(
        tmp_path / "run",
        f"trainer.precision={precision}",
        "trainer.max_steps=5",
        "trainer.gradient_clip_val=1.0",
        *QUICK,
    )
    assert summary["status"] == "completed"


def test_a_failing_run_records_its_status(tmp_path):
    with pytest.raises(ConfigError, match="/no/such.npz"):
        train_in_process(tmp_path / "run", "data=npz", "data.source.path=/no/such.npz", *QUICK)
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "failed" and "/no/such.npz" in summary["error"]


def test_tensorboard_shows_the_config_and_the_hparams_with_the_final_metrics(tmp_path):
    run_dir = tmp_path / "run"
    summary = train_in_process(run_dir, "model=mlp", "optimizer=adamw", "trainer.max_epochs=2", "seed=3")
    board = read_tensorboard(run_dir)
    (text,) = board["text"]
    assert "    optimizer:\n      _target_: torch.optim.AdamW\n" in text and "    seed: 3\n" in text
    # The keys the command line set and the seed (in process, without Hydra's choices: a group's target).
    groups = {"model": "framework.models.MLP", "optimizer": "torch.optim.AdamW"}
    assert board["hparams"] == {**groups, "trainer.max_epochs": 2, "seed": 3}
    assert board["metric_tags"] == ["train/loss_epoch", "val/loss", "val/acc", "test/loss", "test/acc"]
    # Each metric column's value is the last point of its scalar: the final metric.
    for tag, key in (("test/acc", "test/acc"), ("val/loss", "val/loss"), ("train/loss_epoch", "train/loss")):
        assert board["events"].Scalars(tag)[-1].value == pytest.approx(summary["metrics"][key])
