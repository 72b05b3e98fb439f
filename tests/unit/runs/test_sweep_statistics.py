"""A sweep's statistics and the causes the reproducibility check names, from records made on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_ci_interval_uses_students_t():
    from framework.runs.sweep_summary import statistics_of

    d = statistics_of([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["std"] == 1.0
    assert d["ci95_high"] - d["mean"] == pytest.approx(4.302653 / 3**0.5, rel=1e-6)


def test_the_reproducibility_check_names_what_the_runs_records_say_differs(tmp_path):
    """Repeats that disagree: the summary names a thread-count difference, and a GPU under seeded."""
    import yaml

    from framework.runs.sweep_summary import summarize, verdict

    def job(sweep: Path, number: int, repeat: int, fingerprint: str, num_threads: int, level: str, device: str):
        folder = sweep / str(number)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0", f"repeat={repeat}"]))
        record = {"status": "completed", "seed": 0, "metrics": {"test/acc": 0.9}, "fingerprint": fingerprint,
                  "determinism": {"level": level, "num_threads": num_threads}, "device": device,
                  "meta": {"torch_version": "2.13.0"}}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(record))

    threads = tmp_path / "threads"
    job(threads, 0, 0, "aa", 1, "seeded", "cpu")
    job(threads, 1, 1, "bb", 2, "seeded", "cpu")
    summary = summarize(threads)
    (group,) = summary["reproducibility"]
    assert not group["reproduces"]
    assert group["possible_causes"] == [
        "num_threads differs (1, 2): float results depend on the number of intra-op threads"
    ]
    assert "num_threads differs (1, 2)" in (threads / "summary.md").read_text()
    assert "num_threads differs" in verdict(summary)[1]

    gpu = tmp_path / "gpu"
    job(gpu, 0, 0, "aa", 1, "seeded", "cuda:0")
    job(gpu, 1, 1, "bb", 1, "seeded", "cuda:0")
    (group,) = summarize(gpu)["reproducibility"]
    assert len(group["possible_causes"]) == 1
    assert "determinism=seeded on a GPU is not bitwise" in group["possible_causes"][0]
    assert "determinism=strict is bitwise on a GPU" in group["possible_causes"][0]

    identical = tmp_path / "identical"
    job(identical, 0, 0, "aa", 1, "seeded", "cuda:0")
    job(identical, 1, 1, "aa", 1, "seeded", "cuda:0")
    (group,) = summarize(identical)["reproducibility"]
    assert group["reproduces"] and group["possible_causes"] == []
