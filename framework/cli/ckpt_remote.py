"""The checkpoint tool on a run's remote copy (checkpoint.remote): inspect, verify and export take
its URL (s3://bucket/runs/r1) or one checkpoint's in it (s3://bucket/runs/r1/last.pt; a sharded
one's: .../last). framework/cli/ckpt.py sends a URL here.

The remote index is the truth, never a listing (framework/checkpoint/remote_folder.py). inspect
and export download the checkpoint into a temporary folder with the remote copy's own download
(each object checked against the index's sha256 before it takes its name), then read it as a
local one: nothing is unpickled before its checksum is checked. verify streams every object of
every listed checkpoint through sha256 (nothing written to disk, nothing unpickled) and compares
its size and digest with the index.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from framework.checkpoint import sharded
from framework.checkpoint.errors import CheckpointError, DamagedCheckpoint
from framework.checkpoint.remote_folder import (
    InvalidIndex,
    RemoteError,
    RemoteFolder,
    object_key,
    remote_entry_problem,
    url_problem,
)
from framework.cli.ckpt import DAMAGED, OK, UNREADABLE, FileProblem, Named, UsageProblem
from framework.runs import layout

CHUNK = 1 << 20  # bytes hashed at a time: an object of any size streams through in constant memory


class Place:
    """What a URL names: a run's remote folder and its index's entries as written; `name`: the
    one checkpoint the URL names in it (None: the whole run)."""

    def __init__(self, folder: RemoteFolder, listed: list, name: str | None):
        self.folder, self.listed, self.name = folder, listed, name

    def entries(self) -> list:
        """The index's entries the URL names, in name order (one that is not an object sorts first)."""
        chosen = [e for e in self.listed if self.name is None or named(e) == self.name]
        return sorted(chosen, key=lambda e: str(named(e)))


def named(entry: object) -> object:
    return entry.get("file") if isinstance(entry, dict) else None


def locate(url: str) -> Place:
    """The run folder or the checkpoint that `url` names, by the remote index: the URL's own
    index.json (a run), else its parent's listing the URL's last part (a checkpoint)."""
    problem = url_problem(url, "PATH")
    if problem:
        raise FileProblem(problem)
    folder = RemoteFolder(url)
    listed = listed_in(folder)
    if listed is not None:
        return Place(folder, listed, None)
    said = f"{folder.url} is not a run's remote copy (there is no {folder.where(layout.INDEX)})"
    parent_url, _, name = folder.url.rpartition("/")
    if not parent_url.endswith(":/"):  # s3://bucket has no parent to look in
        parent = RemoteFolder(parent_url)
        listed = listed_in(parent)
        if listed is not None and any(named(e) == name for e in listed):
            return Place(parent, listed, name)
        said += f", nor a checkpoint that {parent.where(layout.INDEX)} lists"
    raise FileProblem(f"{said}: give a run's checkpoint.remote URL, or one checkpoint's in it")


def listed_in(folder: RemoteFolder) -> list | None:
    """The entries of `folder`'s remote index as written, those a run would not trust too (verify
    says why); None where there is no index. An unreachable store: FileProblem."""
    try:
        return folder.read_listed()
    except InvalidIndex as e:
        raise DamagedCheckpoint(str(e)) from e
    except RemoteError as e:
        raise FileProblem(str(e)) from e


# ---- inspect and export: a local copy ------------------------------------------------------------


@contextmanager
def downloaded(url: str) -> Iterator[Named]:
    """The checkpoint `url` names, downloaded into a temporary folder (removed after) and listed
    in its index as the remote index lists it. Messages about it name the URL, not that folder."""
    from framework.checkpoint.remote import RemoteCopy  # fsspec's store library: only for a URL
    from framework.checkpoint.storage import LocalFiles

    place = locate(url)
    if place.name is None:
        names = [named(e) for e in place.entries() if remote_entry_problem(e) is None]
        example = next((last for last in ("last.pt", "last") if last in names), names[-1] if names else "last.pt")
        example = f"{place.folder.url}/{example}"
        raise FileProblem(f"{url} is a run's remote copy: name one of its checkpoints, such as {example}")
    entry = place.entries()[-1]  # of a name listed twice, the one a run reads: the last
    problem = remote_entry_problem(entry)
    if problem:
        index = place.folder.where(layout.INDEX)
        raise DamagedCheckpoint(f"{index} lists {place.name} without what a check needs: {problem}")
    with tempfile.TemporaryDirectory(prefix="framework-ckpt-") as tmp:
        store = RemoteCopy(LocalFiles(Path(tmp)), place.folder.url, required=True)
        try:
            store.download(place.name)
        except RemoteError as e:  # the store stopped answering: the command cannot read its input
            raise FileProblem(str(e.__cause__ if isinstance(e.__cause__, RemoteError) else e)) from e
        except KeyError as e:  # the index changed since it was read
            raise FileProblem(f"{url}: no longer listed in {place.folder.where(layout.INDEX)}") from e
        checked = f"each object's sha256 in {place.folder.where(layout.INDEX)} on download, then "
        try:
            yield Named(store.where(place.name), store, url, checked)
        except (CheckpointError, FileProblem, UsageProblem) as e:
            if e.args and isinstance(e.args[0], str):
                e.args = (e.args[0].replace(tmp, place.folder.url), *e.args[1:])
            raise


