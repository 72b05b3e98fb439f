"""python -m framework.compare: identical, or where two runs first part (its main, in process)."""

import json
from types import SimpleNamespace

import pytest
from helpers import train_in_process

from framework.cli import compare


@pytest.fixture
def compare_cli(capsys):
    """compare_cli(a, b) -> the exit code, stdout and stderr of `python -m framework.compare A B`."""

    def run(a, b):
        code = compare.main([str(a), str(b)])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

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
