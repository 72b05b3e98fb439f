"""Values and data that would train nonsense, and a loss that goes non-finite, through the real
command line: one line, exit 1, every JSON file still JSON."""

from __future__ import annotations

import json

import pytest
from helpers import finish_together, read_jsonl, run_cli, start_cli, train_in_process


def strict_json(path):
    """Standard JSON only: NaN and Infinity are not JSON (Python's reader takes them by default)."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    if path.suffix == ".jsonl":
        return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
    return json.loads(path.read_text(), parse_constant=refuse)


def npz(tmp_path, x, y):
    import numpy as np

    path = tmp_path / "data.npz"
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return ["data=npz", f"data.source.path={path}", "model=mlp"]


# The integration tier has every case (tests/integration/test_bad_values_and_data.py); one of each kind here.
BAD_VALUES = {"negative clip": (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1.0 must be positive")}
BAD_DATA = {  # (inputs, labels) -> what the error says
    "fractional labels": (lambda: ([[0.0, 1.0]] * 20, [0.5, 1.0] * 10), "labels must be whole class indices, got 0.5"),
}


def overrides_of(case, tmp_path):
    if case in BAD_VALUES:
        return BAD_VALUES[case]
    make, says = BAD_DATA[case]
    return npz(tmp_path, *make()), says


CASES = ["negative clip", "fractional labels"]


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict:
    """Each case's command, all started at once (each pays for its own interpreter): case -> (its run
    directory, what the error must say, its finished process)."""
    folder = tmp_path_factory.mktemp("nonsense")
    runs, says, started = {}, {}, {}
    for i, case in enumerate(CASES):
        runs[case] = folder / f"case{i}" / "run"
        runs[case].parent.mkdir()
        overrides, says[case] = overrides_of(case, runs[case].parent)
        started[case] = start_cli(runs[case], *overrides, "trainer.max_epochs=1", "logger=none")
    done = finish_together(started)
    return {case: (runs[case], says[case], done[case]) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_values_and_data_that_would_train_nonsense_get_one_line_from_the_command_line(refused, case):
    run, says, proc = refused[case]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)  # not one step trained


def test_a_loss_that_goes_non_finite_stops_the_run_and_every_json_file_stays_json(tmp_path):
    diverging = ["model=mlp", "optimizer.lr=1e12", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
                 "logger=none"]  # fmt: skip
    stopped = run_cli(tmp_path / "stopped", *diverging, check=False)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "train/loss is nan at step" in stopped.stderr or "train/loss is inf at step" in stopped.stderr
    assert "trainer.stop_on_nonfinite_loss=false" in stopped.stderr
    assert strict_json(tmp_path / "stopped" / "metrics.json")["status"] == "failed"
    assert not (tmp_path / "stopped" / "checkpoints" / "last.pt").exists()  # that state was never saved

    train_in_process(tmp_path / "on", *diverging, "trainer.stop_on_nonfinite_loss=false")  # the files it writes
    for name in ("metrics.json", "metrics.jsonl", "checkpoints/index.json"):
        strict_json(tmp_path / "on" / name)  # NaN written as null
    assert strict_json(tmp_path / "on" / "metrics.json")["metrics"]["train/loss"] is None
