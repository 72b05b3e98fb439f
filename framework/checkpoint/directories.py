"""Sharded checkpoints: one directory per checkpoint, which every rank writes its shard into.

    step_00000040/
        .metadata        DCP's record of every tensor's shards (framework/checkpoint/sharded.py)
        __0_0.distcp     rank 0's shard of the model and the optimizer's state, __1_0.distcp rank 1's, ...
        train_state.pt   everything else (counters, every rank's random streams, the data
                         position, config, meta): one torch.save file that weights_only reads
        checksums.json   the size, xxh3 and sha256 of each file above (the manifest)

The commit, in order: the directory is written under a temporary name (DCP writes `.metadata`
last), rank 0 adds train_state.pt and the manifest, fsyncs, renames the directory into place
(atomically exchanged with the one it replaces), then lists it in index.json with every file's
checksums. An alias (`last`, `best`) is a directory of hard links to the same files, put in
place the same way. A kill at any instant leaves the previous directory or the new one under
each name, never a torn one; temporary names are cleared at the next start.

Reading checks every file against its checksums (the index's entry, or the manifest of a
directory the index does not list) before anything is unpickled, then reads `.metadata` and
train_state.pt without running anything they might carry.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import xxhash
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

from framework import distributed, faults
from framework.atomic import fsync_dir, json_text
from framework.checkpoint import dcp_io, io, sharded
from framework.checkpoint.errors import CheckpointError
from framework.checkpoint.sharded import MANIFEST, REST
from framework.checkpoint.storage import LocalFiles
from framework.runs import layout

log = logging.getLogger("framework")

T = TypeVar("T")


class ShardedDirectories(LocalFiles):
    """A folder of sharded checkpoint directories (trainer.strategy=fsdp), with its index.json.
    Every rank writes its shard; rank 0 commits, lists, aliases and deletes. It reads files too
    (LocalFiles): a checkpoint is told apart by what it is."""

    suffix = ""  # names: last, best, step_00000040

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.group = None  # the process group of the saves: one of their own (async_save), or the default
        self.owner: int | None = None  # rank 0's pid: the temporary names every rank agrees on
        self.stager = None  # DCP's, for background saves (own_copy)

    def prepare(self, expected_bytes: int) -> None:
        if distributed.is_main():
            super().prepare(expected_bytes)
        self.owner = distributed.from_main(os.getpid())

    def saving_in_background(self) -> None:
        """Saves run in a background thread: their collectives get a process group of their own,
        or they would interleave with training's on the default one and corrupt its transfers."""
        if dist.is_initialized() and self.group is None:
            self.group = dist.new_group(backend="gloo")

    def own_copy(self, payload: dict) -> dict:
        """The shards of this rank, copied to memory by DCP's stager (what dcp.async_save does at
        its call) so that the next steps cannot change them; the background thread writes them."""
        if self.stager is None:
            self.stager = DefaultStager(StagingOptions(torch.cuda.is_available(), False, False, False))
        return self.stager.stage({key: payload[key] for key in sharded.SHARDED_KEYS if key in payload})

    def close(self) -> None:
        super().close()
        if self.stager is not None:
            self.stager.close()
            self.stager = None

    def collectively(self, save: Callable[[], T]) -> T | None:
        """Every rank writes its shard; rank 0 commits; every rank returns once it is committed."""
        result = save()
        return result if distributed.is_main() else None

    def write(self, name: str, payload: dict, described: dict) -> dict | None:
        main = distributed.is_main()
        tmp = self.folder / layout.temporary(name, owner=self.owner)
        tensors = {key: payload[key] for key in sharded.SHARDED_KEYS if key in payload}
        rest = {key: value for key, value in payload.items() if key not in tensors}
        rest["sharded_keys"] = sorted(tensors)
        room = None
        if main:
            try:
                io.check_room(self.folder, io.expected_size(payload), f"to write {self.where(name)}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            except (CheckpointError, OSError) as e:
                room = str(e) if isinstance(e, CheckpointError) else io.write_failure(self.where(name), e)
        room = distributed.from_main(room, self.group)  # every rank stops, or none
        if room is not None:
            raise CheckpointError(room)
        faults.boundary("room_checked")
        try:
            dcp_io.save(tensors, tmp, self.group, no_dist=not dist.is_initialized())
        except BaseException as e:  # DCP's CheckpointException derives from BaseException
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise CheckpointError(f"cannot write {self.where(name)}: {first_line(e)}") from e
        own = digests_of(tmp, shard_files(tmp, distributed.rank()))
        every = distributed.gather(own, self.group)
        failure = None
        if main:
            files = {k: v for part in every for k, v in part.items()}
            try:
                manifest = self.commit(tmp, name, files, rest)
            except (CheckpointError, OSError) as e:
                shutil.rmtree(tmp, ignore_errors=True)
                failure = str(e) if isinstance(e, CheckpointError) else io.write_failure(self.where(name), e)
        failure = distributed.from_main(failure, self.group)  # every rank returns once it is committed
        if failure is not None:
            raise CheckpointError(failure)
        if not main:
            return None
        entry = {
            "file": name,
            **described,
            "size": sum(f["size"] for f in files.values()),
            "sha256": hashlib.sha256(manifest.encode()).hexdigest(),
            "xxh3_128": xxhash.xxh3_128_hexdigest(manifest.encode()),
            "files": files,
            "time": time.time(),
        }
        self.index.record(entry)
        faults.boundary("indexed")
        return entry

    def commit(self, tmp: Path, name: str, files: dict, rest: dict) -> str:
        """Rank 0, once every shard and `.metadata` are durable: train_state.pt, the manifest,
        then the directory under its name. Returns the manifest's text."""
        files.update(digests_of(tmp, [sharded.METADATA]))
        files[REST] = io.save_hashed(rest, tmp / REST)
        io.verify(tmp / REST, rest["meta"]["kind"])
        manifest = json_text({"files": files}, indent=2, sort_keys=True)
        (tmp / MANIFEST).write_text(manifest)
        fsync_file(tmp / MANIFEST)
        fsync_dir(tmp)
        faults.boundary("written")
        put_in_place(tmp, self.where(name), self.discard)
        faults.boundary("renamed")
        return manifest

    def alias(self, name: str, target: str, role: str) -> dict | None:
        if not distributed.is_main():
            return None
        source, tmp = self.where(target), self.folder / layout.temporary(name, owner=self.owner)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for file in sorted(os.listdir(source)):
            try:
                os.link(source / file, tmp / file)
            except OSError:  # a file system without hard links: copy instead
                shutil.copyfile(source / file, tmp / file)
                fsync_file(tmp / file)
        fsync_dir(tmp)
        put_in_place(tmp, self.where(name), self.discard)
        faults.boundary("linked")
        entry = {**self.index.entries[target], "file": name, "role": role}
        self.index.record(entry)
        return entry

    def delete(self, name: str) -> None:
        if not distributed.is_main():
            return
        path = self.where(name)
        if path.is_dir() and not path.is_symlink():
            aside = self.folder / layout.temporary(name, "-deleted", owner=self.owner)
            os.replace(path, aside)  # gone from its name at once; the files go after
            self.index.remove(name)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            super().delete(name)

    def room_for(self, nbytes: int, what: str) -> None:
        if distributed.is_main():
            super().room_for(nbytes, what)


def shard_files(folder: Path, rank: int) -> list[str]:
    """The files DCP wrote for `rank` (`__RANK_N.distcp`)."""
    return sorted(f for f in os.listdir(folder) if f.startswith(f"__{rank}_") and f.endswith(".distcp"))


def digests_of(folder: Path, names: list[str]) -> dict:
    """Each file's size, sha256 and xxh3, read once."""
    return {name: io.file_digests(folder / name) for name in names}


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def put_in_place(tmp: Path, path: Path, discard: ThreadPoolExecutor | None) -> None:
    """Rename the complete directory `tmp` to `path`. One that is there already is swapped out in
    one step (renameat2's RENAME_EXCHANGE): at every instant `path` is one of the two whole
    directories. The old one, now under the temporary name, is deleted after."""
    if not path.exists():
        os.rename(tmp, path)
    elif not exchange(tmp, path):
        # No atomic exchange here: set the old one aside first. A kill between the two renames
        # leaves this name empty; the checkpoint under its other names (last's periodic copy) stays.
        aside = tmp.with_name(tmp.name + "-replaced")
        os.rename(path, aside)
        os.rename(tmp, path)
        tmp = aside
    fsync_dir(path.parent)
    if tmp.exists():
        if discard is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            discard.submit(shutil.rmtree, tmp, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def first_line(e: BaseException) -> str:
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: its own str names no cause
    if failures:
        e = failures[min(failures)]
        e = e[0] if isinstance(e, tuple) else e  # (the error, its traceback)
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
