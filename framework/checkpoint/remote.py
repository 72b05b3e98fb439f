"""RemoteCopy: a run's checkpoints on the local disk, and a copy of them at checkpoint.remote.

Local first: a save is durable and listed on the local disk exactly as without a remote copy
(the wrapped store, LocalFiles or ShardedDirectories, does it), and only then queued for upload.
One background thread (`Uploads`) uploads each queued checkpoint's files as objects, then writes
the remote index naming it: the commit (framework/checkpoint/remote_folder.py). Training never
waits for the network, except where a run must: its start (the remote index is read, and written
back, which proves the store answers and takes writes) and its end (bounded by
checkpoint.upload_wait_s, or trainer.stop_grace_s after a stop signal).

A queued checkpoint's files are pinned (hard links under checkpoints/.uploads/, named by their
sha256) so that a later save replacing `last.pt` cannot change the bytes being uploaded. When
the store does not answer, uploads are retried with a growing pause and training goes on; a
newer save of a name replaces a queued older one; what could not be uploaded by the end is said
and recorded in metrics.json (`remote`). The next start of the run uploads what its local index
lists and the remote one lacks.

The store lists what either copy holds, the newer one where they differ: `resume=auto` on a new
machine, with an empty run directory, finds the newest checkpoint in the remote index,
downloads it, checks every object against its sha256 before anything is unpickled (one that
fails is skipped for the one before), then reads it as a local one. Retention deletes a name in
both (never the name this run resumed from: the policy's rule); an object is deleted once no
name in the written remote index uses it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from framework import distributed
from framework.atomic import fsync_dir
from framework.checkpoint import io, sharded
from framework.checkpoint.errors import DamagedCheckpoint
from framework.checkpoint.remote_folder import IndexConflict, RemoteError, RemoteFolder, object_key, objects_of
from framework.checkpoint.storage import CheckpointStore, LocalFiles, Stored
from framework.runs import layout

log = logging.getLogger("framework")

T = TypeVar("T")

PINS = ".uploads"  # in the checkpoints folder: the files queued for upload, by sha256
BACKOFF_S = (1, 2, 4, 8, 15, 30)  # pauses between attempts while the store does not answer


def order(entry: dict) -> tuple[float, int]:
    """When an index entry's checkpoint was saved, and its step: the larger, the more recent."""
    return (entry.get("time", 0.0), entry["step"])


