"""framework/checkpoint/remote.py's upload queue alone (Uploads), against a real S3 server on
127.0.0.1 (the module's `s3` fixture): how long the run's end waits for it."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from framework.checkpoint import io
from framework.checkpoint.remote import Uploads
from framework.checkpoint.remote_folder import RemoteFolder

# Slow tier: it waits out outages (~7 s), which the fast tier's 3 minutes have no room for.
pytestmark = pytest.mark.slow


def queued(bucket: str, tmp_path) -> Uploads:
    """An upload queue holding one checkpoint file, on a fresh prefix of `bucket`."""
    remote = RemoteFolder(f"s3://{bucket}/{uuid.uuid4().hex[:8]}")
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"weights" * 1000)
    uploads = Uploads(remote, tmp_path / ".uploads", None, history=None)
    entry = {"file": "last.pt", "role": "last", "kind": "full", "epoch": 1, "step": 20, **io.file_digests(checkpoint)}
    uploads.want(entry, checkpoint)
    return uploads


def test_the_end_waits_for_the_queue_then_says_all_is_there(s3, tmp_path):
    uploads = queued(s3.bucket(), tmp_path)
    said = uploads.finish(30, lambda: None)
    uploads.stop()
    assert said["not_uploaded"] == [] and said["indexed"] == ["last.pt"], said


def test_a_stop_signal_while_the_end_waits_cuts_the_wait_to_its_grace(s3, tmp_path):
    """A signal that comes while the run's end waits for a store that does not answer: the wait
    ends within what is left of the signal's grace, not checkpoint.upload_wait_s."""
    bucket = s3.bucket()
    with s3.outage():
        uploads = queued(bucket, tmp_path)
        started = time.monotonic()
        signalled_at = started + 1.0  # the signal comes a second into the wait, with 1 s of grace

        def grace_left():
            now = time.monotonic()
            return None if now < signalled_at else max(1.0 - (now - signalled_at), 0.0)

        said = uploads.finish(60, grace_left)
        waited = time.monotonic() - started
        uploads.stop()
    assert said["not_uploaded"] == ["last.pt"] and said["failed_attempts"] >= 1, said
    assert 1.5 <= waited < 10, f"waited {waited:.1f} s: not cut to the signal's grace"


def test_a_directory_is_named_by_the_index_only_once_every_file_is_there(s3, tmp_path):
    """A sharded checkpoint (a directory: each rank's shard, .metadata, ...) one of whose files
    cannot go up: the files that could are objects there, and the index never names it."""
    folder = tmp_path / "last"
    folder.mkdir()
    files = {}
    for name in ("__0_0.distcp", "__1_0.distcp", ".metadata", "train_state.pt"):
        (folder / name).write_bytes(name.encode() * 100)
        files[name] = io.file_digests(folder / name)
    (folder / "checksums.json").write_text("{}")
    manifest = io.file_digests(folder / "checksums.json")
    entry = {"file": "last", "role": "last", "kind": "full", "epoch": 1, "step": 20, **manifest, "files": files}
    remote = RemoteFolder(f"s3://{s3.bucket()}/{uuid.uuid4().hex[:8]}")
    with s3.outage():  # nothing goes up before rank 1's shard is lost
        uploads = Uploads(remote, tmp_path / ".uploads", None, history=None)
        uploads.want(entry, folder)
        (tmp_path / ".uploads" / files["__1_0.distcp"]["sha256"]).unlink()
    said = uploads.finish(1, lambda: None)
    uploads.stop()
    assert said["not_uploaded"] == ["last"] and said["indexed"] == [], said
    assert remote.read_index() == {}
    there = {path.rsplit("/", 1)[-1] for path in remote.fs.find(remote.path("objects"))}
    assert files["__0_0.distcp"]["sha256"] in there and files["__1_0.distcp"]["sha256"] not in there


def test_the_threads_sweep_of_pins_never_removes_one_being_made(tmp_path, monkeypatch):
    """After each round the thread removes the pins no queued checkpoint needs, while the training
    pins the next save's file and a copy of the history: a sweep in between must wait, not take
    the copy half made (CI met it: FileNotFoundError at a save) or a pin not yet queued."""
    remote = RemoteFolder(f"file://{tmp_path / 'share'}")
    remote.fs.makedirs(remote.path("objects"), exist_ok=True)  # as RemoteCopy.prepare does
    pins = tmp_path / ".uploads"
    files = {}
    for name in ("epoch_0001.pt", "epoch_0002.pt"):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode() * 1000)
    entries = {
        name: {"file": name, "role": "periodic", "kind": "full", "epoch": i, "step": 10 * i, **io.file_digests(path)}
        for i, (name, path) in enumerate(files.items(), start=1)
    }
    in_round, in_pin = threading.Event(), threading.Event()
    real_upload, real_copy = remote.upload, shutil.copyfile

    def upload_once_the_training_pins(*args):
        in_round.set()
        in_pin.wait(10)
        return real_upload(*args)

    def copy_then_give_the_sweep_its_chance(src, dst, **kwargs):
        out = real_copy(src, dst, **kwargs)
        if threading.current_thread() is threading.main_thread() and Path(dst).parent == pins:
            in_pin.set()
            deadline = time.monotonic() + 2
            while Path(dst).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return out

    monkeypatch.setattr(remote, "upload", upload_once_the_training_pins)
    monkeypatch.setattr(shutil, "copyfile", copy_then_give_the_sweep_its_chance)
    uploads = Uploads(remote, pins, {}, history=None)
    uploads.want(entries["epoch_0001.pt"], files["epoch_0001.pt"])
    assert in_round.wait(10), "the thread never began its round"
    uploads.history = tmp_path / "metrics.jsonl"
    uploads.history.write_text('{"step": 10}\n')
    uploads.want(entries["epoch_0002.pt"], files["epoch_0002.pt"])  # the old code: FileNotFoundError here
    said = uploads.finish(30, lambda: None)
    uploads.stop()
    assert said["not_uploaded"] == [] and said["indexed"] == sorted(entries), said