# ---- verify: every object's bytes against the index ------------------------------------------------


def verify(url: str) -> int:
    """Check every object of every checkpoint `url` names against the remote index: one line per
    checkpoint, then a count; the exit code of the first that fails (as a local verify's)."""
    place = locate(url)
    entries = place.entries()
    if not entries:
        raise FileProblem(f"{place.folder.where(layout.INDEX)} lists no checkpoints")
    checked: dict[str, tuple[int, str] | None] = {}  # by object: an alias's objects are read once
    codes = []
    for entry in entries:
        code, line = verify_entry(place.folder, entry, checked)
        codes.append(code)
        print(line)
    bad = sum(code != OK for code in codes)
    counted = f"{len(codes)} checkpoint{'' if len(codes) == 1 else 's'} in {place.folder.url}"
    print(f"{counted}: {bad} bad" if bad else f"{counted}: {len(codes)} ok")
    return next((code for code in codes if code != OK), OK)


def verify_entry(folder: RemoteFolder, entry: object, checked: dict) -> tuple[int, str]:
    name = named(entry)
    problem = remote_entry_problem(entry)
    if problem:
        return DAMAGED, f"BAD   {name}  {folder.where(layout.INDEX)} lists it without what a check needs: {problem}"
    objects = objects_named(entry)
    found = []
    for label, sha256, size in objects:
        if sha256 not in checked:
            checked[sha256] = object_problem(folder, sha256, size)
        if checked[sha256] is not None:
            code, said = checked[sha256]
            found.append((code, f"{label}: {said}"))
    if found:
        return found[0][0], f"BAD   {name}  {'; '.join(said for _, said in found)}"
    many = f"{len(objects)} object{'' if len(objects) == 1 else 's'}"
    checked_here = f"the size and sha256 of its {many} in the remote index"
    return OK, f"ok    {name}  epoch {entry['epoch']} step {entry['step']}  (checked: {checked_here})"


def objects_named(entry: dict) -> list[tuple[str, str, int | None]]:
    """(what it is, sha256, size or None where the index does not give it) of each object of a
    checkpoint: its file; or a directory's files and its manifest; and its run's history."""
    name = entry["file"]
    if "files" in entry:
        found = [(f"{name}/{file}", d["sha256"], d["size"]) for file, d in sorted(entry["files"].items())]
        found.append((f"{name}/{sharded.MANIFEST}", entry["sha256"], None))
    else:
        found = [(name, entry["sha256"], entry["size"])]
    if "history" in entry:
        found.append((f"its history ({layout.HISTORY})", entry["history"]["sha256"], entry["history"]["size"]))
    return found


def object_problem(folder: RemoteFolder, sha256: str, size: int | None) -> tuple[int, str] | None:
    """Why object `sha256` is not what the index says (an exit code and words), or None."""
    key = object_key(sha256)
    path = folder.path(key)
    digest, got = hashlib.sha256(), 0
    try:
        folder.fs.invalidate_cache(path)
        with folder.fs.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                got += len(chunk)
    except FileNotFoundError:
        return UNREADABLE, f"{folder.where(key)} is missing"
    except Exception as e:  # the store stopped answering: nothing more can be checked
        raise FileProblem(str(folder.failure(f"read {key}", e))) from e
    if size is not None and got != size:
        return DAMAGED, f"{folder.where(key)} has {got:,} bytes, the remote index lists {size:,}: the object is damaged"
    if digest.hexdigest() != sha256:
        return DAMAGED, f"{folder.where(key)} does not match its sha256 in the remote index: the object is damaged"
    return None
