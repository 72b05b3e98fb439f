"""A real install: `pip install .` (not editable) into a fresh virtual environment, then
`python -m framework` from another directory trains. The configs and recipes travel inside the wheel."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import finish_together

pytestmark = pytest.mark.slow


def test_a_non_editable_install_trains_from_any_directory(installed):
    # The install and its default training are the `installed` fixture's (tests/conftest.py):
    # test_default_run_is_good_and_leaves_a_complete_run_directory reads the same run.
    python, env_dir, elsewhere = installed.python, installed.env_dir, installed.elsewhere

    # The default training, as the README's first command runs it.
    assert installed.proc.returncode == 0, installed.proc.stderr
    assert installed.run_dir.parent.parent == elsewhere / "outputs"
    summary = json.loads((installed.run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["meta"]["git_commit"] is None
    assert summary["metrics"]["test/acc"] >= 0.97
    assert (installed.run_dir / "checkpoints" / "last.pt").is_file()

    # Which copy is imported, the help, the recipes' list and a recipe's run, started at once (each
    # pays for its own interpreter).
    commands = {
        "where": ["-c", "import framework; print(framework.__file__)"],
        "help": ["-m", "framework", "--help"],
        "list": ["-m", "framework.recipe", "list"],
        "recipe": ["-m", "framework", "recipe=template", "trainer.max_steps=2", "logger=none", "hydra.run.dir=recipe"],
    }
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    started = {name: subprocess.Popen([python, *args], cwd=elsewhere, **pipes) for name, args in commands.items()}
    done = finish_together(started, timeout=600)
    where = done["where"]
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr  # the installed copy, not the checkout
    assert "model: cnn, mlp" in done["help"].stdout

    # The shipped recipes travel in the wheel: one runs, with its own model and dataset module.
    listed = done["list"].stdout
    assert {line.split()[0] for line in listed.splitlines() if line} >= {"digits_cnn", "template", "lr_search"}
    assert done["recipe"].returncode == 0, done["recipe"].stderr
