"""A user's own task through the command line, from a recipe folder of the user's own: dict
samples, a model called with two of their tensors, and metrics better higher (f1, top2). Its
best checkpoint is the one with the highest val/f1, a mid-epoch stop resumes to the bits of a run
never stopped, an optimizing sweep maximizes val/f1 and checks on the task's metrics that a
repeated trial reproduces, and a metric it does not report is refused before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from helpers import TESTS, read_jsonl, read_summary

from framework.cli.compare import compare as differences

# The classes are tests/user_modules.py's, imported by the module beside the recipe: a resumed
# run and the sweep's jobs must find them through the recipe folder.
MODULE = "from user_modules import DictClassification, DictDigits, TwoInputNet  # noqa: F401\n"
RECIPE = """# @package _global_
# Digits as dict samples, classified by a task of the user's own; best.pt by its macro F1.
#   python -m framework recipe=dicts
defaults:
  - override /task: null
  - override /model: null
  - override /data: custom
  - override /optimizer: adam
  - override /scheduler: none
  - override /logger: none

task:
  _target_: recipes.dicts.DictClassification
model:
  _target_: recipes.dicts.TwoInputNet
  image_shape: null
  num_rows: null
  num_classes: null
data:
  source:
    _target_: recipes.dicts.DictDigits
optimizer:
  lr: 0.08
checkpoint:
  monitor: val/f1  # its mode, max, comes from the task's declared direction
trainer:
  max_epochs: 4
determinism:
  num_threads: 1  # the fastest for a model this small
"""
# 20 steps an epoch: a stop at step 47 is inside the third.
STOP = 47


def start(cwd: Path, *args: str) -> subprocess.Popen:
    """`python -m framework ARGS` started in the user's folder, in the background."""
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("FRAMEWORK_RECIPES", None)  # ./recipes: the user's own folder
    cmd = [sys.executable, "-m", "framework", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*started: subprocess.Popen) -> list[subprocess.CompletedProcess]:
    """Wait for each (they run at the same time: each pays for its own interpreter)."""
    done = []
    try:
        for proc in started:
            out, err = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
                proc.communicate()
    return done


def epoch_lines(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run) if r["event"] == "epoch"]


def test_a_users_task_with_dict_batches_runs_resumes_sweeps_and_is_refused_an_unknown_metric(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "dicts.yaml").write_text(RECIPE)
    (tmp_path / "recipes" / "dicts.py").write_text(MODULE)

    straight, stopped, refused = finish(
        start(tmp_path, "recipe=dicts", "hydra.run.dir=straight"),
        start(tmp_path, "recipe=dicts", f"trainer.max_steps={STOP}", "hydra.run.dir=run"),
        start(tmp_path, "recipe=dicts", "checkpoint.monitor=val/nope", "hydra.run.dir=refused"),
    )
    assert straight.returncode == 0, straight.stderr
    assert stopped.returncode == 0, stopped.stderr

    # Refused before training, in one line naming the key and listing what the task reports.
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.splitlines() == [
        "Error: checkpoint.monitor=val/nope: task recipes.dicts.DictClassification does not report it; it reports "
        "train/loss, val/loss, val/f1, val/top2, test/loss, test/f1, test/top2"
    ]
    assert not (tmp_path / "refused" / "checkpoints").exists()
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()

    # best.pt holds the epoch of the highest val/f1, not the last one nor the lowest f1's, and the
    # index records val/f1 as what it was chosen by.
    epochs = epoch_lines(tmp_path / "straight")
    f1 = [r["val/f1"] for r in epochs]
    highest = epochs[f1.index(max(f1))]
    assert highest not in (epochs[-1], epochs[f1.index(min(f1))]), f1
    best = torch.load(tmp_path / "straight" / "checkpoints" / "best.pt", weights_only=True)
    assert (best["global_step"], best["val_metrics"]["val/f1"]) == (highest["step"], max(f1))
    index = json.loads((tmp_path / "straight" / "checkpoints" / "index.json").read_text())
    assert next(e["metric"] for e in index["files"] if e["role"] == "best") == max(f1)
    config = yaml.safe_load(best["config"])
    assert (config["checkpoint"]["monitor"], config["checkpoint"]["mode"]) == ("val/f1", "max")

    # The resume needs none of the first command's overrides. Meanwhile a sweep maximizes val/f1 over
    # three trials of two learning rates: two trials share one, which the summary checks reproduce.
    resumed, swept = finish(
        start(tmp_path, "resume=auto", "trainer.max_steps=null", "hydra.run.dir=run"),
        start(
            tmp_path, "-m", "recipe=dicts", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=0",
            "optimizer.lr=choice(0.02,0.08)", "optimized_metric=val/f1", "trainer.max_steps=5",
            "hydra.sweep.dir=study",
        ),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(tmp_path / "run")["resumes"][0]["position"] == STOP - 40  # mid-epoch
    assert differences(tmp_path / "straight", tmp_path / "run") == []

    assert swept.returncode == 0, swept.stderr
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    trials = [run["metrics"]["val/f1"] for run in summary["runs"]]
    assert summary["completed"] == 3 and len(set(trials)) == 2, trials
    results = yaml.safe_load((tmp_path / "study" / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(trials)  # maximized: the task says f1 is better higher
    assert summary["directions"]["val/f1"] == "max" and summary["all_reproduce"] is True
    (repeated,) = summary["reproducibility"]
    assert repeated["runs"] == 2 and repeated["differing_metrics"] == []
