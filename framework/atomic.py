"""Whole-file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

from framework.runs import layout


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (0644 under the usual 022),
    for files that a library creates with a narrower one (safetensors: 0600)."""
    try:  # Linux states the umask; reading it elsewhere means setting it for a moment
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def replace_atomically(path: Path, text: str, durable: bool = True) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, rename it over `path`, fsync the
    folder. `durable=False` skips both fsyncs: still whole for any reader and after a killed
    process, but a power cut may leave the previous version or none."""
    tmp = path.with_name(layout.temporary(path.name))
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno != errno.ENOSPC or not path.is_file():
            raise
        # No room for a second file (the inodes ran out): overwrite in place, so that a run's
        # status is still recorded. The last resort: a crash now could leave the file torn.
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def json_text(value, **dumps) -> str:
    """JSON that stays JSON: a NaN or infinite float (a loss gone wrong) is written as null,
    never as the bare NaN that json.dumps writes by default and no JSON reader accepts."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), allow_nan=False, **dumps)


def write_json_atomic(path: Path, payload: dict) -> None:
    replace_atomically(path, json_text(payload, indent=2, sort_keys=True) + "\n")
