"""Checkpoint files: atomic verified writes, the index, the policy and retention, safe loading."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from helpers import checkpointer, flip_middle_byte, make_state, payload_maker

from framework.checkpoint import CheckpointError, Index, io, storage
from framework.config.errors import ConfigError
from framework.runs import resume


def test_written_file_loads_with_weights_only_and_is_indexed(tmp_path):
    state = make_state()
    ck = checkpointer(tmp_path)
    state.epoch, state.global_step = 1, 20
    assert ck.save(payload_maker(state), event="epoch", epoch=1, step=20, position=0, metric=0.5, improved=True) == [
        "last.pt",
        "best.pt",
    ]
    folder = tmp_path / "checkpoints"
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(folder / name, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 20 and set(io.FULL_KEYS) <= ckpt.keys()
    entries = json.loads((folder / "index.json").read_text())["files"]
    last = next(e for e in entries if e["file"] == "last.pt")
    assert (last["epoch"], last["step"], last["metric"]) == (1, 20, 0.5)
    assert last["size"] == (folder / "last.pt").stat().st_size
    assert last["sha256"] == io.sha256_of(folder / "last.pt")
    assert not list(folder.glob(".*tmp*"))


def test_an_error_in_the_middle_of_a_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    state = make_state()
    ck = checkpointer(tmp_path)
    state.global_step = 20
    ck.save(payload_maker(state), event="epoch", epoch=1, step=20, position=0, metric=None, improved=False)
    last = tmp_path / "checkpoints" / "last.pt"
    before = io.sha256_of(last)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("injected: disk went away mid-write")

    monkeypatch.setattr(io.torch, "save", torn_save)
    state.global_step = 40
    with pytest.raises(CheckpointError, match="injected"):  # one line for the user, not a traceback
        ck.save(payload_maker(state), event="epoch", epoch=2, step=40, position=0, metric=None, improved=False)
    assert io.sha256_of(last) == before  # untouched
    assert not list(last.parent.glob(".*tmp*"))  # no torn temporary file left
    assert Index(last.parent).entries["last.pt"]["step"] == 20
    assert resume.newest_valid(storage.for_folder(last.parent)).ckpt["global_step"] == 20


def test_a_write_that_does_not_verify_never_replaces_the_good_file(tmp_path, monkeypatch):
    state = make_state()
    ck = checkpointer(tmp_path)
    ck.save(payload_maker(state), event="epoch", epoch=1, step=20, position=0, metric=None, improved=False)
    last = tmp_path / "checkpoints" / "last.pt"
    before = io.sha256_of(last)
    real_save = torch.save
    # A payload that pickles an arbitrary object: it would need an allow-list to load.
    monkeypatch.setattr(io.torch, "save", lambda obj, f: real_save({**obj, "bad": Fraction(1, 3)}, f))
    with pytest.raises(CheckpointError, match="weights_only"):
        ck.save(payload_maker(state), event="epoch", epoch=2, step=40, position=0, metric=None, improved=False)
    assert io.sha256_of(last) == before and not list(last.parent.glob(".*tmp*"))


def test_not_enough_disk_space_is_said_clearly_and_keeps_every_checkpoint(tmp_path, monkeypatch):
    state = make_state()
    ck = checkpointer(tmp_path, every_n_epochs=1)
    ck.save(payload_maker(state), event="epoch", epoch=1, step=20, position=0, metric=None, improved=False)
    folder = tmp_path / "checkpoints"
    before = {p.name: io.sha256_of(p) for p in folder.glob("*.pt")}
    real = io.os.statvfs(folder)
    full = SimpleNamespace(f_frsize=real.f_frsize, f_bavail=10 * 2**20 // real.f_frsize, f_files=0, f_favail=0)
    monkeypatch.setattr(io.os, "statvfs", lambda p: full)
    with pytest.raises(CheckpointError, match=r"not enough free disk space to write .*last\.pt.*10 MiB free"):
        ck.save(payload_maker(state), event="epoch", epoch=2, step=40, position=0, metric=None, improved=False)
    assert {p.name: io.sha256_of(p) for p in folder.glob("*.pt")} == before
    assert not list(folder.glob(".*tmp*"))


def test_retention_past_ten_periodic_files_keeps_the_newest_by_step(tmp_path):
    state = make_state()
    folder = tmp_path / "checkpoints"
    resumed_from = folder / "step_00000009.pt"
    ck = checkpointer(tmp_path, resumed_from=resumed_from, every_n_steps=9, keep_last_n=3)
    for step in range(9, 9 * 13, 9):  # 12 periodic files: step 9 ... 108
        state.global_step = step
        ck.save(payload_maker(state), event="step", epoch=0, step=step, position=step, metric=None, improved=False)
    on_disk = sorted(p.name for p in folder.glob("*.pt"))
    # The newest three by step (not by name), the one this run resumed from, and last.pt.
    assert on_disk == ["last.pt", "step_00000009.pt", "step_00000090.pt", "step_00000099.pt", "step_00000108.pt"]
    assert sorted(Index(folder).entries) == on_disk
    assert torch.load(folder / "last.pt", weights_only=True)["global_step"] == 108


def test_retention_orders_by_step_not_by_file_name(tmp_path):
    state = make_state()
    ck = checkpointer(tmp_path, every_n_epochs=1, keep_last_n=2, save_last=False)
    ck.store.index.record(
        {
            "file": "epoch_2.pt",
            "role": "periodic",
            "kind": "full",
            "epoch": 2,
            "step": 2,
            "position": 0,
            "metric": None,
            "size": 0,
            "sha256": "",
            "time": 0,
        }
    )
    (tmp_path / "checkpoints" / "epoch_2.pt").write_bytes(b"old-style unpadded name")
    for epoch in (10, 11):
        state.global_step = epoch
        ck.save(payload_maker(state), event="epoch", epoch=epoch, step=epoch, position=0, metric=None, improved=False)
    # By name, "epoch_2.pt" sorts after "epoch_0011.pt"; by step it is the oldest, and goes.
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["epoch_0010.pt", "epoch_0011.pt"]


def test_model_only_files_hold_weights_and_config_and_cannot_resume(tmp_path):
    state = make_state()
    ck = checkpointer(tmp_path, every_n_epochs=1, model_only=True, save_last=False)
    assert ck.save(payload_maker(state), event="epoch", epoch=1, step=20, position=0, metric=None, improved=False) == [
        "epoch_0001.pt"
    ]
    path = tmp_path / "checkpoints" / "epoch_0001.pt"
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == set(io.MODEL_KEYS) and ckpt["meta"]["kind"] == "model"
    with pytest.raises(ConfigError, match="model-only"):
        resume.find(str(path), tmp_path)


def saved_at_steps_5_and_10(tmp_path):
    """A checkpoints folder saved at steps 5 and 10: step_00000005.pt, step_00000010.pt, last.pt."""
    state = make_state()
    ck = checkpointer(tmp_path, every_n_steps=5)
    for step in (5, 10):
        state.global_step = step
        ck.save(payload_maker(state), event="step", epoch=0, step=step, position=step, metric=None, improved=False)
    return tmp_path / "checkpoints"


def test_a_torn_or_corrupt_file_is_never_resumed_from(tmp_path):
    folder = saved_at_steps_5_and_10(tmp_path)
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 2])  # torn
    corrupt = bytearray((folder / "step_00000010.pt").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte: still a zip, wrong checksum
    (folder / "step_00000010.pt").write_bytes(bytes(corrupt))
    assert resume.newest_valid(storage.for_folder(folder)).path.name == "step_00000005.pt"
    (folder / "step_00000005.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="no valid full checkpoint"):
        resume.newest_valid(storage.for_folder(folder))


def test_temporary_files_left_by_a_killed_write_are_cleared(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".last.pt.tmp-12345").write_bytes(b"PK half")
    (folder / ".last.pt.tmp-12345-replaced").write_bytes(b"a replaced file, set aside to be deleted")
    (folder / "notes.txt").write_text("mine")
    checkpointer(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_the_checksums_computed_while_writing_are_the_files(tmp_path):
    """Blocks of the payload's own tensors are hashed after `write` returns; any other block
    (torch's temporary buffers, here a large one that is then overwritten) before."""
    from concurrent.futures import ThreadPoolExecutor

    payload = {"w": torch.randn(3 * 2**20), "small": torch.arange(10)}
    path = tmp_path / "f.pt"
    with open(path, "wb") as f, ThreadPoolExecutor(1) as pool:
        hashing = io.HashingWriter(f, pool, payload)
        torch.save(payload, hashing)
        reused = bytearray(b"x" * 3 * 2**20)  # a buffer its writer reuses once write returns
        hashing.write(reused)
        reused[:] = b"y" * len(reused)
        f.flush()
        digests = hashing.digests()
    assert (digests["sha256"], hashing.size) == (io.sha256_of(path), path.stat().st_size)
    assert digests["xxh3_128"] == io.xxh3_of(path)


def test_the_replaced_file_is_deleted_in_the_discard_thread_not_by_the_rename(tmp_path):
    """Freeing a large file's blocks is left to another thread: the rename over it frees nothing."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "last.pt"
    payload = payload_maker(make_state())("full")
    io.write(payload, path)
    old_inode = path.stat().st_ino
    with ThreadPoolExecutor(1) as discard:
        go = threading.Event()
        discard.submit(go.wait)  # the discard thread is busy until told
        io.write(payload, path, discard)
        aside = tmp_path / f".last.pt.tmp-{os.getpid()}-replaced"
        assert path.stat().st_ino != old_inode and aside.stat().st_ino == old_inode  # not freed yet
        go.set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    io.write(payload, path)  # without a discard thread: deleted before write returns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_file_its_index_entry_no_longer_describes_is_checked_by_its_crc32s(tmp_path):
    """Killed between the rename and the index update: the entry's size may still fit while its
    xxh3 does not. The file is then checked record by record, and a sound one is used."""
    state = make_state()
    ck = checkpointer(tmp_path)
    state.global_step = 10
    ck.save(payload_maker(state), event="step", epoch=0, step=10, position=10, metric=None, improved=False)
    last = tmp_path / "checkpoints" / "last.pt"
    entry = Index(last.parent).entry(last)
    ckpt, passed = io.load_checked(last, entry)
    assert passed == "its size and xxh3 in index.json"
    state.global_step = 20
    io.write(payload_maker(state)("full"), last)  # the next save's file, renamed in; no index update
    assert last.stat().st_size == entry["size"] and io.xxh3_of(last) != entry["xxh3_128"]
    ckpt, passed = io.load_checked(last, entry)
    assert ckpt["global_step"] == 20
    assert passed.startswith("its CRC32 records (index.json's entry for it is out of date")
    with pytest.raises(CheckpointError, match="does not match the sha256 in its index.json"):
        io.load_checked(last, entry, sha256=True)  # the verify tool: strict
    flip_middle_byte(last)
    with pytest.raises(CheckpointError, match="fail their CRC32"):
        io.load_checked(last, entry)


def test_index_entries_without_a_size_or_with_a_malformed_xxh3_are_ignored(tmp_path, caplog):
    """A hand-edited index.json: such entries are set aside with a warning, never a traceback;
    the files they named are checked as unlisted ones."""
    folder = saved_at_steps_5_and_10(tmp_path)
    index = json.loads((folder / "index.json").read_text())
    for entry in index["files"]:
        if entry["file"] == "last.pt":
            entry.pop("size")
        else:
            entry["xxh3_128"] = 12
    (folder / "index.json").write_text(json.dumps(index))
    caplog.set_level("INFO")
    found = resume.newest_valid(storage.for_folder(folder))
    assert found.path.name == "last.pt" and found.ckpt["global_step"] == 10
    assert "checked: its CRC32 records (index.json does not list it" in caplog.text
    assert "size None is not a count" in caplog.text and "xxh3_128 12 is not a hex digest" in caplog.text
