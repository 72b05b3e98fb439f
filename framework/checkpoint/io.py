"""Writing and reading one checkpoint file.

A write is atomic and costs about what a plain torch.save and fsync cost: the payload goes to a
temporary file in the same folder while its sha256 is computed from the bytes on their way to
the file (in a second thread: hashlib and the file write both release the GIL), is fsynced,
verified without reading the tensor data back (reloaded memory-mapped with weights_only=True,
so the pickle and the archive's records are checked; required keys present), and only then
renamed over the old name; the folder is fsynced so the rename survives a power cut. A crash at
any moment leaves either the old file or the new one, never a torn one under the real name.

Reading for resume is one pass over the file: torch.load memory-maps it (the tensors share the
pages) and its xxh3 checksum, computed at the save beside the sha256 and listed in index.json,
is computed again over the same pages (xxh3 runs at memory speed, where sha256 or even zlib's
CRC32 would cost more than the load itself). A file the index does not list, or lists
differently (a save cut short between the rename and the index update), is checked instead
record by record against the CRC32 the zip archive lists for each, which torch.save computes as
it writes: a torn or altered file fails one check or the other. `python -m framework.ckpt
verify` also compares the index's sha256.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import shutil
import struct
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import xxhash

from framework import faults
from framework.atomic import fsync_dir
from framework.checkpoint import formats
from framework.checkpoint.errors import (
    CheckpointError,
    DamagedCheckpoint,
    ForeignCheckpoint,
    NewerCheckpoint,  # noqa: F401 (io is where callers find every checkpoint error)
    UnsafeCheckpoint,
)
from framework.runs import layout

FULL_KEYS = (
    "epoch",
    "global_step",
    "model_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "scaler_state_dict",
    "loss",
    "best_metric",
    "rng_state",
    "cuda_rng_state",
    "numpy_rng_state",
    "python_rng_state",
    "rng_per_rank",
    "loader_state",
    "config",
    "meta",
)
MODEL_KEYS = ("epoch", "global_step", "model_state_dict", "config", "meta")
# Room kept free beyond the file itself, so a checkpoint never fills the disk to the last byte.
DISK_MARGIN = 64 * 2**20


def required_keys(kind: str) -> tuple[str, ...]:
    return FULL_KEYS if kind == "full" else MODEL_KEYS


def expected_size(payload: object) -> int:
    """Bytes of tensor data in the payload (the file is this plus a little pickle)."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, dict):
        return sum(expected_size(v) for v in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(expected_size(v) for v in payload)
    return 64


# Files one save may create at once (the temporary file, index.json's, links' temporaries).
INODES_NEEDED = 16


def check_room(folder: Path, data_bytes: int, what: str) -> None:
    """Refuse, in one line and before anything is written, when `folder`'s file system lacks the
    space or the free inodes (files) that a checkpoint of `data_bytes` needs."""
    need = data_bytes + DISK_MARGIN
    usage = os.statvfs(folder)
    free = usage.f_bavail * usage.f_frsize
    if free < need:
        raise CheckpointError(
            f"not enough free disk space {what}: it needs about {need / 2**20:.0f} MiB "
            f"(with a {DISK_MARGIN // 2**20} MiB margin), {folder} has {free / 2**20:.0f} MiB free. "
            "Existing checkpoints are kept; free some space or set checkpoint.keep_last_n."
        )
    if usage.f_files and usage.f_favail < INODES_NEEDED:  # f_files is 0 where a file system has no inode limit
        raise CheckpointError(
            f"no room for new files {what}: the file system of {folder} has {usage.f_favail} free inodes "
            f"(a save needs up to {INODES_NEEDED}). Existing checkpoints are kept; delete some files."
        )


class HashingWriter:
    """A file to torch.save into that passes the bytes on and computes their sha256 in a second
    thread, in order, while the file is written and fsynced.

    A large block that is the payload's own tensor memory (torch writes a CPU tensor's storage
    as it is) stays unchanged until the save returns, so it may still be hashed after `write`
    returns, during the fsync. Another large block (a GPU tensor's temporary CPU copy) is hashed
    while it is written, before `write` returns: torch may reuse it. Small blocks (headers, the
    pickle) are copied and hashed together.
    """

    GATHER = 2**20  # bytes: smaller blocks are copied and hashed together

    def __init__(self, file, pool: ThreadPoolExecutor, payload: object):
        self.file, self.pool, self.size = file, pool, 0
        self.sha256, self.xxh3 = hashlib.sha256(), xxhash.xxh3_128()
        self.stable = tensor_memory(payload)
        self.gathered = bytearray()
        self.hashed: Future | None = None
        self.failure: OSError | None = None  # the file's first error (a full disk)

    def save(self, payload: object) -> None:
        """torch.save the payload through this writer. The file's own error (a full disk) is
        raised as it is: torch's writer replaces it with a RuntimeError that says "unexpected pos"."""
        try:
            torch.save(payload, self)
        except RuntimeError as e:
            if self.failure is None:
                raise
            raise self.failure from e

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if view.nbytes >= self.GATHER:
            self.hash_gathered()
            stable = self.is_stable(view)
            # In pieces, each hashed while written, so that both threads read it from the cache
            # rather than from memory twice: on a 2-core machine that is the difference.
            for start in range(0, view.nbytes, self.GATHER):
                piece = view[start : start + self.GATHER]
                self.hashed = self.pool.submit(self.hash, piece)
                self.pass_on(piece)
            if not stable:
                self.hashed.result()  # before torch may reuse the buffer
        else:
            self.gathered += view
            if len(self.gathered) >= self.GATHER:
                self.hash_gathered()
            self.pass_on(view)
        self.size += view.nbytes
        return view.nbytes

    def pass_on(self, data: memoryview) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            self.failure = self.failure or e
            raise

    def flush(self) -> None:
        self.file.flush()

    def hash(self, piece) -> None:
        self.sha256.update(piece)
        self.xxh3.update(piece)

    def hash_gathered(self) -> None:
        if self.gathered:
            self.hashed = self.pool.submit(self.hash, bytes(self.gathered))
            self.gathered = bytearray()

    def is_stable(self, view: memoryview) -> bool:
        """Whether the block is (the start of) one of the payload's CPU storages: torch writes
        a storage whole, from its first byte. A look-up, not a scan: a model has thousands."""
        start = np.frombuffer(view, dtype=np.uint8).ctypes.data  # the block's address, no copy
        return start + view.nbytes <= self.stable.get(start, start)

    def digests(self) -> dict:
        """Once everything is written: the sha256 and xxh3 of it all (waits for the hashing thread)."""
        self.hash_gathered()
        if self.hashed is not None:
            self.hashed.result()  # the pool runs one task at a time, in order: this one is the last
        return {"sha256": self.sha256.hexdigest(), "xxh3_128": self.xxh3.hexdigest()}


def tensor_memory(payload: object) -> dict[int, int]:
    """Where each of the payload's CPU tensors' storages starts, and where it ends."""
    if isinstance(payload, torch.Tensor):
        if payload.device.type != "cpu":
            return {}
        storage = payload.untyped_storage()
        return {storage.data_ptr(): storage.data_ptr() + storage.nbytes()}
    if isinstance(payload, dict):
        payload = list(payload.values())
    ranges = {}
    if isinstance(payload, (list, tuple)):
        for value in payload:
            for start, end in tensor_memory(value).items():
                ranges[start] = max(end, ranges.get(start, end))
    return ranges


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(path: Path) -> dict:
    """A file's size, sha256 and xxh3 (128 bits), from one read."""
    sha256, xxh3, size = hashlib.sha256(), xxhash.xxh3_128(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            sha256.update(block)
            xxh3.update(block)
            size += len(block)
    return {"size": size, "sha256": sha256.hexdigest(), "xxh3_128": xxh3.hexdigest()}


def xxh3_of(path: Path) -> str:
    """The xxh3 (128 bits) of a file, read through a memory map: the pages torch.load maps too."""
    # (MAP_POPULATE, which maps every page up front, made it slower: 0.9 ms for 10 MB, not 0.6.)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return xxhash.xxh3_128_hexdigest(mapped)


def write(payload: dict, path: Path, discard: ThreadPoolExecutor | None = None) -> dict:
    """Write `payload` to `path` atomically and verified; return its size, sha256 and xxh3.

    On any failure the file at `path` (if any) is untouched and no temporary file is left.
    `discard`: where the file it replaces is deleted (see set_aside); None: before it returns.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    check_room(folder, expected_size(payload), f"to write {path}")
    faults.boundary("room_checked")
    tmp = folder / layout.temporary(path.name)
    replaced = None
    try:
        written = save_hashed(payload, tmp)
        faults.boundary("written")
        verify(tmp, payload["meta"]["kind"])
        replaced = set_aside(path)
        os.replace(tmp, path)
        fsync_dir(folder)
        faults.boundary("renamed")
    except OSError as e:  # the disk filled up, inodes ran out, the folder went away
        remove_temporaries(tmp, replaced)
        raise CheckpointError(write_failure(path, e)) from e
    except BaseException:
        remove_temporaries(tmp, replaced)
        raise
    if replaced is not None:
        if discard is None:
            replaced.unlink(missing_ok=True)
        else:
            discard.submit(replaced.unlink, missing_ok=True)
    return written


def save_hashed(payload: dict, path: Path) -> dict:
    """torch.save `payload` as the new file `path`, hashed on the way, fsynced; its size and digests."""
    with open(path, "wb") as f, ThreadPoolExecutor(1) as pool:
        hashing = HashingWriter(f, pool, payload)
        hashing.save(payload)
        f.flush()
        os.fsync(f.fileno())  # the hashing thread goes on meanwhile
        return {"size": hashing.size, **hashing.digests()}


def write_failure(path: Path, error: OSError) -> str:
    """One line for an OSError met while writing checkpoint `path`."""
    if error.errno == errno.ENOSPC:
        return (
            f"no space left on device while writing checkpoint {path}: the disk filled up during the save. "
            "Existing checkpoints are kept; free some space or set checkpoint.keep_last_n."
        )
    return f"cannot write {path}: {error.strerror or error}. Existing checkpoints are kept."


def remove_temporaries(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)


def set_aside(path: Path) -> Path | None:
    """A second name for the file at `path` (a temporary one), so that the rename over it frees
    nothing: freeing a large file's blocks takes milliseconds (on a disk mounted with `discard`,
    as long as the fsync), and the save need not wait for it: another thread deletes that name.
    None where there is no file, no hard links, or a name still set aside by the previous save.
    One a killed run left is removed like its other temporary files (LocalFiles.prepare)."""
    aside = path.with_name(layout.temporary(path.name, "-replaced"))
    try:
        os.link(path, aside)
    except OSError:
        return None
    return aside


def link(source: Path, path: Path) -> None:
    """Make `path` another name for the verified file `source` (atomically, no second copy)."""
    tmp = path.parent / layout.temporary(path.name)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links: copy instead
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def safe_load(path: Path, mmap: bool = False) -> object:
    """torch.load with weights_only: nothing executed, a one-line error naming the file.
    A file that pickles more than weights_only allows raises UnsafeCheckpoint, naming what it
    pickles; any other file that does not load, DamagedCheckpoint.

    `mmap` maps a zip archive (torch.save's format); a file in torch's format from before 1.6,
    which cannot be mapped, is read instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"no such checkpoint file: {path}") from e
    except IsADirectoryError as e:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from e
    except PermissionError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror}") from e
    except Exception as e:
        # The older format is not scanned: torch's refusal names the first object it met.
        needs = unsafe_globals(path) or re.findall(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(e))[:1]
        if needs:
            raise UnsafeCheckpoint(
                f"{path} needs more than torch.load(weights_only=True): it pickles {', '.join(needs)}. "
                "Nothing of it was unpickled",
                needs,
            ) from e
        if kind_of_file(path) is None:
            formats_named = "neither a zip archive (torch.save's format) nor torch's older format"
            raise DamagedCheckpoint(f"{path} is not a torch checkpoint: {formats_named}") from e
        # torch's own message goes on to advise weights_only=False: never ours to pass on.
        # Nor its note on miniz internals after a torn zip's reason.
        reason = str(e).split("Re-running `torch.load`")[0].split("\n")[0].split(" This is an internal")[0]
        reason = reason.strip() or type(e).__name__
        raise DamagedCheckpoint(f"{path} does not load with torch.load(weights_only=True): {reason}") from e


