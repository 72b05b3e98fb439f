"""A crafted index cannot make retention delete files outside the run (a resume in process)."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import train_in_process

# 20 steps an epoch; a periodic file every 10 steps, only the newest one kept.
BASE = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=1"]


GO_ON = "trainer.max_steps=null"


@pytest.fixture
def stopped(trained_run):
    """A run stopped at step 25 of 40, with last.pt, best.pt and step_00000020.pt (shared by the
    whole test session: copy_of it to change it)."""
    return trained_run(*BASE, "trainer.max_steps=25")


def copy_of(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    return run


def test_a_crafted_index_cannot_make_retention_delete_files_outside_the_run(stopped, tmp_path, caplog):
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

    with caplog.at_level("WARNING", logger="framework"):
        summary = train_in_process(run, *BASE, f"resume={run}", GO_ON)
    assert all(v.read_text() == "precious" for v in victims)
    assert "is not a plain file name" in caplog.text and "leads out of" in caplog.text
    assert summary["status"] == "completed"
