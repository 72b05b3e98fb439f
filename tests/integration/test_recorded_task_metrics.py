"""A finished run says which metrics its task reports and which way each is better (metrics.json's
`task`), and TensorBoard's HParams columns are those metrics: a regression run's, not a
classifier's."""

from __future__ import annotations

import json

from helpers import read_tensorboard, train_in_process

REGRESSION = ["task=regression", "data=diabetes", "model=mlp", "trainer.max_epochs=1", "trainer.max_steps=3"]


def test_a_regression_run_records_its_tasks_metrics_for_its_readers(tmp_path):
    summary = train_in_process(tmp_path, *REGRESSION, "logger=tensorboard", "checkpoint=off")
    assert summary["status"] == "completed"
    directions = {"mse": "min", "mae": "min", "r2": "max"}
    expected = {"train/loss": "min"} | {f"{split}/{m}": d for split in ("val", "test") for m, d in directions.items()}
    recorded = json.loads((tmp_path / "metrics.json").read_text())["task"]
    assert recorded == {
        "target": "framework.tasks.regression.Regression",
        "metrics": [{"name": name, "direction": d} for name, d in expected.items()],  # in the task's order
    }
    assert set(expected) <= set(summary["metrics"])

    # The HParams tab's metric columns: the final metrics as series (an epoch's mean loss is train/loss_epoch).
    columns = read_tensorboard(tmp_path)["metric_tags"]
    assert sorted(columns) == sorted(name.replace("train/loss", "train/loss_epoch") for name in expected)
