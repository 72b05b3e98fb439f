"""Checkpoints and indexes made by hand or by an attacker, resumed from through the real command
line: nothing outside the run is deleted, nothing in them runs, each refusal is one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import run_cli

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


def resave(path, **fields):
    """A checkpoint changed by hand, with valid CRC32s (as torch.save makes them, and an attacker can)."""
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, **fields}, path)


def test_hand_made_fields_of_the_wrong_type_get_one_line(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    resave(run / "checkpoints" / "last.pt", epoch="1", loader_state=[1, 5])
    proc = run_cli(run, *BASE, f"resume={run / 'checkpoints' / 'last.pt'}", GO_ON, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has fields of the wrong type: epoch is '1', not a count; loader_state is [1, 5]" in proc.stderr


def test_a_yaml_alias_bomb_in_a_checkpoint_is_refused_at_once(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    names = "abcdefghij"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip(names, names[1:])
    )  # about 600 bytes that expand to 9**10 elements
    resave(run / "checkpoints" / "last.pt", config=bomb)
    proc = run_cli(run, *BASE, f"resume={run / 'checkpoints' / 'last.pt'}", check=False, timeout=60)
    assert proc.returncode == 1 and "its config uses YAML aliases" in proc.stderr


def test_a_hostile_pickle_is_refused_without_torchs_advice_to_unpickle_it(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    marker = tmp_path / "pwned"
    payload = f"import os; open({str(marker)!r}, 'w').close()"
    torch.save({"meta": {}, "x": Hostile(payload)}, run / "checkpoints" / "evil.pt")
    proc = run_cli(run, *BASE, f"resume={run / 'checkpoints' / 'evil.pt'}", check=False)
    assert proc.returncode == 1
    assert "evil.pt needs more than torch.load(weights_only=True): it pickles builtins.exec" in proc.stderr
    assert "weights_only=False" not in proc.stderr and "Re-running" not in proc.stderr
    assert not marker.exists()


class Hostile:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)
