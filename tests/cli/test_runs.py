"""A run through the real command line, where only it shows: the run directory, the console,
--config-dir."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from helpers import QUICK, ROOT, read_jsonl, read_summary, read_tensorboard, run_cli


@pytest.mark.slow
def test_default_run_is_good_and_leaves_a_complete_run_directory(installed):
    """`python -m framework` with nothing else, as a user who installed the package types it (the
    `installed` fixture's run, which test_a_non_editable_install_trains_from_any_directory shares)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, proc = installed.run_dir, installed.proc
    assert proc.returncode == 0, proc.stderr
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
    assert board["hparams"] == {"seed": 0}  # no key set on the command line
    assert "test/acc" in board["metric_tags"]
    # Not a terminal here: plain log lines, no progress bar.
    assert "train/loss" in proc.stdout and "it/s" not in proc.stderr


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
