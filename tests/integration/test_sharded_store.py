"""The store of sharded checkpoint directories (trainer.strategy=fsdp), in this process: what a
run keeps (retention, last and best), what it reads back, and the room it checks."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import compose_config

from framework.checkpoint import CheckpointError, storage
from framework.runs import layout

# One process (a one-rank group), one thread (two would spin on 2 CPUs): 20 steps, a periodic
# directory every 3, the newest 2 kept.
ONE_PROCESS = ["model=mlp", "trainer.max_epochs=1", "logger=none", "trainer.strategy=fsdp",
               "checkpoint.every_n_steps=3", "checkpoint.keep_last_n=2", "determinism.num_threads=1"]  # fmt: skip


@pytest.fixture
def store(trained_run):
    return storage.for_run(compose_config(*ONE_PROCESS), trained_run(*ONE_PROCESS))


def test_retention_keeps_the_newest_periodic_directories_and_last_and_best(store):
    on_disk = sorted(p.name for p in store.folder.iterdir())
    assert on_disk == ["best", "index.json", "last", "step_00000015", "step_00000018"]  # nothing temporary
    assert sorted(store.index.entries) == ["best", "last", "step_00000015", "step_00000018"]
    assert all(store.where(name).is_dir() for name in store.index.entries)
    assert store.newest_first() == ["last", "best", "step_00000018", "step_00000015"]


def test_last_reads_back_checked_against_the_index_and_its_shards_load_whole(store):
    from framework.checkpoint import dcp_io

    ckpt, passed = store.read("last")
    assert ckpt["global_step"] == 20 and ckpt["meta"]["world_size"] == 1
    assert passed.startswith("the size and xxh3 of its 3 files in index.json")  # shard, .metadata, train_state.pt
    whole = dcp_io.load_whole(store.where("last"))
    assert sorted(whole) == ["model_state_dict", "optimizer_state_dict"]
    assert all(isinstance(t, torch.Tensor) for t in whole["model_state_dict"].values())
    # An alias is the same files under another name: hard links, not copies.
    assert os.path.samefile(store.where("last") / "train_state.pt", store.where("best") / "train_state.pt")


def fill(disk, leave: int) -> None:
    """All of `disk`'s free space taken but `leave` bytes."""
    usage = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, usage.f_bavail * usage.f_frsize - leave)


def test_without_room_a_run_is_refused_before_training_and_a_save_before_writing_in_one_line(store, small_disk):
    from framework.checkpoint.directories import ShardedDirectories

    disk = small_disk("80m", 10000)
    sharded = ShardedDirectories(disk / "checkpoints")
    with pytest.raises(CheckpointError, match="not enough free disk space for this run's checkpoints") as refused:
        sharded.prepare(100 * 2**20)
    assert "\n" not in str(refused.value)
    sharded.prepare(0)
    fill(disk, leave=2**20)
    ckpt, _ = store.read("last")
    with pytest.raises(CheckpointError, match=f"not enough free disk space to write {disk}/checkpoints/last") as e:
        sharded.write("last", ckpt, {"role": "last", "kind": "full"})
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in sharded.folder.iterdir()) == []  # no temporary directory made
    assert not list(disk.glob(layout.TEMPORARIES))
