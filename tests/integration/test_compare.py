"""python -m framework.compare: identical, or where two runs first part (its main, in process)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    assert_one_line_error,
    train_in_process,
)

from framework.cli import compare


@pytest.fixture
def compare_cli(capsys):
    """compare_cli(a, b) -> the exit code, stdout and stderr of `python -m framework.compare A B`."""

    def run(a, b):
        code = compare.main([str(a), str(b)])
        out, err = capsys.readouterr()
        return SimpleNamespace(args=("framework.compare", a, b), returncode=code, stdout=out, stderr=err)

    return run


def test_compare_says_identical_or_where_runs_differ(tmp_path, compare_cli):
    quick = ["model=mlp", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "logger=none"]
    train_in_process(tmp_path / "a", *quick)
    train_in_process(tmp_path / "b", *quick)
    train_in_process(tmp_path / "c", *quick, "optimizer.lr=0.1000001")  # a tiny difference, from the first step on
    same = compare_cli(tmp_path / "a", tmp_path / "b")
    assert same.returncode == 0 and same.stdout.startswith("identical"), same.stdout + same.stderr
    diff = compare_cli(tmp_path / "a", tmp_path / "c")
    assert diff.returncode == 1
    assert "fingerprints differ" in diff.stdout
    assert "metrics first differ at epoch 0 step 1 (step line): lr" in diff.stdout
    assert "model_state_dict.net.1.weight" in diff.stdout  # names the tensors
    missing = compare_cli(tmp_path / "a", tmp_path / "nowhere")
    assert missing.returncode == 2 and "not a finished run directory" in missing.stderr


def test_compare_finds_a_late_divergence(tmp_path):
    from framework.cli.compare import first_divergence

    a = [{"event": "step", "epoch": 0, "step": s, "train/loss": 1.0 / s} for s in range(1, 30)]
    b = [dict(r) for r in a]
    b[17]["train/loss"] += 1e-12
    assert first_divergence(a, b).startswith("metrics first differ at epoch 0 step 18")
    assert "stops after epoch 0 step 20" in first_divergence(a[:20], a)
    assert first_divergence(a, json.loads(json.dumps(a))) is None


def test_compare_names_a_thread_count_difference(tmp_path, compare_cli):
    quick = ["model=mlp", "trainer.max_epochs=1", "logger=none", "checkpoint=off"]
    train_in_process(tmp_path / "one", *quick, "determinism.num_threads=1")
    train_in_process(tmp_path / "two", *quick, "determinism.num_threads=2")
    diff = compare_cli(tmp_path / "one", tmp_path / "two")
    assert diff.returncode == 1 and "fingerprints differ" in diff.stdout
    assert "possible cause: num_threads differs (1, 2): float results depend on the number of intra-op threads" in (
        diff.stdout
    )


@pytest.fixture
def finished_run(trained_run):
    return trained_run("model=mlp", "trainer.max_steps=2", "logger=none")


def altered_copy(run_dir, to, change) -> object:
    copy = shutil.copytree(run_dir, to)
    change(copy)
    return copy


def test_compare_refuses_malformed_runs_and_runs_with_nothing_to_compare(finished_run, tmp_path, compare_cli):
    def line_without_event(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        lines.insert(1, json.dumps({"epoch": 0, "step": 1}))
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    def summary_as_a_list(run_dir):
        (run_dir / "metrics.json").write_text("[1, 2]\n")

    def summary_not_json(run_dir):
        (run_dir / "metrics.json").write_text("{not json\n")

    def state_as_a_list(run_dir):
        torch.save([1, 2], run_dir / "checkpoints" / "last.pt")

    def no_fingerprint_no_state(run_dir):
        summary = json.loads((run_dir / "metrics.json").read_text())
        del summary["fingerprint"]
        (run_dir / "metrics.json").write_text(json.dumps(summary))
        shutil.rmtree(run_dir / "checkpoints")

    changes = (line_without_event, summary_as_a_list, summary_not_json, state_as_a_list, no_fingerprint_no_state)
    altered = {change.__name__: altered_copy(finished_run, tmp_path / change.__name__, change) for change in changes}
    # Each against the run as it was, but the last: against another run without fingerprint or state.
    against = {name: finished_run for name in altered}
    against["no_fingerprint_no_state"] = altered_copy(finished_run, tmp_path / "bare", no_fingerprint_no_state)
    results = [compare_cli(against[name], altered[name]) for name in altered]
    said = dict(zip(altered, results))
    history = altered["line_without_event"] / "metrics.jsonl"
    assert_one_line_error(said["line_without_event"], 2, f"{history} line 2 is not a JSON object with an 'event' key")
    summary = altered["summary_as_a_list"] / "metrics.json"
    assert_one_line_error(said["summary_as_a_list"], 2, f"{summary} holds a list, not a JSON object")
    assert_one_line_error(said["summary_not_json"], 2, f"{altered['summary_not_json'] / 'metrics.json'} is not JSON")
    state = altered["state_as_a_list"] / "checkpoints" / "last.pt"
    assert_one_line_error(said["state_as_a_list"], 2, f"{state} holds a list, not a checkpoint's dict")
    assert_one_line_error(said["no_fingerprint_no_state"], 2, "nothing to compare", "fingerprint", "last.pt")
    assert (finished_run / "metrics.json").is_file() and (finished_run / "checkpoints" / "last.pt").is_file()


def test_compare_says_it_cannot_read_a_damaged_file(finished_run, tmp_path, compare_cli):
    a, b = shutil.copytree(finished_run, tmp_path / "a"), shutil.copytree(finished_run, tmp_path / "b")
    (b / "checkpoints" / "last.pt").write_bytes(b"garbage")
    proc = compare_cli(a, b)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: cannot compare") and "different" not in proc.stdout