# How each of torch's formats starts: a zip's first local header, or (before torch 1.6) a pickle
# (protocol 2) of torch's magic number.
TORCH_FORMATS = {b"PK\x03\x04": "zip", b"\x80\x02\x8a\x0a": "legacy"}


def kind_of_file(path: Path) -> str | None:
    """Which of torch's formats a file starts like ("zip", even torn; "legacy"), or None."""
    with open(path, "rb") as f:
        return TORCH_FORMATS.get(f.read(4))


def unsafe_globals(path: Path) -> list[str]:
    """The Python objects (by name) a torch file pickles beyond what weights_only allows; found by
    reading its pickle's opcodes, never by running them. Empty for a file that is not a torch zip."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def verify(path: Path, kind: str) -> dict:
    """Reload safely (weights_only, memory-mapped so the data is not read twice) and check keys."""
    ckpt = safe_load(path, mmap=True)
    check_keys(ckpt, path, kind)
    return ckpt


def check_keys(ckpt: dict, path: Path, kind: str) -> None:
    # A sharded checkpoint's train_state.pt names the entries its shards hold (directories.py).
    elsewhere = ckpt.get("sharded_keys", ())
    missing = [k for k in required_keys(kind) if k not in ckpt and k not in elsewhere]
    if missing:
        raise DamagedCheckpoint(f"{path} is missing required keys: {', '.join(missing)}")


def load(path: Path, listed: dict | None = None) -> dict:
    """Load a checkpoint for use; see load_checked."""
    return load_checked(path, listed)[0]


def load_checked(path: Path, listed: dict | None = None, sha256: bool = False) -> tuple[dict, str]:
    """Load a checkpoint for use, checked: against the size and xxh3 its index entry (`listed`)
    gives, or, where the entry is missing or out of date, every record against the CRC32 its
    archive lists; with `sha256` also the sha256 the entry gives (a second read: for the verify
    tool, not for resume); then weights_only, the format version, the keys and their types.

    Returns the checkpoint (its tensors memory-mapped) and which check it passed, in words: a
    log must never claim a check that was not made.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    ckpt = safe_load(path, mmap=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("meta"), dict):
        raise ForeignCheckpoint(f"{path} is not a checkpoint of this framework (no 'meta')")
    formats.version_of(ckpt, path)  # first: a newer format may check its integrity another way
    size_fits = listed is not None and listed["size"] == path.stat().st_size
    passed, fields = checked_bytes(path, listed, size_fits)
    # The verify tool is strict: an entry of this file's size must give its sha256, even where a
    # resume takes a sound file whose entry is out of date.
    if sha256 and size_fits:
        if sha256_of(path) != listed["sha256"]:
            raise DamagedCheckpoint(f"{path} does not match the sha256 in its index.json")
        fields.append("sha256")
    if fields:
        named = fields[0] if len(fields) == 1 else f"{', '.join(fields[:-1])} and {fields[-1]}"
        passed.append(f"its {named} in index.json")
    return checked_contents(ckpt, path, " and ".join(passed))


