"""Whether a path is a regular file, found without opening it: opening a named pipe blocks until
another process writes to it, so the tools look with stat first."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# What stat says a path is, when it is not a regular file.
KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` is not a file to read, as a sentence naming it; None for a regular file (or a
    link to one)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return f"no such file: {path}"
    except OSError as e:  # a link loop, a folder on the way that is a file, no permission to look
        return f"{path} cannot be looked at: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for is_kind, name in KINDS if is_kind(mode)), "something else")
    return f"{path} is {kind}, not a regular file"
