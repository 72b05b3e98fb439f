"""Where and how checkpoints are kept: the CheckpointStore interface, and LocalFiles, the store
of a folder of files on the local disk (a run's checkpoints/, framework/runs/layout.py).

The policy (framework/checkpoint/policy.py, Checkpointer) decides when to save, what, under
which names, and what retention removes; it talks to its store only. The store decides where
the bytes go, how a save is made atomic, verified and durable, how it is listed, and how a
checkpoint is read back with verification. Which store a run uses is decided here alone:
`for_run` (a run's own checkpoints) and `for_folder` (a folder or file a user names: resume=,
the ckpt tool).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

from framework import distributed, faults
from framework.checkpoint import io, sharded
from framework.checkpoint.errors import CheckpointError
from framework.checkpoint.index import Index, is_plain_name, stays_inside
from framework.runs import layout

log = logging.getLogger("framework")

T = TypeVar("T")


@dataclass
class Stored:
    """One checkpoint a store holds, as its index (or, unlisted, its own meta) describes it."""

    name: str
    role: str  # "last", "best", "periodic" (or "other": a name the policy never writes)
    kind: str  # "full" (resumable) or "model" (weights and config)
    order: tuple[float, int]  # (when it was saved, its step): the larger, the more recent


class CheckpointStore(ABC):
    """Where checkpoints go and how: written atomically, verified and durably; listed in the
    store's own index; read back verified; deleted; and which ranks write.

    How to add a store: a new class, chosen in `for_folder` from the run's config (the key that
    asks for it, such as trainer.strategy or checkpoint.remote); nothing else changes.
    - A checkpoint is named, not located: every method takes and returns names ("last.pt",
      "step_00001200.pt"), never paths. What a name stands for is the store's business: one
      file (LocalFiles), a directory of shards that every rank wrote with
      torch.distributed.checkpoint (a sharded store: its commit is the directory renamed from
      its temporary name once complete), or an object under a remote prefix. `where(name)`
      gives the local path, for messages and the run record.
    - The store owns its index: `write` lists a checkpoint only once it is complete and durable
      (with what it measured: size and checksums; a sharded store, every file's), `alias`
      lists the other name, `delete` unlists it, `list` reads it back. A remote store wraps a
      LocalFiles (local first, durable, then uploaded in the background), writes its remote
      index last, as its commit, and trusts that index, never a listing.
    - The payload is the checkpoint dict (framework/engine/state.py's plain-PyTorch keys); a
      store may keep it as one torch.save file or split it, but `read` returns the same dict,
      checked before anything is unpickled beyond torch.load(weights_only=True).
    - `collectively` decides which ranks run a save point's writes and who waits for whom: here
      rank 0 writes and every rank waits at a barrier; a sharded store has every rank write its
      shard, rank 0 commit, then every rank wait.
    - Work a store does in the background (deleting replaced files; a remote store's uploads,
      which start only once the local copy is durable) ends in `close`.
    Errors a user can act on (no room, a damaged file) are CheckpointErrors: one line, no traceback.
    """

    suffix = layout.SUFFIX  # of its names: "last.pt", "step_00001200.pt" (a directory's: none)

    # ---- before the first save ------------------------------------------------------------
    @abstractmethod
    def prepare(self, expected_bytes: int) -> None:
        """Make ready to write, before training: refuse (CheckpointError) a place that cannot
        take checkpoints or lacks room for one of `expected_bytes`; clear what a killed run left
        half-written."""

    @abstractmethod
    def room_for(self, nbytes: int, what: str) -> None:
        """Refuse in one line (CheckpointError, naming `what`) when a checkpoint of `nbytes`
        does not fit, before anything is written."""

    @abstractmethod
    def collectively(self, save: Callable[[], T]) -> T | None:
        """Run one save point's writes on the ranks that write (`save`'s result there, None on
        the others), and return on every rank only once they are done."""

    def saving_in_background(self) -> None:
        """Called once before the first save when saves run in a background thread
        (checkpoint.async_save): set up what that needs."""
        return None

    def own_copy(self, payload: dict) -> dict:
        """At a background save's save point: the entries of `payload` that this store copies
        itself (a sharded store's, with DCP's stager), copied. The policy copies the rest."""
        return {}

    def finish(self, wait_s: float, grace_left: Callable[[], float | None]) -> dict | None:
        """At the run's end: wait at most `wait_s` seconds for work that outlives the saves (a
        remote copy's uploads), and after a stop signal at most `grace_left()` (None: no signal
        came); what it did, for the run's record (None: nothing to say)."""
        return None

    # ---- writing ----------------------------------------------------------------------------
    @abstractmethod
    def write(self, name: str, payload: dict, described: dict) -> dict:
        """Write `payload` as checkpoint `name`, atomic, verified and durable, replacing any
        older one of that name only once the new one is whole; then list it. `described`: what
        the index records of it besides what the store measures (role, kind, epoch, step, ...).
        Returns its index entry."""

    @abstractmethod
    def alias(self, name: str, target: str, role: str) -> dict:
        """Make `name` another name for the checkpoint `target` (which this store wrote; the
        same bytes, not a second copy where the store can), listed with `role`. Returns its entry."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove checkpoint `name` and its index entry (retention)."""

    @abstractmethod
    def close(self) -> None:
        """Wait for the store's own background work, and end it."""

    # ---- reading ----------------------------------------------------------------------------
    @abstractmethod
    def list(self) -> list[Stored]:
        """Every checkpoint the store holds: those its index lists, and any it can recover that a
        killed run wrote but never listed."""

    @abstractmethod
    def empty(self) -> bool:
        """Whether the store holds no checkpoint at all (its index may still list some that are gone)."""

    @abstractmethod
    def names(self) -> list[str]:
        """In name order, every name the store holds a checkpoint under or its index lists (a
        listed one may be missing: `read` then says so): what a full check goes through."""

    @abstractmethod
    def entry(self, name: str) -> dict | None:
        """What the index lists for `name` (size, checksums, step, ...), or None."""

    @abstractmethod
    def read(self, name: str, sha256: bool = False) -> tuple[dict, str]:
        """Checkpoint `name`, verified against its index entry (or, unlisted, its own records)
        before use; with `sha256`, its sha256 too (a second read: the verify tool). Returns it
        and the checks it passed, in words (a log must never claim a check that was not made)."""

    @abstractmethod
    def where(self, name: str) -> Path:
        """The local path of checkpoint `name` (a file or a folder)."""

    @abstractmethod
    def name_of(self, path: Path) -> str | None:
        """The name under which this store holds the checkpoint at `path`, or None when it is not one of its own."""

    @abstractmethod
    def __str__(self) -> str:
        """Where the store is, for messages: its folder, or its URL."""

    def newest_first(self) -> list[str]:
        """The full checkpoints, the most recent save first: after a rewind (a resume from an
        older one), the abandoned branch's later steps are older saves. `last` first among the
        names of one save."""
        full = [s for s in self.list() if s.kind == "full"]
        return [s.name for s in sorted(full, key=lambda s: (s.order, s.role == "last"), reverse=True)]


