"""framework/checkpoint/remote_folder.py alone: the URL checks, and RemoteFolder's index and
objects against a real S3 server on 127.0.0.1 (the module's `s3` fixture) and a file:// folder."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from framework.checkpoint.remote_folder import (
    IndexConflict,
    InvalidIndex,
    RemoteError,
    RemoteFolder,
    remote_entry_problem,
    url_problem,
)


def entry(name: str, step: int, data: bytes = b"weights") -> dict:
    """An index entry of a checkpoint file whose bytes are `data`."""
    digest = hashlib.sha256(data).hexdigest()
    return {"file": name, "role": "last", "kind": "full", "epoch": 1, "step": step, "size": len(data), "sha256": digest}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("bucket/runs/r1", "is not a URL"),
        ("/mnt/share/r1", "is not a URL"),
        ("s3://key-id:the-secret@bucket/r1", "the URL holds credentials"),
        ("nosuch://bucket/r1", "fsspec knows no protocol nosuch://"),
        ("S3://bucket/r1", "in lower case"),  # fsspec knows no S3://
        ("file://mnt/share/r1", "needs an absolute path"),  # file:///mnt/share/r1 meant: not ./mnt/share/r1
        ("file://./share/r1", "needs an absolute path"),
    ],
)
def test_a_url_that_cannot_be_a_remote_copy_is_refused(url, says):
    problem = url_problem(url)
    assert problem is not None and says in problem and problem.startswith("checkpoint.remote"), problem
    assert "the-secret" not in problem  # a message is recorded: never the credentials


@pytest.mark.parametrize("url", ["s3://bucket/runs/r1", "file:///mnt/share/r1"])
def test_a_remote_copys_url(url):
    assert url_problem(url) is None


@pytest.fixture(scope="module")
def bucket(s3) -> str:
    return s3.bucket()


@pytest.fixture
def s3_url(bucket) -> str:
    """A fresh, empty remote folder on the S3 server (a bucket of its own costs more)."""
    return f"s3://{bucket}/{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["s3", "file"])
def url(request, tmp_path):
    """A fresh, empty remote folder: on the S3 server, or a file:// share."""
    if request.param == "file":
        (tmp_path / "share" / "objects").mkdir(parents=True)  # as the run's start makes it
        return f"file://{tmp_path}/share"
    return request.getfixturevalue("s3_url")


def test_a_folder_without_an_index_lists_nothing_and_then_what_was_written(url):
    assert RemoteFolder(url).read_index() == {}
    first = RemoteFolder(url)
    first.read_index()
    written = {"last.pt": entry("last.pt", 20), "epoch_0001.pt": entry("epoch_0001.pt", 20, b"other")}
    first.write_index(written)
    assert RemoteFolder(url).read_index() == written
    written["last.pt"] = entry("last.pt", 40, b"newer")
    first.write_index(written)  # its own write is no conflict
    assert RemoteFolder(url).read_index() == written


def test_a_second_writer_that_first_found_no_index_is_refused(s3_url):
    url = s3_url
    ours, theirs = RemoteFolder(url), RemoteFolder(url)
    assert ours.read_index() == theirs.read_index() == {}
    theirs.write_index({"last.pt": entry("last.pt", 20)})
    with pytest.raises(IndexConflict, match="another writer"):
        ours.write_index({"last.pt": entry("last.pt", 30, b"ours")})
    assert RemoteFolder(url).read_index() == {"last.pt": entry("last.pt", 20)}


def test_an_index_written_by_another_since_it_was_read_is_not_overwritten(s3_url):
    url = s3_url
    ours, theirs = RemoteFolder(url), RemoteFolder(url)
    ours.read_index()
    ours.write_index({"last.pt": entry("last.pt", 20)})
    theirs.read_index()
    theirs.write_index({"last.pt": entry("last.pt", 40, b"theirs")})
    with pytest.raises(IndexConflict, match="two runs write to one checkpoint.remote"):
        ours.write_index({"last.pt": entry("last.pt", 60, b"ours")})
    assert RemoteFolder(url).read_index() == {"last.pt": entry("last.pt", 40, b"theirs")}


def test_a_bucket_that_does_not_exist_is_a_remote_error(s3):
    with pytest.raises(RemoteError, match="cannot read its index"):
        RemoteFolder("s3://no-such-bucket-here/run").read_index()


def test_a_folder_named_bucket_has_no_index_yet(s3, tmp_path):
    """A missing index is said with its path: a path with "bucket" in it is no missing bucket."""
    name = f"ckpt-bucket-{uuid.uuid4().hex[:8]}"
    folder = RemoteFolder(f"s3://{name}/run")
    folder.fs.mkdir(name)
    assert folder.read_index() == {}
    assert RemoteFolder(f"file://{tmp_path}/bucket/run").read_index() == {}


def test_an_index_entry_that_names_an_object_outside_objects_is_not_trusted(s3_url):
    """The sha256 names the object (objects/<sha256>): a hostile index cannot lead a download, or
    a deletion, anywhere else."""
    good = entry("last.pt", 20)
    outside = {**entry("epoch_0001.pt", 10), "sha256": "../../index.json"}
    shard = {**entry("step_1.pt", 5), "files": {"a.distcp": {"sha256": "../x", "size": 1}}}
    history = {**entry("best.pt", 5), "history": {"sha256": "0" * 63 + "/", "size": 1}}
    unsized = {**entry("epoch_0002.pt", 15), "files": {"a.distcp": {"sha256": "0" * 64}}}
    assert remote_entry_problem(good) is None
    for hostile in (outside, shard, history, unsized):
        assert remote_entry_problem(hostile) is not None, hostile

    folder = RemoteFolder(s3_url)
    listed = [good, outside, shard, history, unsized]
    folder.fs.pipe_file(folder.path("index.json"), json.dumps({"files": listed}).encode())
    assert folder.read_index() == {"last.pt": good}


def test_objects_go_up_and_come_back_by_their_sha256(url, tmp_path):
    folder = RemoteFolder(url)
    local = tmp_path / "last.pt"
    local.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    folder.upload(local, digest, "last.pt")
    back = tmp_path / "back.pt"
    folder.download(digest, back)
    assert back.read_bytes() == local.read_bytes()
    folder.delete(digest)
    folder.delete(digest)  # already gone: nothing to do
    with pytest.raises(RemoteError, match="cannot download"):
        folder.download(digest, tmp_path / "again.pt")


@pytest.mark.parametrize("files", [5, {"last.pt": {}}, "last.pt"])
def test_an_index_whose_files_are_no_list_is_not_a_valid_index(url, files):
    """Not a list of entries: one error naming the index, for a run and the tools alike."""
    folder = RemoteFolder(url)
    folder.fs.pipe_file(folder.path("index.json"), json.dumps({"files": files}).encode())
    with pytest.raises(InvalidIndex, match="index.json is not a valid index"):
        folder.read_index()
