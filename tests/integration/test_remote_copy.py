"""The remote copy (checkpoint.remote) with runs trained in process, against a real S3 server on
127.0.0.1 (the module's `s3` fixture: moto's server behind a relay the tests can cut) and a
file:// share. The command line's part (signals, exit codes, torchrun) is in tests/cli.

What is checked is what a reader of the remote folder sees: its index.json and its objects,
each compared byte for byte with the local files it copies. The outage mid-run is a callback
(tests/store_outage.py), so that it falls at the same steps in every run.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import store_outage
import torch
from helpers import read_summary, train_in_process
from s3_server import SECRET, local_entries, remote_contents, sha256

from framework.checkpoint import CheckpointError
from framework.checkpoint.remote_folder import objects_of

# In process, but slow tier: its runs and outages (~10 s) would take the fast tier past its 3 minutes.
pytestmark = pytest.mark.slow

TINY = ["logger=none", "determinism.num_threads=1", "trainer.max_epochs=3"]  # 20 steps an epoch
PERIODIC = ["checkpoint=periodic", "checkpoint.keep_last_n=2"]


def assert_whole(entries: dict[str, dict], objects: dict[str, bytes]) -> None:
    """Every object an entry names is there with the bytes of its sha256, and no other object is."""
    used = {sha for e in entries.values() for sha in objects_of(e)}
    assert set(objects) == used, f"objects no entry uses: {set(objects) - used}; missing: {used - set(objects)}"
    damaged = [sha for sha, data in objects.items() if sha256(data) != sha]
    assert not damaged, f"objects whose bytes do not match their sha256: {damaged}"


def without_history(entry: dict) -> dict:
    """An index entry but its history (the remote index's; a checkpoint downloaded lists it locally too)."""
    return {k: v for k, v in entry.items() if k != "history"}


def assert_copies_local(run_dir: Path, entries: dict[str, dict], objects: dict[str, bytes]) -> None:
    """The remote index lists what the local one does, and each object is its local file's bytes."""
    local = local_entries(run_dir)
    assert sorted(entries) == sorted(local)
    for name, entry in entries.items():
        assert without_history(entry) == without_history(local[name]), name
        data = (run_dir / "checkpoints" / name).read_bytes()
        assert sha256(data) == entry["sha256"] and objects[entry["sha256"]] == data, name


@pytest.fixture(scope="module")
def trained(s3, tmp_path_factory) -> tuple[Path, str]:
    """A 3-epoch run with a numbered checkpoint each epoch, the newest two kept, and its remote
    copy: (run dir, URL). Shared: never change either (copy them first)."""
    run_dir = tmp_path_factory.mktemp("remote") / "run"
    url = f"s3://{s3.bucket()}/r"
    train_in_process(run_dir, *TINY, *PERIODIC, f"checkpoint.remote={url}")
    return run_dir, url


def test_the_remote_copy_is_the_local_checkpoints_objects_and_index(s3, trained):
    run_dir, url = trained
    entries, objects, _ = remote_contents(url, s3)
    assert_copies_local(run_dir, entries, objects)
    # Retention applied there too: epoch_0001.pt's object (and its history's) deleted with it.
    assert sorted(entries) == ["best.pt", "epoch_0002.pt", "epoch_0003.pt", "last.pt"]
    assert_whole(entries, objects)
    # Each checkpoint's history is metrics.jsonl as it was when it was saved (the test's line came after).
    history = (run_dir / "metrics.jsonl").read_bytes()
    at_last, at_epoch_2 = (objects[entries[name]["history"]["sha256"]] for name in ("last.pt", "epoch_0002.pt"))
    assert history.startswith(at_last) and at_last.startswith(at_epoch_2) and len(at_epoch_2) < len(at_last)
    written = {str(p): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    written.update({f"{url}/objects/{sha}": data for sha, data in objects.items()})
    assert not [where for where, data in written.items() if SECRET.encode() in data]  # the credentials: nowhere
    remote = read_summary(run_dir)["remote"]
    assert remote["url"] == url and remote["indexed"] == sorted(entries)
    assert remote["not_uploaded"] == [] and remote["failed_attempts"] == 0 and remote["outages"] == []


def test_a_damaged_object_is_skipped_for_the_checkpoint_before_it_and_never_unpickled(
    s3, trained, tmp_path, caplog, monkeypatch
):
    """The step-60 object (last.pt, best.pt and epoch_0003.pt share it) replaced by other bytes:
    resume=auto on a new machine skips them for epoch_0002.pt, and never loads the bad bytes.
    The resumed run keeps fewer (keep_last_n=1), but never deletes what it resumed from."""
    _, url = trained
    bucket = url.removeprefix("s3://").split("/")[0]
    fs = s3.filesystem()
    fs.copy(f"{bucket}/r/", f"{bucket}/copy/", recursive=True)  # the shared run's copy stays as it is
    url = f"s3://{bucket}/copy"
    entries, _, _ = remote_contents(url, s3)
    newest = entries["last.pt"]["sha256"]
    damaged = b"not the checkpoint" + bytes(100)
    fs.pipe_file(f"{bucket}/copy/objects/{newest}", damaged)

    loaded = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loaded.append(Path(f).read_bytes()) or load(f, *a, **k))
    run_dir = tmp_path / "new-machine"
    with caplog.at_level(logging.WARNING, logger="framework"):
        train_in_process(run_dir, "resume=auto", f"checkpoint.remote={url}", "checkpoint.keep_last_n=1")

    assert damaged not in loaded, "torch.load was given the damaged object's bytes"
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert skipped and all("does not match its sha256 in the remote index" in said for said in skipped), skipped
    resumed = read_summary(run_dir)["resumes"][-1]
    assert Path(resumed["from"]).name == "epoch_0002.pt" and resumed["global_step"] == 40, resumed
    assert resumed["val_check"]["identical"], resumed  # what it loaded validates as it did
    entries, objects, _ = remote_contents(url, s3)
    assert "epoch_0002.pt" in entries  # what this run started from, kept despite keep_last_n=1
    left = sorted(p.name for p in (run_dir / "checkpoints").rglob("*"))  # no download left half-way
    assert left == sorted([*entries, "index.json", ".uploads"]), left
    assert_copies_local(run_dir, entries, objects)
    assert_whole(entries, objects)


def test_an_outage_mid_run_is_recorded_and_the_uploads_catch_up(s3, tmp_path):
    """The store refuses connections from step 15 to 25, across the first epoch's save (step 20)."""
    url = f"s3://{s3.bucket()}/r"
    store_outage.SERVER = s3
    try:
        train_in_process(
            tmp_path / "run",
            *TINY,
            "trainer.max_epochs=2",
            f"checkpoint.remote={url}",
            "+callbacks.outage._target_=store_outage.OutageAtSteps",
            "+callbacks.outage.start=15",
            "+callbacks.outage.end=25",
        )
    finally:
        store_outage.end_outage()
    remote = read_summary(tmp_path / "run")["remote"]
    assert remote["failed_attempts"] >= 1 and remote["not_uploaded"] == [], remote
    assert len(remote["outages"]) >= 1 and all(o["from"] and o["to"] for o in remote["outages"]), remote
    entries, objects, _ = remote_contents(url, s3)
    assert entries["last.pt"]["step"] == 40
    assert_copies_local(tmp_path / "run", entries, objects)
    assert_whole(entries, objects)


def test_checkpoints_the_store_missed_are_uploaded_at_the_next_start(s3, tmp_path):
    """A run that never reached the store (remote_required=false) uploads its checkpoints when
    it resumes with the store back."""
    bucket = s3.bucket()
    url = f"s3://{bucket}/r"
    run_dir = tmp_path / "run"
    with s3.outage():
        train_in_process(
            run_dir,
            *TINY,
            *PERIODIC,
            "trainer.max_steps=20",
            f"checkpoint.remote={url}",
            "checkpoint.remote_required=false",
            "checkpoint.upload_wait_s=0",
        )
    first = read_summary(run_dir)["remote"]
    assert first["not_uploaded"] == ["best.pt", "epoch_0001.pt", "last.pt"] and first["failed_attempts"] >= 1
    assert not s3.filesystem().find(bucket)

    train_in_process(run_dir, "resume=auto", "trainer.max_steps=40", "checkpoint.upload_wait_s=60")
    entries, objects, _ = remote_contents(url, s3)
    assert sorted(entries) == ["best.pt", "epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    assert_copies_local(run_dir, entries, objects)
    assert_whole(entries, objects)


def test_a_new_run_is_refused_a_remote_that_holds_another_runs_checkpoints(s3, trained, tmp_path):
    _, url = trained
    before = remote_contents(url, s3)
    with pytest.raises(CheckpointError) as refused:
        train_in_process(tmp_path / "other", *TINY, f"checkpoint.remote={url}")
    said = str(refused.value)
    assert len(said.splitlines()) == 1 and f"checkpoint.remote={url}" in said, said
    assert "holds another run's checkpoints" in said and "step 60)" in said, said
    assert remote_contents(url, s3) == before  # the other run's copy untouched
    assert not (tmp_path / "other" / "metrics.jsonl").exists()  # refused before training


def test_a_file_url_is_a_mounted_share(tmp_path):
    """file:// (a share mounted on every node): the same folder, and resume=auto from it."""
    share = tmp_path / "share"
    url = f"file://{share}"
    run_dir = tmp_path / "run"
    train_in_process(run_dir, *TINY, "trainer.max_steps=20", f"checkpoint.remote={url}")
    entries, objects, _ = remote_contents(url)
    assert sorted(entries) == ["best.pt", "last.pt"] and entries["last.pt"]["step"] == 20
    assert_copies_local(run_dir, entries, objects)

    shutil.rmtree(run_dir)
    train_in_process(run_dir, "resume=auto", f"checkpoint.remote={url}", "trainer.max_steps=40")
    assert read_summary(run_dir)["resumes"][-1]["global_step"] == 20
    entries, objects, _ = remote_contents(url)
    assert entries["last.pt"]["step"] == 40
    assert_copies_local(run_dir, entries, objects)
    assert_whole(entries, objects)  # the replaced last.pt's objects are gone, as its local file is
    assert sorted(p.name for p in share.iterdir()) == ["index.json", "objects"]
