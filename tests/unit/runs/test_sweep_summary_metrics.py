"""The sweep summary takes its metrics from the runs' records (the task's, with their directions):
columns, statistics, curves, the best value and the reproducibility check, from job directories
made on disk as a sweep of a regression task leaves them; a record without its task is a
classifier's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from framework.runs import sweep_summary
from framework.runs.sweep_summary import curve_metrics, summarize, verdict

DIRECTIONS = {"mse": "min", "mae": "min", "r2": "max"}
# metrics.json's `task`, as a regression run records it.
REGRESSION = {
    "target": "framework.tasks.regression.Regression",
    "metrics": [{"name": "train/loss", "direction": "min"}]
    + [{"name": f"{split}/{m}", "direction": d} for split in ("val", "test") for m, d in DIRECTIONS.items()],
}


def job(sweep: Path, number: int, overrides: list[str], r2: float, fingerprint: str, task: dict | None = REGRESSION):
    """A completed job of a regression run (of an older version's record, with task=None)."""
    folder = sweep / str(number)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    settings = dict(line.split("=", 1) for line in overrides)
    seed, repeat = int(settings.get("seed", 0)), int(settings.get("repeat", 0))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "repeat": repeat}))
    metrics = {"train/loss": 2.0 - r2, "lr": 0.1, "val/mse": 1.0 - r2, "val/mae": 0.8, "val/r2": r2}
    metrics.update({"test/mse": 1.0 - r2, "test/mae": 0.7, "test/r2": r2})
    record = {"status": "completed", "seed": seed, "metrics": metrics, "fingerprint": fingerprint}
    if task is not None:
        record["task"] = task
    (folder / "metrics.json").write_text(json.dumps(record, sort_keys=True))  # as the framework writes it
    epochs = [
        {"event": "epoch", "epoch": e, "train/loss": 2.0, "val/mse": 1.0 - r2 * e, "val/mae": 0.8, "val/r2": r2 * e}
        for e in (0, 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in epochs))
    return folder


REGRESSION_COLUMNS = ["test/mse", "test/mae", "test/r2", "val/mse", "val/mae", "val/r2", "train/loss"]


def test_a_regression_sweep_has_the_tasks_columns_statistics_and_curves(tmp_path, monkeypatch):
    plotted = []

    def plot_curves(runs, path, names):
        labels = real_plot(runs, path, names)
        plotted.append((names, labels))
        return labels

    real_plot = sweep_summary.plot_curves
    monkeypatch.setattr(sweep_summary, "plot_curves", plot_curves)
    for seed, r2 in enumerate((0.40, 0.50)):
        job(tmp_path, seed, ["task=regression", f"seed={seed}"], r2, f"f{seed}")
    summary = summarize(tmp_path)

    assert list(summary["directions"]) == REGRESSION_COLUMNS
    assert list(summary["metrics"]) == REGRESSION_COLUMNS  # lr is not a task's metric
    r2, mse = summary["metrics"]["test/r2"], summary["metrics"]["test/mse"]
    assert (r2["n"], r2["mean"], r2["direction"], r2["best"]) == (2, pytest.approx(0.45), "max", 0.50)
    assert (mse["direction"], mse["best"]) == ("min", pytest.approx(0.50))

    table = (tmp_path / "summary.md").read_text()
    assert (
        "| run | seed | repeat | status | " + "".join(f"{m} | " for m in REGRESSION_COLUMNS) + "fingerprint |" in table
    )
    assert "| test/r2 | 2 | 0.4500 |" in table
    assert "Better: lower for test/mse, test/mae, val/mse, val/mae, train/loss; higher for test/r2, val/r2" in table
    assert "acc" not in table and "val/loss" not in table

    # One panel per validation metric, each with every seed's curve, their mean and its band.
    assert plotted == [(["val/mse", "val/mae", "val/r2"], ["seed 0", "seed 1", "mean", "mean ± std"])]
    assert (tmp_path / "val_curves.png").read_bytes().startswith(b"\x89PNG")
    assert verdict(summary) == (0, "2 jobs completed")


def test_a_task_with_many_metrics_plots_its_first_few():
    metrics = {f"val/m{i}": "min" for i in range(7)} | {"test/m0": "min", "train/loss": "min"}
    assert curve_metrics(metrics) == ["val/m0", "val/m1", "val/m2", "val/m3"]
    assert curve_metrics({"train/loss": "min"}) == []


def test_a_sweep_with_no_metrics_at_all_still_draws_its_figure(tmp_path):
    folder = tmp_path / "0"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0"]))
    summary = summarize(tmp_path)  # the job failed before it wrote its record
    assert summary["directions"] == {} and summary["failed"] == 1
    assert (tmp_path / "val_curves.png").is_file()


def test_the_reproducibility_check_compares_every_metric_the_task_reports(tmp_path):
    same = tmp_path / "same"
    for repeat in (0, 1):
        folder = job(same, repeat, ["task=regression", "seed=0", f"repeat={repeat}"], 0.5, "aa")
        record = json.loads((folder / "metrics.json").read_text())
        record["metrics"]["test/r2"] = math.nan  # a constant target: r2 is NaN in both, the same result
        (folder / "metrics.json").write_text(json.dumps(record, sort_keys=True))
    (check,) = summarize(same)["reproducibility"]
    assert check["reproduces"] and check["differing_metrics"] == []

    differ = tmp_path / "differ"
    job(differ, 0, ["task=regression", "seed=0", "repeat=0"], 0.5, "aa")
    job(differ, 1, ["task=regression", "seed=0", "repeat=1"], 0.5000001, "aa")  # the same final state
    summary = summarize(differ)
    (check,) = summary["reproducibility"]
    assert not check["reproduces"] and summary["all_reproduce"] is False
    assert check["differing_metrics"] == ["test/mse", "test/r2", "val/mse", "val/r2", "train/loss"]
    assert "NO (test/mse, test/r2, val/mse, val/r2, train/loss differ)" in (differ / "summary.md").read_text()
    assert verdict(summary)[0] == 1


def test_a_record_without_its_task_is_a_classifiers(tmp_path):
    job(tmp_path, 0, ["seed=0"], 0.5, "aa", task=None)
    summary = summarize(tmp_path)
    assert summary["directions"] == {
        "test/loss": "min",
        "test/acc": "max",
        "val/loss": "min",
        "val/acc": "max",
        "train/loss": "min",
    }
    assert list(summary["metrics"]) == ["train/loss"]  # the only one of those this record has


def test_the_best_value_of_an_optimizing_sweep_names_its_direction(tmp_path):
    for number, r2 in enumerate((0.4, 0.6)):
        folder = job(tmp_path, number, ["task=regression", f"optimizer.lr={0.1 * (number + 1)}"], r2, f"f{number}")
        record = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**record, "optimized_metric": "val/r2"}))
    results = {"name": "optuna", "best_params": {"optimizer.lr": 0.2}, "best_value": 0.6}
    (tmp_path / "optimization_results.yaml").write_text(yaml.safe_dump(results))
    summary = summarize(tmp_path)
    assert summary["best"] == {"metric": "val/r2", "direction": "max", "value": 0.6, "params": {"optimizer.lr": 0.2}}
    assert "Best val/r2 (higher is better): 0.6 with optimizer.lr=0.2" in (tmp_path / "summary.md").read_text()
