"""What broke when the framework was attacked (issue 8), each through the real command line.

Every test here was run against the code before its fix and failed there."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import read_summary, run_cli

pytestmark = pytest.mark.slow

# 20 steps an epoch; a periodic file every 10 steps, only the newest one kept.
BASE = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=1"]
GO_ON = "trainer.max_steps=null"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped at step 25 of 40, with last.pt, best.pt and step_00000020.pt."""
    run = tmp_path_factory.mktemp("hardening") / "run"
    run_cli(run, *BASE, "trainer.max_steps=25")
    return run


def copy_of(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    return run


def test_a_crafted_index_cannot_make_retention_delete_files_outside_the_run(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    victims = [tmp_path / "victim_absolute", tmp_path / "victim_relative", tmp_path / "victim_linked"]
    for victim in victims:
        victim.write_text("precious")
    (run / "checkpoints" / "outside.pt").symlink_to(victims[2])
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    template = next(e for e in index["files"] if e["role"] == "periodic")
    for name in (str(victims[0]), "../../victim_relative", "outside.pt"):
        index["files"].append({**template, "file": name, "step": 1})  # the oldest: first to go
    (run / "checkpoints" / "index.json").write_text(json.dumps(index))

    proc = run_cli(run, *BASE, f"resume={run}", GO_ON)
    assert all(v.read_text() == "precious" for v in victims)
    assert "is not a plain file name" in proc.stdout and "leads out of" in proc.stdout
    assert read_summary(run)["status"] == "completed"
