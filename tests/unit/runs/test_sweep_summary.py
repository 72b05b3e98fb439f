"""A sweep's summary by configuration, from job directories made on disk as a sweep leaves them:
the runs that differ only in `seed` and `repeat` are one configuration; nothing is pooled across
configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from framework.runs.sweep_summary import plot_curves, summarize, verdict

FIXED = ["model=mlp", "trainer.max_epochs=2"]


def job(sweep: Path, number: int, overrides: list[str], acc: float, fingerprint: str, status: str = "completed"):
    folder = sweep / str(number)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    settings = dict(line.split("=", 1) for line in overrides)
    seed, repeat = int(settings.get("seed", 0)), int(settings.get("repeat", 0))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "repeat": repeat}))
    record = {"status": status, "seed": seed, "metrics": {"test/acc": acc, "val/acc": acc}, "fingerprint": fingerprint}
    (folder / "metrics.json").write_text(json.dumps(record))
    epochs = [{"event": "epoch", "epoch": e, "val/loss": 1.0 - acc * e, "val/acc": acc * e} for e in (0, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in epochs))


def lr_by_seed(sweep: Path, accs: dict, repeats: int = 1) -> None:
    """-m optimizer.lr=0.02,0.1 seed=0,1 (repeat=0,1): Hydra's job order, lr outermost."""
    number = 0
    for lr, by_seed in accs.items():
        for seed, acc in by_seed.items():
            for repeat in range(repeats):
                repeated = [f"repeat={repeat}"] if repeats > 1 else []
                overrides = [*FIXED, f"optimizer.lr={lr}", f"seed={seed}", *repeated]
                job(sweep, number, overrides, acc, f"{lr}-{seed}")
                number += 1


ACCS = {"0.02": {0: 0.50, 1: 0.60}, "0.1": {0: 0.90, 1: 0.94}}


def test_a_sweep_over_a_key_and_seeds_has_statistics_per_configuration(tmp_path):
    lr_by_seed(tmp_path, ACCS)
    summary = summarize(tmp_path)
    assert summary["swept"] == ["optimizer.lr"]
    assert [c["label"] for c in summary["configurations"]] == ["optimizer.lr=0.02", "optimizer.lr=0.1"]
    for configuration, (lr, by_seed) in zip(summary["configurations"], ACCS.items()):
        acc = configuration["metrics"]["test/acc"]
        assert configuration["swept"] == {"optimizer.lr": lr} and configuration["seeds"] == [0, 1]
        assert acc["n"] == 2 and acc["mean"] == pytest.approx(sum(by_seed.values()) / 2)
        assert acc["ci95_low"] < acc["mean"] < acc["ci95_high"]
    assert summary["metrics"] == {}  # no pool of both learning rates
    assert [r["configuration"] for r in summary["runs"]] == ["optimizer.lr=0.02"] * 2 + ["optimizer.lr=0.1"] * 2

    table = (tmp_path / "summary.md").read_text()
    assert "| optimizer.lr | metric | n | mean | std | min | max | 95% CI |" in table
    assert "| 0.02 | test/acc | 2 | 0.5500 |" in table and "| 0.1 | test/acc | 2 | 0.9200 |" in table
    assert "| run | optimizer.lr | seed | repeat | status |" in table
    assert "| 0 | 0.02 | 0 | 0 | completed |" in table and "| 3 | 0.1 | 1 | 0 | completed |" in table
    assert verdict(summary) == (0, "4 jobs completed (2 configurations)")


def test_the_curves_are_labelled_by_configuration(tmp_path):
    lr_by_seed(tmp_path, ACCS)
    runs = summarize(tmp_path)["runs"]
    points = [{"epoch": 1, "val/loss": 0.5, "val/acc": 0.4}, {"epoch": 2, "val/loss": 0.4, "val/acc": 0.5}]
    curves = [{**r, "curve": points} for r in runs]
    labels = plot_curves(curves, tmp_path / "curves.png", ["val/loss", "val/acc"])
    assert labels == ["optimizer.lr=0.02", "optimizer.lr=0.1"]


def test_a_seed_sweep_reads_as_one_configuration(tmp_path):
    for seed, acc in enumerate((0.5, 0.6, 0.7)):
        job(tmp_path, seed, [*FIXED, f"seed={seed}"], acc, f"f{seed}")
    summary = summarize(tmp_path)
    assert summary["swept"] == [] and len(summary["configurations"]) == 1
    assert summary["metrics"] == summary["configurations"][0]["metrics"]
    assert summary["metrics"]["test/acc"]["n"] == 3
    table = (tmp_path / "summary.md").read_text()
    assert "\n| metric | n | mean | std | min | max | 95% CI |\n" in table
    assert "\n| run | seed | repeat | status |" in table
    runs = [{**r, "curve": [{"epoch": 1, "val/loss": 0.5, "val/acc": 0.4}]} for r in summary["runs"]]
    labels = plot_curves(runs, tmp_path / "curves.png", ["val/loss", "val/acc"])
    assert labels == ["seed 0", "seed 1", "seed 2", "mean", "mean ± std"]
    assert verdict(summary) == (0, "3 jobs completed")


def test_reproducibility_is_checked_per_seed_within_a_configuration(tmp_path):
    lr_by_seed(tmp_path, ACCS, repeats=2)
    summary = summarize(tmp_path)
    checks = summary["reproducibility"]
    assert [(c["configuration"], c["seed"], c["runs"]) for c in checks] == [
        ("optimizer.lr=0.02", 0, 2),
        ("optimizer.lr=0.02", 1, 2),
        ("optimizer.lr=0.1", 0, 2),
        ("optimizer.lr=0.1", 1, 2),
    ]
    assert summary["all_reproduce"] is True
    # Identical repeats do not count twice.
    assert [c["metrics"]["test/acc"]["n"] for c in summary["configurations"]] == [2, 2]


def test_a_configuration_whose_runs_all_failed_has_no_statistics(tmp_path):
    job(tmp_path, 0, [*FIXED, "optimizer.lr=0.1", "seed=0"], 0.9, "a")
    job(tmp_path, 1, [*FIXED, "optimizer.lr=-1", "seed=0"], 0.0, "b", status="failed")
    summary = summarize(tmp_path)
    assert [(c["label"], c["jobs"], c["completed"]) for c in summary["configurations"]] == [
        ("optimizer.lr=0.1", 1, 1),
        ("optimizer.lr=-1", 1, 0),
    ]
    assert summary["configurations"][1]["metrics"] == {}
    assert verdict(summary)[0] == 1
