"""python -m framework.ckpt inspect, verify and export of a run's remote copy (checkpoint.remote),
against a real S3 server on 127.0.0.1 (the module's `s3`): the tool's main() in this process."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from helpers import train_in_process
from safetensors import safe_open
from safetensors.torch import load_file

from framework.checkpoint.index import Index
from framework.cli.ckpt import main

# In process, but slow tier: its two trained runs (~5 s) would take the fast tier past its 3 minutes.
pytestmark = pytest.mark.slow

# Two epochs of a small MLP with a numbered checkpoint each epoch: best, epoch_0001, epoch_0002
# and last, the last three one save (one object).
SMALL = ("model=mlp", "model.hidden=[32]", "data=synthetic", "data.source.n_samples=200", "trainer.max_epochs=2",
         "logger=none", "checkpoint=periodic")  # fmt: skip


@pytest.fixture(scope="module")
def bucket(s3):
    return s3.bucket()


def trained(url, tmp_path_factory, *overrides):
    """A run trained in process with a remote copy at `url`: (its run directory, its URL)."""
    run = tmp_path_factory.mktemp("remote_tools") / "run"
    train_in_process(run, *SMALL, f"checkpoint.remote={url}", *overrides)
    return run, url


@pytest.fixture(scope="module")
def remote_run(bucket, tmp_path_factory):
    """Never changed by a test: one that damages an object puts its bytes back."""
    return trained(f"s3://{bucket}/runs/r1", tmp_path_factory)


@pytest.fixture(scope="module")
def sharded_run(bucket, tmp_path_factory):
    return trained(f"s3://{bucket}/runs/sharded", tmp_path_factory, "trainer.strategy=fsdp")


@pytest.fixture(scope="module")
def fs(s3):
    """One client of the server for the module's tests (each new one takes a moment)."""
    return s3.filesystem()


@pytest.fixture
def ckpt(capsys, tmp_path, monkeypatch):
    """ckpt(*args) -> (exit code, stdout, stderr) of the tool; the temporary folders it downloads
    into go under the test's own, and must be gone once it returns."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(downloads))

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err and err.count("\n") <= 1, err
        assert list(downloads.iterdir()) == []
        return code, out, err

    return run


def object_of(fs, url, name, file=None):
    """The key of checkpoint `name`'s object in the bucket (a directory's: its `file`'s)."""
    fs.invalidate_cache()
    listed = {e["file"]: e for e in json.loads(fs.cat_file(f"{url[5:]}/index.json"))["files"]}
    entry = listed[name]
    described = entry["files"][file] if file else entry
    return f"{url[5:]}/objects/{described['sha256']}"


class damaged:
    """An object's bytes replaced for the block (`how`: takes the bytes, gives the new ones; None
    deletes it), then put back."""

    def __init__(self, fs, key, how):
        self.fs, self.key, self.how = fs, key, how

    def __enter__(self):
        self.original = self.fs.cat_file(self.key)
        if self.how is None:
            self.fs.rm_file(self.key)
        else:
            self.fs.pipe_file(self.key, self.how(self.original))

    def __exit__(self, *exc):
        self.fs.pipe_file(self.key, self.original)


def flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def test_verify_checks_every_object_of_every_listed_checkpoint(remote_run, sharded_run, ckpt):
    for run, url in (remote_run, sharded_run):
        names = sorted(Index(run / "checkpoints").entries)
        assert len(names) == 4, names
        code, out, err = ckpt("verify", url)
        assert (code, err) == (0, ""), out
        lines = out.splitlines()
        assert [line.split()[:2] for line in lines[:-1]] == [["ok", name] for name in names]
        assert lines[-1] == f"4 checkpoints in {url}: 4 ok"
    # A file: itself and its history; a directory: its 3 files, its manifest and its history.
    code, out, _ = ckpt("verify", f"{remote_run[1]}/last.pt")
    assert code == 0 and out.splitlines()[0].startswith("ok    last.pt  epoch 2 step ")
    assert "(checked: the size and sha256 of its 2 objects in the remote index)" in out
    code, out, _ = ckpt("verify", f"{sharded_run[1]}/last")
    assert code == 0 and "(checked: the size and sha256 of its 5 objects in the remote index)" in out


