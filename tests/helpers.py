"""Helpers shared by the tests: the real command line, and reading what a run leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
TESTS = ROOT / "tests"
# The tests' own config folder (models that draw from every RNG, a strict level from a file).
TEST_CONF = ["--config-dir", str(TESTS / "conf")]

# Short runs on the real default data: one epoch of digits is 20 steps.
QUICK = ["trainer.max_epochs=1", "logger=none"]


def run_cli(run_dir: Path, *overrides: str, extra_args=(), env=None, timeout=300, check=True):
    """`python -m framework hydra.run.dir=RUN_DIR OVERRIDES...` in a fresh process."""
    cmd = [sys.executable, "-m", "framework", *extra_args, f"hydra.run.dir={run_dir}", *overrides]
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def read_jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
