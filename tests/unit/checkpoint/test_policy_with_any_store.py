"""The checkpoint policy (Checkpointer) works with any CheckpointStore: it talks to its store only."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import default_policy

from framework.checkpoint import Checkpointer
from framework.checkpoint.storage import CheckpointStore, Stored


class InMemory(CheckpointStore):
    """Checkpoints kept in a dict: no file system, no index file, every call recorded."""

    def __init__(self):
        self.kept: dict[str, dict] = {}
        self.entries: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.clock = 0

    def prepare(self, expected_bytes):
        self.calls.append(("prepare", expected_bytes))

    def room_for(self, nbytes, what):
        self.calls.append(("room_for", nbytes))

    def collectively(self, save):
        self.calls.append(("collectively",))
        return save()

    def write(self, name, payload, described):
        self.clock += 1
        self.calls.append(("write", name))
        self.kept[name] = payload
        self.entries[name] = {"file": name, **described, "time": self.clock}
        return self.entries[name]

    def alias(self, name, target, role):
        self.calls.append(("alias", name, target))
        self.kept[name] = self.kept[target]
        self.entries[name] = {**self.entries[target], "file": name, "role": role}
        return self.entries[name]

    def delete(self, name):
        self.calls.append(("delete", name))
        del self.kept[name], self.entries[name]

    def close(self):
        self.calls.append(("close",))

    def list(self):
        return [Stored(n, e["role"], e["kind"], (e["time"], e["step"])) for n, e in self.entries.items()]

    def empty(self):
        return not self.kept

    def names(self):
        return sorted(self.entries)

    def entry(self, name):
        return self.entries.get(name)

    def read(self, name, sha256=False):
        return self.kept[name], "kept in memory"

    def where(self, name):
        return Path("/memory") / name

    def name_of(self, path):
        return path.name if path.parent == Path("/memory") else None

    def __str__(self):
        return "memory"


def policy(**changes):
    return default_policy(**changes)


def save_at(checkpointer, step, event="step"):
    payload = lambda kind: {"global_step": step, "meta": {"kind": kind}}  # noqa: E731
    return checkpointer.save(payload, event=event, epoch=0, step=step, position=step, metric=None, improved=False)


@pytest.mark.parametrize("async_save", [False, True])
def test_saves_aliases_and_retention_go_through_the_store_alone(async_save):
    store = InMemory()
    checkpointer = Checkpointer(
        policy(every_n_steps=5, keep_last_n=1, async_save=async_save),
        store,
        resumed_from=Path("/memory/step_00000005.pt"),
        state_bytes=123,
    )
    for step in (5, 10, 15):
        save_at(checkpointer, step)
    checkpointer.close()
    # The file this run resumed from is kept; of the others, the newest one.
    assert store.names() == ["last.pt", "step_00000005.pt", "step_00000015.pt"]
    assert store.kept["last.pt"]["global_step"] == 15 and store.entry("step_00000015.pt")["role"] == "periodic"
    assert store.calls[0] == ("prepare", 123) and store.calls[-1] == ("close",)
    # Each save point once through `collectively` (with async_save, its writes come later, in the background).
    assert store.calls.count(("collectively",)) == 3
    assert [c for c in store.calls if c[0] in ("write", "alias", "delete")] == [
        ("write", "last.pt"),
        ("alias", "step_00000005.pt", "last.pt"),
        ("write", "last.pt"),
        ("alias", "step_00000010.pt", "last.pt"),
        ("write", "last.pt"),
        ("alias", "step_00000015.pt", "last.pt"),
        ("delete", "step_00000010.pt"),
    ]


def test_a_disabled_policy_never_prepares_the_store_but_still_meets_the_other_ranks():
    store = InMemory()
    checkpointer = Checkpointer(policy(enabled=False), store)
    assert save_at(checkpointer, 5, event="stop") == []
    checkpointer.close()
    assert store.calls == [("collectively",), ("close",)]