def test_verify_names_the_checkpoint_of_a_damaged_or_missing_object(fs, remote_run, sharded_run, ckpt):
    run, url = remote_run
    with damaged(fs, object_of(fs, url, "epoch_0001.pt"), flipped):
        code, out, _ = ckpt("verify", url)
    assert code == 4
    bad = [line for line in out.splitlines() if not line.startswith("ok")]
    assert bad[0].startswith("BAD   epoch_0001.pt  epoch_0001.pt: s3://") and len(bad) == 2, out
    assert "does not match its sha256 in the remote index: the object is damaged" in bad[0]
    assert bad[1] == f"4 checkpoints in {url}: 1 bad"

    size = (run / "checkpoints" / "last.pt").stat().st_size
    with damaged(fs, object_of(fs, url, "last.pt"), lambda data: data[:-10]):
        code, out, _ = ckpt("verify", url)
    assert code == 4 and out.count("BAD") == 3  # best, epoch_0002 and last are one save
    assert out.count(f"has {size - 10:,} bytes, the remote index lists {size:,}: the object is damaged") == 3

    with damaged(fs, object_of(fs, url, "epoch_0001.pt"), None):
        code, out, _ = ckpt("verify", url)
    assert code == 3 and "BAD   epoch_0001.pt  epoch_0001.pt: s3://" in out and out.count("is missing") == 1

    run, url = sharded_run
    with damaged(fs, object_of(fs, url, "epoch_0001", ".metadata"), flipped):
        code, out, _ = ckpt("verify", url)
    assert code == 4 and "BAD   epoch_0001  epoch_0001/.metadata: s3://" in out and out.count("BAD") == 1


def test_inspect_of_a_remote_checkpoint_shows_what_the_local_file_shows(fs, remote_run, sharded_run, ckpt):
    for (run, url), name in ((remote_run, "last.pt"), (sharded_run, "last")):
        code, local, _ = ckpt("inspect", run / "checkpoints" / name)
        assert code == 0
        code, remote, err = ckpt("inspect", f"{url}/{name}")
        assert (code, err) == (0, "")
        assert remote.splitlines()[0].startswith(f"{url}/{name}  (checked: each object's sha256 in {url}/index.json")
        assert remote.splitlines()[1:] == local.splitlines()[1:]
    code, remote, _ = ckpt("inspect", f"{remote_run[1]}/last.pt", "--config")
    assert code == 0 and remote == torch.load(remote_run[0] / "checkpoints" / "last.pt", weights_only=True)["config"]

    # A damaged object is refused on download, before anything in it is unpickled.
    run, url = remote_run
    with damaged(fs, object_of(fs, url, "epoch_0001.pt"), flipped):
        code, out, err = ckpt("inspect", f"{url}/epoch_0001.pt")
    assert (code, out) == (4, "")
    assert err.startswith("Error: s3://") and "(of epoch_0001.pt) does not match its sha256 in the remote index" in err


def test_export_of_a_remote_checkpoint_equals_the_local_export(remote_run, tmp_path, ckpt):
    run, url = remote_run
    code, _, _ = ckpt("export", run / "checkpoints" / "last.pt", tmp_path / "local.safetensors")
    assert code == 0
    code, out, err = ckpt("export", f"{url}/last.pt", tmp_path / "remote.safetensors")
    assert (code, err) == (0, "") and f"(from {url}/last.pt, epoch 2 step " in out
    local, remote = load_file(tmp_path / "local.safetensors"), load_file(tmp_path / "remote.safetensors")
    assert local.keys() == remote.keys() and local
    assert all(torch.equal(local[key], remote[key]) for key in local)
    with safe_open(tmp_path / "local.safetensors", "pt") as a, safe_open(tmp_path / "remote.safetensors", "pt") as b:
        assert a.metadata() == b.metadata()
    # What is refused about it names the URL, never the temporary folder it was read from.
    code, _, err = ckpt("export", f"{url}/last.pt", tmp_path / "ema.pt", "--weights", "ema")
    assert code == 2 and err.startswith(f"Error: {url}/last.pt holds no moving average of the weights")


def test_a_url_that_cannot_be_read_is_said_in_one_line(s3, remote_run, sharded_run, tmp_path, ckpt):
    run, url = remote_run
    with s3.outage():
        for args in (("verify", url), ("inspect", f"{url}/last.pt"), ("export", f"{url}/last.pt", tmp_path / "m.pt")):
            code, out, err = ckpt(*args)
            assert (code, out) == (3, "")
            assert err.startswith(f"Error: {url}") and "cannot read its index: EndpointConnectionError" in err, err
    code, _, err = ckpt("inspect", url)
    assert code == 3 and f"{url} is a run's remote copy: name one of its checkpoints, such as {url}/last.pt" in err
    code, _, err = ckpt("export", f"{sharded_run[1]}/", tmp_path / "m.pt")
    assert code == 3 and f"name one of its checkpoints, such as {sharded_run[1]}/last\n" in err
    code, _, err = ckpt("verify", f"{url}/step_00000007.pt")
    assert code == 3 and f"is not a run's remote copy (there is no {url}/step_00000007.pt/index.json), nor a" in err
    code, _, err = ckpt("verify", "nosuch://bucket/r1")
    assert code == 3 and "fsspec knows no protocol nosuch://" in err
    if importlib.util.find_spec("gcsfs") is None:  # the test extra installs s3fs alone
        code, _, err = ckpt("inspect", "gs://bucket/r1/last.pt")
        assert code == 3 and "the library for gs:// is not installed (pip install 'framework[gcs]')" in err
