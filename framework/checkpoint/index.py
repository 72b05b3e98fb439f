"""checkpoints/index.json: every checkpoint file with its epoch, step, metric, size and sha256.
LocalFiles (framework/checkpoint/storage.py) keeps it; this module reads, checks and writes it.

Everything read from disk is checked before it is used: an entry names a plain file inside the
checkpoints folder (no path, no `..`, no link that leads out), with fields of the right types.
Anything else is ignored with a warning: retention deletes what the index lists, and the
framework often runs as root.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from framework.atomic import json_text, replace_atomically
from framework.runs import layout

log = logging.getLogger("framework")

ROLES = ("last", "best", "periodic")
KINDS = ("full", "model")


def is_plain_name(name: object) -> bool:
    """A file name with no directory part: what every name in the index must be."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and Path(name).name == name
        and not any(c in name for c in "/\\\0")
    )


def stays_inside(folder: Path, name: str) -> bool:
    """Whether folder/name is, after following any link, a file directly in `folder`."""
    return (folder / name).resolve().parent == folder.resolve()


def entry_problem(entry: object) -> str | None:
    """Why an index entry cannot be trusted, or None."""
    if not isinstance(entry, dict):
        return "not an object"
    if not is_plain_name(entry.get("file")):
        return f"file {entry.get('file')!r} is not a plain file name"
    expected = {"role": ROLES, "kind": KINDS}
    for key, allowed in expected.items():
        if entry.get(key) not in allowed:
            return f"{key} {entry.get(key)!r} is not one of {allowed}"
    for key in ("epoch", "step", "size"):
        if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool) or entry[key] < 0:
            return f"{key} {entry.get(key)!r} is not a count"
    if not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
        return "sha256 is not a hex digest"
    xxh3 = entry.get("xxh3_128", "0" * 32)  # absent from entries written before it was
    if not isinstance(xxh3, str) or not re.fullmatch(r"[0-9a-f]{32}", xxh3):
        return f"xxh3_128 {xxh3!r} is not a hex digest"
    if not isinstance(entry.get("time", 0.0), (int, float)):
        return "time is not a number"
    files = entry.get("files", {})  # a sharded checkpoint's: each of its directory's files
    if not isinstance(files, dict):
        return "files is not an object"
    for name, digests in files.items():
        if not is_plain_name(name) or not isinstance(digests, dict):
            return f"files lists {name!r}, not a plain file name with its checksums"
    return None


class Index:
    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / layout.INDEX
        self.entries: dict[str, dict] = {}
        if not self.path.is_file():
            return
        # Written atomically, so it is whole; a hand-edited broken one is set aside, not trusted.
        try:
            listed = json.loads(self.path.read_text())["files"]
            if not isinstance(listed, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            log.warning("%s is not a valid index; ignoring it", self.path)
            return
        for entry in listed:
            problem = entry_problem(entry)
            if problem is None and not stays_inside(folder, entry["file"]):
                problem = f"{entry['file']} leads out of {folder}"
            if problem is not None:
                log.warning("ignoring an entry of %s: %s", self.path, problem)
                continue
            self.entries[entry["file"]] = entry

    def record(self, entry: dict) -> None:
        self.entries[entry["file"]] = entry
        self.save()

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        self.save()

    def save(self) -> None:
        files = sorted(self.entries.values(), key=lambda e: (e["step"], e["file"]))
        self.folder.mkdir(parents=True, exist_ok=True)
        # Not fsynced: the files it lists are durable before it names them and check themselves
        # (their CRC32 records), and a lost or stale index is recovered from the files' own meta
        # (LocalFiles.list). Two fsyncs fewer make a save cost what torch.save costs
        # (benchmarks/checkpoint_io.py).
        replace_atomically(self.path, json_text({"files": files}, indent=2), durable=False)

    def entry(self, path: Path) -> dict | None:
        """What the index lists for a file of its folder (size, sha256, ...), or None."""
        return self.entries.get(path.name) if path.parent.resolve() == self.folder.resolve() else None