class RemoteCopy(CheckpointStore):
    """`local`'s checkpoints, each also uploaded to `url` once durable (see the module's doc)."""

    def __init__(self, local: LocalFiles, url: str, required: bool = True, history: Path | None = None):
        """`history`: the run's metrics.jsonl, uploaded with each checkpoint (a copy as it was then):
        a run resumed on a new machine goes on with its history."""
        self.local = local
        self.history = history
        self.remote = RemoteFolder(url)
        self.required = required
        self.suffix = local.suffix
        self._remote_entries: dict[str, dict] | None = None
        self.uploads: Uploads | None = None

    # ---- what the remote copy holds --------------------------------------------------------------
    @property
    def remote_entries(self) -> dict[str, dict]:
        """The remote index's entries, read at first use. Unreachable: a CheckpointError when the
        copy is required, else a warning and none."""
        if self._remote_entries is None:
            try:
                self._remote_entries = self.remote.read_index()
            except RemoteError as e:
                if self.required:
                    raise RemoteError(f"checkpoint.remote: {e} (checkpoint.remote_required=false trains anyway)") from e
                log.warning("checkpoint.remote: %s; going on with the local checkpoints only", e)
                self._remote_entries = {}
        return self._remote_entries

    def remote_newer(self, name: str) -> bool:
        """Whether the remote copy holds `name` and the local disk an older one of it, or none."""
        theirs, ours = self.remote_entries.get(name), self.local.entry(name)
        if theirs is None:
            return False
        if ours is None or not self.local.holds(name):
            return True
        return theirs["sha256"] != ours["sha256"] and order(theirs) > order(ours)

    def local_newer(self, name: str) -> bool:
        """Whether the local disk holds `name` and the remote index lacks it, or lists an older one."""
        ours, theirs = self.local.entry(name), self.remote_entries.get(name)
        if ours is None or not self.local.holds(name):
            return False
        return theirs is None or (theirs["sha256"] != ours["sha256"] and order(ours) >= order(theirs))

    # ---- before the first save -------------------------------------------------------------------
    def prepare(self, expected_bytes: int) -> None:
        self.local.prepare(expected_bytes)
        problem = None
        if distributed.is_main():
            try:
                self.claim()
            except RemoteError as e:
                problem = str(e)
        problem = distributed.from_main(problem)  # every rank stops, or none
        if problem is not None:
            raise RemoteError(problem)

    def claim(self) -> None:
        """Rank 0: read the remote index and write it back (the store answers and takes writes,
        and from now on the conditional writes know its version), refuse another run's, start
        the uploads with what the local index lists and the remote one lacks."""
        remote = self.remote_entries
        unread = self.remote.unread  # the store did not answer (checkpoint.remote_required=false)
        if remote and self.local.empty():
            newest = max(remote.values(), key=order)
            raise RemoteError(
                f"checkpoint.remote={self.remote} holds another run's checkpoints (newest {newest['file']}, "
                f"step {newest['step']}): resume that run with resume=auto, or give this one its own URL"
            )
        if self.remote.protocol in ("file", "local"):  # a share's folders are made; a bucket is not
            try:
                self.remote.fs.makedirs(self.remote.path("objects"), exist_ok=True)
            except OSError as e:
                raise self.remote.failure("make its folder", e) from e
        self.uploads = Uploads(self.remote, self.local.folder / PINS, None if unread else remote, self.history)
        if not unread:
            try:
                self.remote.write_index(remote)
            except RemoteError as e:
                if self.required or isinstance(e, IndexConflict):
                    raise RemoteError(f"checkpoint.remote: {e} (checkpoint.remote_required=false trains anyway)") from e
                self.uploads.failed(e)
        else:
            self.uploads.failed(RemoteError(f"{self.remote}: the store did not answer at the start"))
        for name, entry in self.local.index.entries.items():
            if self.local_newer(name):
                self.uploads.want(entry, self.local.where(name))

    def room_for(self, nbytes: int, what: str) -> None:
        self.local.room_for(nbytes, what)

    def collectively(self, save: Callable[[], T]) -> T | None:
        return self.local.collectively(save)

    def saving_in_background(self) -> None:
        self.local.saving_in_background()

    def own_copy(self, payload: dict) -> dict:
        return self.local.own_copy(payload)

    # ---- writing -----------------------------------------------------------------------------------
    def write(self, name: str, payload: dict, described: dict) -> dict | None:
        entry = self.local.write(name, payload, described)
        if entry is not None and self.uploads is not None:  # a sharded store's other ranks return None
            self.uploads.want(entry, self.local.where(name))
        return entry

    def alias(self, name: str, target: str, role: str) -> dict | None:
        entry = self.local.alias(name, target, role)
        if entry is not None and self.uploads is not None:
            self.uploads.want(entry, self.local.where(name))
        return entry

    def delete(self, name: str) -> None:
        self.local.delete(name)
        if self.uploads is not None:
            self.remote_entries.pop(name, None)  # listed no more, here either
            self.uploads.unwant(name)

    def finish(self, wait_s: float, grace_left: Callable[[], float | None]) -> dict | None:
        """Wait for the queued uploads (see Uploads.finish); what the remote copy got, for the
        run's record (None on the ranks that do not upload)."""
        if self.uploads is None:
            return None
        return self.uploads.finish(wait_s, grace_left)

    def close(self) -> None:
        try:
            self.local.close()
        finally:
            if self.uploads is not None:
                self.uploads.stop()

    # ---- reading -----------------------------------------------------------------------------------
    def list(self) -> list[Stored]:
        found = {s.name: s for s in self.local.list()}
        for name, e in self.remote_entries.items():
            if name not in found or self.remote_newer(name):
                found[name] = Stored(name, e["role"], e["kind"], order(e))
        return list(found.values())

    def empty(self) -> bool:
        return self.local.empty() and not self.remote_entries

    def names(self) -> list[str]:
        return sorted(set(self.local.names()) | set(self.remote_entries))

    def entry(self, name: str) -> dict | None:
        return self.remote_entries.get(name) if self.remote_newer(name) else self.local.entry(name)

    def read(self, name: str, sha256: bool = False) -> tuple[dict, str]:
        if self.remote_newer(name):
            self.download(name)
        return self.local.read(name, sha256=sha256)

    def where(self, name: str) -> Path:
        return self.local.where(name)

    def name_of(self, path: Path) -> str | None:
        return self.local.name_of(path)

    def __str__(self) -> str:
        return f"{self.local} (and {self.remote})"

    def download(self, name: str) -> None:
        """Bring checkpoint `name` from the remote copy into the local folder, every object
        checked against its sha256 before it takes the name; then list it locally."""
        entry = self.remote_entries[name]
        folder = self.local.folder
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / layout.temporary(name, "-download")
        log.info("downloading %s from %s (%d bytes)", name, self.remote, entry["size"])
        try:
            if "files" in entry:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                for file, digests in sorted(entry["files"].items()):
                    self.fetch(name, digests["sha256"], digests["size"], tmp / file)
                self.fetch(name, entry["sha256"], None, tmp / sharded.MANIFEST)
                fsync_dir(tmp)
                # The sharded store's own swap (it imports DCP, which reading these shards needs anyway).
                from framework.checkpoint.directories import put_in_place

                put_in_place(tmp, self.local.where(name), discard=None)
            else:
                self.fetch(name, entry["sha256"], entry["size"], tmp)
                os.replace(tmp, self.local.where(name))
            fsync_dir(folder)
            history = entry.get("history")
            if history is not None and self.history is not None and not self.history.exists():
                self.fetch(name, history["sha256"], history["size"], tmp)
                os.replace(tmp, self.history)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.local.index.record(dict(entry))

    def fetch(self, name: str, sha256: str, size: int | None, path: Path) -> None:
        self.remote.download(sha256, path)
        got = io.file_digests(path)
        if got["sha256"] != sha256 or (size is not None and got["size"] != size):
            raise DamagedCheckpoint(
                f"{self.remote.where(object_key(sha256))} (of {name}) does not match its sha256 in the remote "
                "index: the object is damaged"
            )
        with open(path, "rb") as f:
            os.fsync(f.fileno())


