"""The local-file checkpoint store, through the CheckpointStore interface only."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
import torch

from framework.checkpoint import storage
from framework.checkpoint.errors import CheckpointError, DamagedCheckpoint
from framework.checkpoint.formats import FORMAT_VERSION
from framework.checkpoint.storage import CheckpointStore, LocalFiles


def payload(step: int, kind: str = "full") -> dict:
    """A tiny checkpoint of `kind` that passes every check a read makes."""
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "timestamp": datetime.now(timezone.utc).isoformat()}
    model = {"epoch": 0, "global_step": step, "model_state_dict": {"w": torch.full((4096,), float(step))}}
    if kind == "model":
        return {**model, "config": "seed: 0\n", "meta": meta}
    return {
        **model,
        "optimizer_state_dict": {},
        "scheduler_state_dict": {},
        "scaler_state_dict": {},
        "loss": 0.5,
        "best_metric": None,
        "rng_state": torch.zeros(2, dtype=torch.uint8),
        "cuda_rng_state": [],
        "numpy_rng_state": [],
        "python_rng_state": [],
        "rng_per_rank": [],
        "loader_state": {"epoch": 0, "position": step},
        "config": "seed: 0\n",
        "meta": meta,
    }


def described(step: int, role: str = "periodic", kind: str = "full") -> dict:
    return {"role": role, "kind": kind, "epoch": 0, "step": step, "position": step, "metric": None}


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    store = storage.for_run(None, tmp_path / "run")
    store.prepare(expected_bytes=1024)
    yield store
    store.close()


def test_a_written_checkpoint_is_listed_with_its_size_and_checksums_and_reads_back_verified(store):
    entry = store.write("last.pt", payload(5), described(5, role="last"))
    assert entry == store.entry("last.pt")
    assert entry["size"] == store.where("last.pt").stat().st_size
    assert len(entry["sha256"]) == 64 and len(entry["xxh3_128"]) == 32
    ckpt, passed = store.read("last.pt", sha256=True)
    assert ckpt["global_step"] == 5 and torch.equal(ckpt["model_state_dict"]["w"], torch.full((4096,), 5.0))
    assert passed == "its size, xxh3 and sha256 in index.json"
    assert [(s.name, s.role, s.kind) for s in store.list()] == [("last.pt", "last", "full")]
    assert not store.empty() and store.names() == ["last.pt"]


def test_an_alias_is_the_same_checkpoint_under_another_name(store):
    first = store.write("step_00000005.pt", payload(5), described(5))
    alias = store.alias("best.pt", "step_00000005.pt", "best")
    assert alias == {**first, "file": "best.pt", "role": "best"} == store.entry("best.pt")
    assert store.read("best.pt")[0]["global_step"] == 5
    assert os.path.samefile(store.where("best.pt"), store.where("step_00000005.pt"))


def test_newest_first_orders_by_save_not_by_name_and_puts_last_first(store):
    for step in (10, 9):  # a rewind: step 9 saved after step 10
        store.write(f"epoch_{step}.pt", payload(step), described(step))
    store.alias("last.pt", "epoch_9.pt", "last")
    store.write("step_00000011.pt", payload(11, kind="model"), described(11, kind="model"))
    # The model-only checkpoint cannot resume: it is not among them.
    assert store.newest_first() == ["last.pt", "epoch_9.pt", "epoch_10.pt"]


def test_a_corrupted_checkpoint_is_refused_and_named(store):
    store.write("last.pt", payload(5), described(5, role="last"))
    data = bytearray(store.where("last.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte of the weights: torch.load alone would not notice
    store.where("last.pt").write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint, match=r"last\.pt is corrupt: 1 record\(s\) of its archive fail"):
        store.read("last.pt")


def test_a_checkpoint_written_but_never_listed_is_found_by_its_own_meta(store, tmp_path):
    other = LocalFiles(tmp_path / "elsewhere")
    other.prepare(0)
    other.write("step_00000007.pt", payload(7), described(7))
    other.close()
    os.replace(other.where("step_00000007.pt"), store.where("step_00000007.pt"))  # as a run killed before its index
    assert store.entry("step_00000007.pt") is None
    assert [(s.name, s.role, s.kind, s.order[1]) for s in store.list()] == [("step_00000007.pt", "periodic", "full", 7)]
    ckpt, passed = store.read("step_00000007.pt")
    assert ckpt["global_step"] == 7 and passed.startswith("its CRC32 records (index.json does not list it")


def test_delete_removes_the_checkpoint_and_its_entry(store):
    store.write("step_00000005.pt", payload(5), described(5))
    store.write("step_00000010.pt", payload(10), described(10))
    store.delete("step_00000005.pt")
    assert not store.where("step_00000005.pt").exists() and store.entry("step_00000005.pt") is None
    assert store.names() == ["step_00000010.pt"]
    with pytest.raises(ValueError, match="not a checkpoint name"):
        store.delete("../step_00000010.pt")
    assert store.where("step_00000010.pt").exists()


def test_a_listed_checkpoint_whose_file_is_gone_is_named_and_the_store_holds_nothing(store):
    store.write("last.pt", payload(5), described(5, role="last"))
    store.where("last.pt").unlink()
    assert store.empty() and store.names() == ["last.pt"]
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        store.read("last.pt")


@pytest.fixture
def ten_mib_free(monkeypatch):
    """A file system that says it has 10 MiB free, and no inode limit."""
    real = os.statvfs("/")
    small = SimpleNamespace(f_frsize=real.f_frsize, f_bavail=10 * 2**20 // real.f_frsize, f_files=0, f_favail=0)
    monkeypatch.setattr(os, "statvfs", lambda path: small)


def test_no_room_is_refused_in_one_line_before_anything_is_written(store, ten_mib_free):
    with pytest.raises(CheckpointError, match=r"not enough free disk space to write one: .* 10 MiB free"):
        store.room_for(2**20, "to write one")
    with pytest.raises(CheckpointError, match=r"not enough free disk space to write .*last\.pt"):
        store.write("last.pt", payload(5), described(5, role="last"))
    assert store.empty() and store.list() == [] and os.listdir(store.where("last.pt").parent) == []


def test_prepare_refuses_a_run_without_room_for_one_checkpoint(tmp_path, ten_mib_free):
    with pytest.raises(CheckpointError, match="not enough free disk space for this run's checkpoints"):
        LocalFiles(tmp_path / "checkpoints").prepare(expected_bytes=2**20)


def test_prepare_refuses_a_file_where_the_folder_goes_and_clears_a_killed_runs_temporaries(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CheckpointError, match="is not a folder: checkpoints cannot be written there"):
        LocalFiles(tmp_path / "file").prepare(0)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".last.pt.tmp-99999").write_bytes(b"half a file")
    store = LocalFiles(folder)
    assert store.names() == []  # constructing and reading touch nothing
    assert (folder / ".last.pt.tmp-99999").exists()
    store.prepare(0)
    assert os.listdir(folder) == []
    store.close()


def test_without_torchrun_this_process_writes_and_nobody_waits(store):
    assert store.collectively(lambda: store.write("last.pt", payload(1), described(1, "last"))["file"]) == "last.pt"


def test_where_is_under_the_run_directorys_checkpoints_and_names_map_back(tmp_path):
    store = storage.for_run(None, tmp_path)
    assert store.where("last.pt") == tmp_path / "checkpoints" / "last.pt"
    assert str(store) == str(tmp_path / "checkpoints")
    assert store.name_of(tmp_path / "checkpoints" / "step_00000005.pt") == "step_00000005.pt"
    assert store.name_of(tmp_path / "other" / "step_00000005.pt") is None