def checked_contents(ckpt: dict, path: Path, passed: str = "") -> tuple[dict, str]:
    """A loaded checkpoint (whose bytes were checked) in the current format, with its keys and
    their types checked; `passed` with its upgrade said, if any."""
    ckpt, upgraded_from = formats.upgrade(ckpt, path)
    if upgraded_from:
        passed += f"; upgraded in memory from format {upgraded_from[0]} to {formats.FORMAT_VERSION}"
    check_keys(ckpt, path, ckpt["meta"].get("kind", "full"))
    check_types(ckpt, path)
    return ckpt, passed


def checked_bytes(path: Path, listed: dict | None, size_fits: bool) -> tuple[list[str], list[str]]:
    """Check the file's bytes, in one pass where its index entry (`listed`, of the file's size:
    `size_fits`) allows. Returns the checks it passed, in words, and the fields of the index
    entry it matched (none where the entry does not describe this file)."""
    fits = size_fits
    if fits and "xxh3_128" in listed:
        if xxh3_of(path) == listed["xxh3_128"]:
            return [], ["size", "xxh3"]
        fits = False  # a save cut short between the rename and the index update; or damage
    bad = records_failing_crc(path)
    if bad:
        raise DamagedCheckpoint(
            f"{path} is corrupt: {len(bad)} record(s) of its archive fail their CRC32 ({', '.join(bad[:3])})"
        )
    if listed is None:
        why = "index.json does not list it: a save cut short after the rename, or a lost index"
        return [f"its CRC32 records ({why})"], []
    if not fits:
        why = "index.json's entry for it is out of date: a save was cut short after the rename"
        return [f"its CRC32 records ({why})"], []
    return ["its CRC32 records"], ["size"]  # an entry older than the xxh3 in them


