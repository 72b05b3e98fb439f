"""RemoteFolder.write_index when the store took a write but its answer never came back (the
connection cut after the request), against the module's real S3 server: the retry must not take
the run's own write for another writer's (uploads would stop for the rest of the run), and a
real other writer after it is still caught."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from framework.checkpoint.remote_folder import IndexConflict, RemoteError, RemoteFolder


def entry(name: str, step: int, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    return {"file": name, "role": "last", "kind": "full", "epoch": 1, "step": step, "size": len(data), "sha256": digest}


def answer_lost_once(folder: RemoteFolder) -> None:
    """The folder's next index write reaches the store, then its answer is lost."""
    write = folder.fs.pipe_file

    def taken_then_cut(path, data, **kwargs):
        folder.fs.pipe_file = write
        write(path, data, **kwargs)
        raise ConnectionResetError("the connection was cut before the answer")

    folder.fs.pipe_file = taken_then_cut


@pytest.mark.parametrize("first", [False, True], ids=["a later write", "the first write"])
def test_a_write_whose_answer_was_lost_is_retried_as_the_runs_own(s3, first):
    url = f"s3://{s3.bucket()}/{uuid.uuid4().hex[:8]}"
    ours = RemoteFolder(url)
    ours.read_index()
    if not first:
        ours.write_index({"last.pt": entry("last.pt", 10, b"a")})
    lost = {"last.pt": entry("last.pt", 20, b"b")}
    answer_lost_once(ours)
    with pytest.raises(RemoteError) as raised:
        ours.write_index(lost)
    assert not isinstance(raised.value, IndexConflict)
    assert RemoteFolder(url).read_index() == lost  # the store took it

    # The retry (the uploads thread's next round, maybe with a newer save) lands.
    newer = {"last.pt": entry("last.pt", 30, b"c")}
    ours.write_index(newer)
    assert RemoteFolder(url).read_index() == newer

    # Another writer since is still another writer.
    theirs = RemoteFolder(url)
    theirs.read_index()
    theirs.write_index({"last.pt": entry("last.pt", 40, b"theirs")})
    with pytest.raises(IndexConflict):
        ours.write_index({"last.pt": entry("last.pt", 50, b"d")})
