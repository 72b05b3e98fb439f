"""Training: every option runs (in process), and a run leaves what it should (through the real
command line, where only it shows: the run directory, the console, --config-dir)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from helpers import QUICK, ROOT, read_jsonl, read_summary, read_tensorboard, run_cli, train_in_process

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


@pytest.mark.slow
def test_default_run_is_good_and_leaves_a_complete_run_directory(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    proc = run_cli(run_dir)
    assert {".hydra", "metrics.json", "metrics.jsonl", "tensorboard", "train.log"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert {"config.yaml", "overrides.yaml", "hydra.yaml"} <= {p.name for p in (run_dir / ".hydra").iterdir()}

    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert summary["seed"] == 0 and summary["determinism"]["level"] == "seeded"
    assert summary["wall_time_s"] < 60
    assert summary["metrics"]["test/acc"] >= 0.97
    assert len(summary["fingerprint"]) == 64
    assert summary["meta"]["torch_version"]

    lines = read_jsonl(run_dir)
    assert [r["epoch"] for r in lines if r["event"] == "epoch"] == list(range(30))
    assert lines[-1]["event"] == "test" and lines[-1]["test/acc"] == summary["metrics"]["test/acc"]

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "lr", "test/acc", "test/loss"} <= tags
    val_acc = [e.value for e in events.Scalars("val/acc")]
    assert len(val_acc) == 30 and val_acc[-1] == pytest.approx(lines[-2]["val/acc"])
    # The experiment, not only its curves: the config as text, the hparams with the final metrics.
    board = read_tensorboard(run_dir)
    assert board["text"] == ["".join(f"    {line}\n" for line in resolved_config_yaml(run_dir).splitlines())]
    assert board["hparams"]["optimizer.lr"] == 0.1 and board["hparams"]["model._target_"] == "framework.models.CNN"
    assert "test/acc" in board["metric_tags"]
    # Not a terminal here: plain log lines, no progress bar.
    assert "train/loss" in proc.stdout and "it/s" not in proc.stderr


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


def test_a_users_own_model_and_optimizer_work_through_target(tmp_path):
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "optimizer").mkdir()
    (conf / "model" / "tiny.yaml").write_text(
        "_target_: user_modules.TinyNet\ninput_shape: null\nnum_classes: null\nwidth: 12\n"
    )
    (conf / "optimizer" / "rmsprop.yaml").write_text("_target_: torch.optim.RMSprop\n_partial_: true\nlr: 0.001\n")
    run_dir = tmp_path / "run"
    run_cli(run_dir, "model=tiny", "optimizer=rmsprop", *QUICK, extra_args=["--config-dir", str(conf)])
    resolved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "user_modules.TinyNet" in resolved and "torch.optim.RMSprop" in resolved
    assert read_summary(run_dir)["status"] == "completed"


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


def test_progress_bar_on_a_terminal(tmp_path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, cols
    cmd = [sys.executable, "-m", "framework", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=5", *QUICK]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal, env=os.environ)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    # tqdm's bar: "epoch 1/1:  25%|##5       | 5/20 [00:00<00:00, ...it/s, loss=...]"
    assert re.search(r"epoch 1/1: +\d+%\|.*\| \d+/20 \[", screen), screen


def resolved_config_yaml(run_dir) -> str:
    import torch

    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]


def test_tensorboard_shows_the_config_and_the_hparams_with_the_final_metrics(tmp_path):
    run_dir = tmp_path / "run"
    summary = train_in_process(run_dir, "model=mlp", "optimizer=adamw", "trainer.max_epochs=2", "seed=3")
    board = read_tensorboard(run_dir)
    (text,) = board["text"]
    assert "    optimizer:\n      _target_: torch.optim.AdamW\n" in text and "    seed: 3\n" in text
    hparams = board["hparams"]
    assert hparams["seed"] == 3 and hparams["optimizer.lr"] == pytest.approx(1e-3)
    assert hparams["model.hidden"] == "[256, 256]" and hparams["scheduler.T_max"] == "null"
    assert board["metric_tags"] == ["train/loss_epoch", "val/loss", "val/acc", "test/loss", "test/acc"]
    # Each metric column's value is the last point of its scalar: the final metric.
    for tag, key in (("test/acc", "test/acc"), ("val/loss", "val/loss"), ("train/loss_epoch", "train/loss")):
        assert board["events"].Scalars(tag)[-1].value == pytest.approx(summary["metrics"][key])
