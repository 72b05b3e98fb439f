"""The command line read with Hydra's own parsers: every spelling of a key counts."""

from __future__ import annotations

import pytest

from framework.config import overrides

STRICT = [
    ["determinism=strict"],
    ["-m", "determinism=strict,seeded"],
    ["-m", "determinism=choice(seeded,strict)"],
    ["-m", "determinism=glob(st*)"],
    ["determinism='strict'"],
    ["++determinism.level=strict"],
    ["--config-dir", "somewhere", "seed=1", "determinism.level=strict"],
]
NOT_STRICT = [
    ["determinism=seeded"],
    ["-m", "determinism=glob(*ed)"],
    ["seed=1", "model.note=strict"],
    ["+determinism_note=strict"],
    ["--cfg", "job"],
    ["determinism=strict=broken"],  # Hydra refuses it; it says so itself
]


@pytest.mark.parametrize("argv", STRICT, ids=" ".join)
def test_every_spelling_of_strict_is_seen(argv):
    assert overrides.asks_for_strict(argv)


@pytest.mark.parametrize("argv", NOT_STRICT, ids=" ".join)
def test_nothing_else_is_taken_for_strict(argv):
    assert not overrides.asks_for_strict(argv)


def test_a_value_is_read_however_it_is_spelt():
    assert overrides.value_of(["-m", "++resume=auto"], "resume") == "auto"
    assert overrides.value_of(["resume='/runs/a b,c=d'"], "resume") == "/runs/a b,c=d"
    assert overrides.value_of(["resume=auto,null"], "resume") is None  # a sweep is not one value
    assert overrides.value_of(["hydra.run.dir=x", "seed=1"], "resume") is None
    path = "/runs/it's a \\ b,c=d\\"
    assert overrides.value_of([f"hydra.run.dir={overrides.quoted(path)}"], "hydra.run.dir") == path


def test_the_keys_an_override_touches():
    groups = {"model": "cnn", "optimizer": "adamw", "hydra/launcher": "basic"}
    given = overrides.given_keys(
        ["optimizer=adamw", "model.width=3", "+optimizer.amsgrad=true", "++seed=4", "~trainer.max_steps",
         "hydra.run.dir=x", "hydra/launcher=basic", "model@backbone=mlp", "data=glob(*)"],
        groups,
    )  # fmt: skip
    assert given == ["optimizer", "model.width", "optimizer.amsgrad", "seed", "trainer.max_steps", "backbone", "data"]


def test_a_key_is_dropped_from_recorded_overrides_however_spelt():
    lines = ["seed=0", "++repeat=1", "optimizer.lr=0.1", "model=mlp"]
    assert overrides.without(lines, "repeat") == ["seed=0", "optimizer.lr=0.1", "model=mlp"]
    assert overrides.without(["+repeat=0", "repeat_note=x"], "repeat") == ["repeat_note=x"]
