"""A real multirun over a learning rate and seeds: summarized per learning rate, not as one pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT, TESTS

# Three steps an epoch (140 training samples in batches of 64), two epochs: a curve of two points.
TINY = ["model=mlp", "model.hidden=[16]", "data=synthetic", "data.source.n_samples=200", "trainer.max_epochs=2",
        "logger=none", "checkpoint=off"]  # fmt: skip


def test_a_sweep_over_a_learning_rate_and_seeds_is_summarized_per_learning_rate(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "framework",
            "-m",
            "optimizer.lr=0.02,0.1",
            "seed=0,1",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["swept"] == ["optimizer.lr"] and summary["metrics"] == {}
    configurations = summary["configurations"]
    assert [c["label"] for c in configurations] == ["optimizer.lr=0.02", "optimizer.lr=0.1"]
    table = (sweep / "summary.md").read_text()
    assert "| optimizer.lr | metric | n | mean | std | min | max | 95% CI |" in table
    assert "| run | optimizer.lr | seed | repeat | status |" in table
    for c, lr in zip(configurations, ("0.02", "0.1")):
        assert c["seeds"] == [0, 1] and c["completed"] == 2
        acc = c["metrics"]["test/acc"]
        runs = [r["metrics"]["test/acc"] for r in summary["runs"] if r["configuration"] == c["label"]]
        assert acc["n"] == 2 and acc["mean"] == sum(runs) / 2  # this learning rate's seeds only
        assert f"| {lr} | test/acc | 2 | {acc['mean']:.4f} |" in table
        assert sum(f"| {lr} | {seed} | 0 | completed |" in table for seed in (0, 1)) == 2
    assert "4 jobs completed (2 configurations)" in proc.stdout
