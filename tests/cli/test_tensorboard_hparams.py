"""A sweep lines up in TensorBoard's HParams tab: each run's hparams are the keys its command line
and sweep set, and the seed (not all 55 keys of the config, whose constants filled the first
columns and hid the swept ones); the whole config stays in the Text tab."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, TESTS, read_summary, read_tensorboard

SHORT = ["model=mlp", "model.hidden=[16]", "data=synthetic", "trainer.max_epochs=1", "trainer.max_steps=3",
         "checkpoint=off"]  # fmt: skip


def test_a_sweeps_hparams_are_the_swept_and_given_keys(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "framework", "-m", "optimizer.lr=0.02,0.1", "seed=0", *SHORT]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd.append(f"hydra.sweep.dir={sweep}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    given = {"model": "mlp", "model.hidden": "[16]", "data": "synthetic", "trainer.max_epochs": 1.0,
             "trainer.max_steps": 3.0, "checkpoint": "off"}  # fmt: skip
    for job, lr in (("0", 0.02), ("1", 0.1)):
        board = read_tensorboard(sweep / job)
        assert board["hparams"] == {"optimizer.lr": pytest.approx(lr), "seed": 0.0, **given}
        assert "    optimizer:\n" in board["text"][0] and "      lr: " in board["text"][0]  # the whole config
        assert read_summary(sweep / job)["hparams"] == {"optimizer.lr": lr, "seed": 0, **given, "model.hidden": [16],
                                                        "trainer.max_epochs": 1, "trainer.max_steps": 3}  # fmt: skip