class Uploads:
    """The upload queue and its thread (rank 0): the checkpoints the remote index should name or
    stop naming, brought there one round at a time: objects first, then the index, then the
    objects no name uses any more."""

    def __init__(self, remote: RemoteFolder, pins: Path, indexed: dict[str, dict] | None, history: Path | None):
        """`indexed`: what the remote index names now (None: not read yet, the store did not answer)."""
        self.remote = remote
        self.pins = pins
        self.history = history
        self.indexed = indexed
        self.present = {sha for e in (indexed or {}).values() for sha in objects_of(e)}  # objects known whole there
        self.wanted: dict[str, dict] = {}  # name -> local entry to upload (the newest save of that name)
        self.unwanted: set[str] = set()  # names retention deleted
        self.lock = threading.Condition()
        self.hurry = False  # the run's end: retry at once, no pause
        self.stopping = False
        self.attempts_failed = 0
        self.outages: list[dict] = []  # each spell the store did not answer: from, to, attempts, error
        self.conflict: str | None = None  # another writer took the remote index: uploads stop
        self.thread = threading.Thread(target=self.run, name="uploads", daemon=True)
        self.thread.start()

    def want(self, entry: dict, path: Path) -> None:
        """Queue checkpoint `entry` (its files at `path`, durable and listed): pin its files now.
        Under the lock: the thread's sweep of pins no queued entry needs must not meet one half made."""
        if "files" in entry:  # a directory: each of its files, and its manifest
            sources = {d["sha256"]: path / name for name, d in entry["files"].items()}
            sources[entry["sha256"]] = path / sharded.MANIFEST
        else:
            sources = {entry["sha256"]: path}
        with self.lock:
            self.pins.mkdir(exist_ok=True)
            for sha, source in sources.items():
                pin = self.pins / sha
                if not pin.exists():
                    try:
                        os.link(source, pin)
                    except OSError:  # no hard links here: a copy
                        shutil.copyfile(source, pin)
            if self.history is not None and self.history.is_file():
                entry = {**entry, "history": self.pin_copy(self.history)}
            self.wanted[entry["file"]] = entry
            self.unwanted.discard(entry["file"])
            self.lock.notify_all()

    def pin_copy(self, path: Path) -> dict:
        """Pin a copy of a file that changes in place (the history, appended to): its size and sha256."""
        tmp = self.pins / layout.temporary(path.name)
        shutil.copyfile(path, tmp)
        digests = io.file_digests(tmp)
        os.replace(tmp, self.pins / digests["sha256"])
        return {"size": digests["size"], "sha256": digests["sha256"]}

    def unwant(self, name: str) -> None:
        with self.lock:
            self.wanted.pop(name, None)
            self.unwanted.add(name)
            self.lock.notify_all()

    def pending(self) -> list[str]:
        with self.lock:
            return sorted(set(self.wanted) | self.unwanted)

    def run(self) -> None:
        pause = 0
        while True:
            with self.lock:
                while not (self.wanted or self.unwanted) and not self.stopping:
                    self.lock.wait()
                if self.stopping or self.conflict:
                    return
                wanted, unwanted = dict(self.wanted), set(self.unwanted)
            try:
                self.bring_over(wanted, unwanted)
            except IndexConflict as e:
                self.conflict = str(e)
                log.error("checkpoint.remote: %s; uploads stop, the local checkpoints stay", e)
                return
            except Exception as e:  # the store's library raises its own errors; each is retried
                self.failed(e)
                with self.lock:
                    if not self.stopping:  # at the run's end, the next attempt comes sooner
                        self.lock.wait(1 if self.hurry else BACKOFF_S[min(pause, len(BACKOFF_S) - 1)])
                pause += 1
                continue
            pause = 0
            self.answered()
            with self.lock:
                for name, entry in wanted.items():
                    if self.wanted.get(name) is entry:
                        del self.wanted[name]
                self.unwanted -= unwanted
                self.lock.notify_all()
                needed = {sha for e in self.wanted.values() for sha in objects_of(e)}
                for pin in self.pins.iterdir() if self.pins.is_dir() else []:
                    if pin.name not in needed:
                        pin.unlink(missing_ok=True)

    def bring_over(self, wanted: dict[str, dict], unwanted: set[str]) -> None:
        """One round: upload the objects `wanted` lacks there, write the index naming them (and
        no longer naming `unwanted`), then delete the objects no name uses now."""
        if self.indexed is None:  # the store answers for the first time
            self.indexed = self.remote.read_index()
            self.present = {sha for e in self.indexed.values() for sha in objects_of(e)}
        for entry in wanted.values():
            for sha in objects_of(entry):
                if sha not in self.present:
                    self.remote.upload(self.pins / sha, sha, entry["file"])
                    self.present.add(sha)
        index = {name: e for name, e in self.indexed.items() if name not in unwanted}
        index.update(wanted)
        self.remote.write_index(index)
        before = {sha for e in self.indexed.values() for sha in objects_of(e)}
        self.indexed = index
        now = {sha for e in index.values() for sha in objects_of(e)}
        for sha in sorted(before - now):
            self.remote.delete(sha)
            self.present.discard(sha)

    def failed(self, e: BaseException) -> None:
        self.attempts_failed += 1
        said = e if isinstance(e, RemoteError) else RemoteError(f"{self.remote}: {e}")
        if not self.outages or self.outages[-1]["to"] is not None:
            self.outages.append({"from": now_iso(), "to": None, "attempts": 0, "error": str(said)})
            log.warning("checkpoint.remote: %s; training goes on, the upload is retried", said)
        self.outages[-1]["attempts"] += 1

    def answered(self) -> None:
        if self.outages and self.outages[-1]["to"] is None:
            spell = self.outages[-1]
            spell["to"] = now_iso()
            log.info(
                "checkpoint.remote: %s answers again; uploads caught up after %d failed attempts",
                self.remote,
                spell["attempts"],
            )

    def finish(self, wait_s: float, grace_left: Callable[[], float | None]) -> dict:
        """Wait at most `wait_s` for the queue to empty (retrying at once), and once a stop signal
        came (before or while it waits) no longer than `grace_left()`, the seconds its sender
        leaves before a kill (None: no signal); say what it did."""
        deadline = time.monotonic() + max(wait_s, 0)
        with self.lock:
            self.hurry = True
            self.lock.notify_all()
            while (self.wanted or self.unwanted) and not self.conflict and self.thread.is_alive():
                grace = grace_left()
                if grace is not None:
                    deadline = min(deadline, time.monotonic() + grace)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(min(left, 0.5))
            self.hurry = False
        missing = self.pending()
        if missing:
            log.error(
                "checkpoint.remote: not uploaded to %s: %s (they are in the local run directory; the run's next "
                "start uploads them)",
                self.remote,
                ", ".join(missing),
            )
        return {
            "url": str(self.remote),
            "indexed": sorted(self.indexed or {}),
            "not_uploaded": missing,
            "failed_attempts": self.attempts_failed,
            "outages": self.outages,
            **({"conflict": self.conflict} if self.conflict else {}),
        }

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