class LocalFiles(CheckpointStore):
    """One torch.save file per checkpoint in a folder of the local disk, with the folder's
    index.json (framework/checkpoint/index.py) beside them; under torchrun rank 0 alone writes.
    It reads the sharded checkpoints' directories too (framework/checkpoint/sharded.py): what a
    checkpoint is, a file or a directory, is told by what is on disk, not by its name.

    A write goes through io.write (temporary file, hashed while written, fsync, verified, renamed,
    folder fsynced), then the index; an alias is a hard link (a copy where the file system has
    none). Constructing one touches nothing: `prepare` makes the folder ready for a run's saves.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._index: Index | None = None
        # Where replaced files are deleted, while training goes on (io.set_aside); close() waits.
        self.discard: ThreadPoolExecutor | None = None

    @property
    def index(self) -> Index:
        """The folder's index.json, read at first use (a broken entry is set aside with a warning)."""
        if self._index is None:
            self._index = Index(self.folder)
        return self._index

    def prepare(self, expected_bytes: int) -> None:
        folder = self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise CheckpointError(f"{folder} is not a folder: checkpoints cannot be written there") from e
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CheckpointError(f"{folder} is not writable: checkpoints cannot be written there")
        self.room_for(expected_bytes, "for this run's checkpoints")
        self.index  # noqa: B018 (read now: what is wrong with it is said before training)
        # Half-written temporary files of a run that was killed mid-write: never valid, only in the way.
        for leftover in folder.glob(layout.TEMPORARIES):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        if self.discard is None:
            self.discard = ThreadPoolExecutor(1, thread_name_prefix="discard")

    def room_for(self, nbytes: int, what: str) -> None:
        io.check_room(self.folder, nbytes, what)

    def collectively(self, save: Callable[[], T]) -> T | None:
        """Rank 0 writes (every rank's own state gathered into its payload beforehand); every
        rank waits until it is done."""
        result = save() if distributed.is_main() else None
        distributed.barrier()
        return result

    def write(self, name: str, payload: dict, described: dict) -> dict:
        entry = {
            "file": name,
            **described,
            **io.write(payload, self.where(name), self.discard),
            "time": time.time(),
        }
        self.index.record(entry)
        faults.boundary("indexed")
        return entry

    def alias(self, name: str, target: str, role: str) -> dict:
        io.link(self.where(target), self.where(name))
        faults.boundary("linked")
        entry = {**self.index.entries[target], "file": name, "role": role}
        self.index.record(entry)
        return entry

    def delete(self, name: str) -> None:
        if not is_plain_name(name):
            raise ValueError(f"not a checkpoint name: {name!r}")
        self.where(name).unlink(missing_ok=True)
        self.index.remove(name)

    def close(self) -> None:
        if self.discard is not None:
            self.discard.shutdown()
            self.discard = None

    def list(self) -> list[Stored]:
        """Those index.json lists, and the checkpoints it does not (a run killed before it listed
        them, or a lost index), described by their own meta."""
        entries = self.index.entries
        found = [Stored(e["file"], e["role"], e["kind"], (e.get("time", 0.0), e["step"])) for e in entries.values()]
        for name in self.on_disk():
            if name not in entries and self.holds(name):
                found.append(described_by_itself(self.folder / name))
        return found

    def on_disk(self) -> list[str]:
        """The checkpoints in the folder: `.pt` files, and directories named as the policy names
        them (last, best, step_00001200, ...), which sharded checkpoints are."""
        if not self.folder.is_dir():
            return []
        return sorted(
            path.name
            for path in self.folder.iterdir()
            if path.name.endswith(layout.SUFFIX)
            or (layout.role_of(path.name) != "other" and path.is_dir() and not path.is_symlink())
        )

    def empty(self) -> bool:
        return not self.on_disk()

    def names(self) -> list[str]:
        return sorted(set(self.on_disk()) | set(self.index.entries))

    def entry(self, name: str) -> dict | None:
        return self.index.entries.get(name)

    def read(self, name: str, sha256: bool = False) -> tuple[dict, str]:
        path = self.where(name)
        if path.is_dir():
            return sharded.read_directory(path, self.entry(name), sha256=sha256)
        return io.load_checked(path, self.entry(name), sha256=sha256)

    def where(self, name: str) -> Path:
        return self.folder / name

    def name_of(self, path: Path) -> str | None:
        return path.name if Path(path).parent == self.folder else None

    def __str__(self) -> str:
        return str(self.folder)

    def holds(self, name: str) -> bool:
        """A regular file or a directory of this folder (a link that leads out is refused, with a warning)."""
        if not stays_inside(self.folder, name):
            log.warning("ignoring %s: it leads out of %s", self.folder / name, self.folder)
            return False
        path = self.folder / name
        return path.is_file() or (path.is_dir() and not path.is_symlink())


