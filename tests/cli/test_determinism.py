"""Determinism levels through the real command line: the same seed gives the same bits in any
process, strict puts its settings in force (the hash seed needs a re-launch) and names an op
that has no deterministic implementation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import (
    TEST_CONF,
    finish_together,
    read_summary,
    run_cli,
    start_cli,
    train_in_process,
)

QUICK = ["model=mlp", "trainer.max_epochs=1", "logger=none", "checkpoint=off"]


@pytest.mark.slow
def test_fingerprints_are_identical_for_a_seed_and_differ_between_seeds(tmp_path):
    # A process of its own; meanwhile, on the other CPU, the runs in this one.
    alone = start_cli(tmp_path / "a", *QUICK, "seed=0")
    # In this process, another one (after whatever other tests left behind).
    seed0 = train_in_process(tmp_path / "in", *QUICK, "seed=0")["fingerprint"]
    assert train_in_process(tmp_path / "c", *QUICK, "seed=1")["fingerprint"] != seed0
    # The batches do not depend on which worker process loads them.
    for workers in (1, 2, 4):
        assert train_in_process(tmp_path / f"w{workers}", *QUICK, f"data.num_workers={workers}")["fingerprint"] == seed0
    done = finish_together({"alone": alone})["alone"]
    assert done.returncode == 0, done.stderr
    assert read_summary(tmp_path / "a")["fingerprint"] == seed0


@pytest.fixture(scope="module")
def strict_stopped(tmp_path_factory):
    """A strict run of two epochs stopped at step 25, with checkpoints, started without a hash seed
    (strict re-launches itself with one). Never changed: a test that does copies it."""
    run = tmp_path_factory.mktemp("strict") / "run"
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYTHONHASHSEED", raising=False)
        run_cli(run, "model=mlp", "trainer.max_epochs=2", "logger=none", "determinism=strict", "trainer.max_steps=25")
    return run


def test_strict_puts_its_settings_in_force_and_records_them(strict_stopped):
    settings = read_summary(strict_stopped)["determinism"]
    assert settings == {
        "level": "strict",
        "num_threads": 1,
        "deterministic_algorithms": True,
        "cudnn_benchmark": False,
        "cudnn_deterministic": True,
        "cublas_workspace_config": ":4096:8",
        "pythonhashseed": "0",
    }

    meta = torch.load(strict_stopped / "checkpoints" / "last.pt", weights_only=True)["meta"]
    assert meta["determinism"] == "strict" and meta["determinism_settings"] == settings


def test_strict_from_a_config_file_without_a_hash_seed_refuses_and_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    # Both started at once (each pays for its own interpreter).
    proc, with_seed = finish_together(
        {
            "without": start_cli(tmp_path / "run", "determinism=paranoid", *QUICK, extra_args=TEST_CONF),
            "with": start_cli(
                tmp_path / "run2", "determinism=paranoid", *QUICK, extra_args=TEST_CONF, env={"PYTHONHASHSEED": "7"}
            ),
        }
    ).values()
    assert proc.returncode == 1
    assert "PYTHONHASHSEED" in proc.stderr and "PYTHONHASHSEED=0 python -m framework" in proc.stderr
    assert with_seed.returncode == 0, with_seed.stderr
    assert read_summary(tmp_path / "run2")["determinism"]["pythonhashseed"] == "7"


def test_a_strict_run_resumes_without_naming_its_level_again(strict_stopped, tmp_path, monkeypatch):
    """The level comes from the checkpoint's config, too late to fix the hash seed: the resume
    re-launches itself as the first run did (its metrics.json says strict)."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    run = shutil.copytree(strict_stopped, tmp_path / "run")
    resumed = run_cli(run, "resume=auto", "trainer.max_steps=null", check=False)
    assert resumed.returncode == 0, resumed.stderr
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["resumes"][-1]["global_step"] == 25
    assert summary["determinism"]["level"] == "strict" and summary["determinism"]["pythonhashseed"] == "0"


def test_setting_the_hash_seed_inside_a_running_interpreter_is_not_enough():
    code = (
        "import os; os.environ['PYTHONHASHSEED'] = '0'\n"
        "from framework.runs.reproducibility import hash_seed_in_force; print(hash_seed_in_force())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_an_op_without_a_deterministic_implementation_is_named_under_strict(tmp_path):
    # Both started at once (each pays for its own interpreter).
    proc, seeded = finish_together(
        {
            level: start_cli(tmp_path / level, "model=unpool", f"determinism={level}", *QUICK[1:], extra_args=TEST_CONF)
            for level in ("strict", "seeded")
        }
    ).values()
    assert proc.returncode == 1
    assert "max_unpooling2d_forward_out has no deterministic implementation" in proc.stderr
    assert "determinism=seeded" in proc.stderr and "Traceback" not in proc.stderr
    assert seeded.returncode == 0, seeded.stderr