def records_failing_crc(path: Path) -> list[str]:
    """The records of a torch zip archive whose bytes do not match the CRC32 the archive lists,
    each read once from a memory map, two at a time (zlib releases the GIL)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DamagedCheckpoint(f"{path} is not a readable zip archive: {e}") from e
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)

        def fails(record: zipfile.ZipInfo) -> bool:
            # A local header (30 bytes, then the name and an extra field) before the stored data.
            name_length, extra_length = struct.unpack_from("<HH", mapped, record.header_offset + 26)
            start = record.header_offset + 30 + name_length + extra_length
            if record.compress_type != zipfile.ZIP_STORED or start + record.compress_size > len(mapped):
                return True
            return zlib.crc32(view[start : start + record.compress_size]) != record.CRC

        try:
            with ThreadPoolExecutor(2) as pool:
                return [r.filename for r, bad in zip(records, pool.map(fails, records)) if bad]
        finally:
            view.release()


def check_types(ckpt: dict, path: Path) -> None:
    """The fields the loop reads, of the types it needs: a hand-made or foreign file gets a
    one-line error naming the field, not a traceback from deep in the restore."""

    def count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    problems = [f"{k} is {ckpt.get(k)!r}, not a count" for k in ("epoch", "global_step") if not count(ckpt.get(k))]
    if not isinstance(ckpt.get("config"), str):
        problems.append("config is not YAML text")
    elsewhere = ckpt.get("sharded_keys", ())
    if not isinstance(ckpt.get("model_state_dict"), dict) and "model_state_dict" not in elsewhere:
        problems.append("model_state_dict is not a dict")
    if ckpt["meta"].get("kind", "full") == "full":
        loader = ckpt.get("loader_state")
        if not (isinstance(loader, dict) and count(loader.get("epoch")) and count(loader.get("position"))):
            problems.append(f"loader_state is {loader!r}, not {{'epoch': count, 'position': count}}")
        for key in ("optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict"):
            if not isinstance(ckpt.get(key), dict) and key not in elsewhere:
                problems.append(f"{key} is not a dict")
        if not isinstance(ckpt.get("epoch_loss_sum", 0.0), (int, float)):
            problems.append("epoch_loss_sum is not a number")
    if problems:
        raise DamagedCheckpoint(f"{path} has fields of the wrong type: " + "; ".join(problems))