def described_by_itself(path: Path) -> Stored:
    """What an unindexed checkpoint's own meta says (read memory-mapped: the tensors stay on disk;
    a directory's, from its train_state.pt). An unreadable one sorts oldest: it is tried last and
    is the first a retention removes."""
    role = layout.role_of(path.name)
    try:
        file = path / sharded.REST if path.is_dir() else path
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        saved = datetime.fromisoformat(ckpt["meta"]["timestamp"]).timestamp()
        return Stored(path.name, role, ckpt["meta"].get("kind", "full"), (saved, int(ckpt["global_step"])))
    except Exception:  # tried anyway, so that the reason it is skipped is logged
        return Stored(path.name, role, "full", (float("-inf"), -1))


def for_folder(folder: Path, cfg: DictConfig | None = None) -> CheckpointStore:
    """The store that keeps the checkpoints of `folder` (a run's checkpoints/, or any folder of
    checkpoint files). `cfg`: the run's config, where a run's settings choose another kind of
    store; the one place where a store is chosen. Both read files and directories alike."""
    if cfg is not None and OmegaConf.select(cfg, "trainer.strategy", default=None) == "fsdp":
        from framework.checkpoint.directories import ShardedDirectories  # it builds on LocalFiles

        return ShardedDirectories(folder)
    return LocalFiles(folder)


def for_run(cfg: DictConfig | None, run_dir: Path) -> CheckpointStore:
    """The store of a run directory's own checkpoints: with checkpoint.remote, also copied there."""
    files = layout.RunLayout(run_dir)
    local = for_folder(files.checkpoints, cfg)
    url = OmegaConf.select(cfg, "checkpoint.remote", default=None) if cfg is not None else None
    if url is None:
        return local
    from framework.checkpoint.remote import RemoteCopy  # fsspec and the store's library, only when asked for

    return RemoteCopy(local, url, required=cfg.checkpoint.remote_required, history=files.history)
