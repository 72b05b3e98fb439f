"""Checkpoints and indexes made by hand or by an attacker, resumed from through the real command
line: nothing outside the run is deleted, nothing in them runs, each refusal is one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import finish_together, start_cli

# 20 steps an epoch; a periodic file every 10 steps, only the newest one kept.
BASE = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=1"]


GO_ON = "trainer.max_steps=null"


def resave(path, **fields):
    """A checkpoint changed by hand, with valid CRC32s (as torch.save makes them, and an attacker can)."""
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, **fields}, path)


# Each hand-made file, made in a copy of a stopped run: -> the overrides that resume from it.
def fields_of_the_wrong_type(run):
    resave(run / "checkpoints" / "last.pt", epoch="1", loader_state=[1, 5])
    return [f"resume={run / 'checkpoints' / 'last.pt'}", GO_ON]


def a_yaml_alias_bomb(run):
    names = "abcdefghij"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip(names, names[1:])
    )  # about 600 bytes that expand to 9**10 elements
    resave(run / "checkpoints" / "last.pt", config=bomb)
    return [f"resume={run / 'checkpoints' / 'last.pt'}"]


def a_hostile_pickle(run):
    payload = f"import os; open({str(run.parent / 'pwned')!r}, 'w').close()"
    torch.save({"meta": {}, "x": Hostile(payload)}, run / "checkpoints" / "evil.pt")
    return [f"resume={run / 'checkpoints' / 'evil.pt'}"]


class Hostile:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


HAND_MADE = [fields_of_the_wrong_type, a_yaml_alias_bomb, a_hostile_pickle]


@pytest.fixture(scope="module")
def resumed(trained_run, tmp_path_factory) -> dict:
    """Each HAND_MADE file resumed from, in its own copy of a run stopped at step 25 of 40 (last.pt,
    best.pt and step_00000020.pt), all started at once (each pays for its own interpreter): its
    maker -> (the copy, its finished process)."""
    stopped = trained_run(*BASE, "trainer.max_steps=25")
    folder = tmp_path_factory.mktemp("hostile")
    runs, started = {}, {}
    for make in HAND_MADE:
        runs[make] = shutil.copytree(stopped, folder / make.__name__ / "run")
        started[make] = start_cli(runs[make], *BASE, *make(runs[make]))
    done = finish_together(started, timeout=60)  # the bomb among them: refused at once, never expanded
    return {make: (runs[make], done[make]) for make in HAND_MADE}


def test_hand_made_fields_of_the_wrong_type_get_one_line(resumed):
    _, proc = resumed[fields_of_the_wrong_type]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has fields of the wrong type: epoch is '1', not a count; loader_state is [1, 5]" in proc.stderr


def test_a_yaml_alias_bomb_in_a_checkpoint_is_refused_at_once(resumed):
    _, proc = resumed[a_yaml_alias_bomb]
    assert proc.returncode == 1 and "its config uses YAML aliases" in proc.stderr


def test_a_hostile_pickle_is_refused_without_torchs_advice_to_unpickle_it(resumed):
    run, proc = resumed[a_hostile_pickle]
    assert proc.returncode == 1
    assert "evil.pt needs more than torch.load(weights_only=True): it pickles builtins.exec" in proc.stderr
    assert "weights_only=False" not in proc.stderr and "Re-running" not in proc.stderr
    assert not (run.parent / "pwned").exists()
