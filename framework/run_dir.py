"""The run directory: whether it already holds a run, what to do with one that does, and the
lock that gives it one writer.

A new run started in a directory that holds another (`hydra.run.dir=D` without `resume`) would
overwrite its checkpoints, add a second history to its metrics and leave its later files to
hijack a `resume=auto`. It is refused, unless `existing_run` says to archive the old run
(rename the directory aside) or to overwrite it (delete it). Decided before Hydra writes its
own files into the directory, when the directory is on the command line.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
from datetime import datetime
from pathlib import Path

EXISTING_RUN = ("refuse", "archive", "overwrite")


class RunDirInUse(Exception):
    """Another process is writing this run directory: reported in one line, exit 1."""


def holds_a_run(folder: Path) -> bool:
    """Checkpoints or metrics of a run: what a new run would destroy."""
    return (
        any((folder / "checkpoints").glob("*.pt"))
        or (folder / "metrics.jsonl").is_file()
        or (folder / "metrics.json").is_file()
    )


def describe(folder: Path) -> str:
    """A few words on the run a folder holds: its status and how far it got."""
    try:
        summary = json.loads((folder / "metrics.json").read_text())
        return f"status {summary.get('status')!r}, step {summary.get('global_step', '?')}"
    except (OSError, ValueError, AttributeError):
        return "checkpoints or metrics"


def refusal(folder: Path, key: str) -> str:
    return (
        f"{key}={folder} already holds a run ({describe(folder)}). Starting another there would "
        "overwrite its checkpoints and mix two histories. Continue it with resume=auto (or "
        f"resume={folder}); start fresh in another directory; or give existing_run=archive (the old "
        "run is renamed aside) or existing_run=overwrite (it is deleted)."
    )


def make_room(folder: Path, policy: str) -> str | None:
    """Apply `existing_run` to a folder that holds a run; return what was done, in words."""
    if policy == "archive":
        aside = folder.with_name(f"{folder.name}.archived-{datetime.now():%Y%m%d-%H%M%S-%f}")
        folder.rename(aside)
        return f"the run that was in {folder} is now in {aside}"
    if policy == "overwrite":
        shutil.rmtree(folder)
        return f"the run that was in {folder} was deleted (existing_run=overwrite)"
    return None


def clear_leftovers(folder: Path) -> None:
    """What an attempt that never saved a checkpoint left (its history, summary, TensorBoard
    events): a fresh start replaces them rather than adding a second history after them."""
    for name in ("metrics.jsonl", "metrics.json"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "tensorboard", ignore_errors=True)


class RunLock:
    """One writer per run directory: an OS lock on `.lock`, which dies with its process, so a run
    killed with -9 never leaves its directory locked. A second start is refused, naming the
    process that holds the lock.

    A POSIX record lock (lockf), not flock: loader workers forked by the run would inherit an
    flock and hold the directory until they noticed their parent was gone."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        while True:
            self.file = open(self.path, "a+")
            try:
                fcntl.lockf(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EACCES or EAGAIN: held by another process
                self.file.seek(0)
                holder = self.file.read().strip() or "another process"
                self.file.close()
                raise RunDirInUse(
                    f"{folder} is in use by {holder}: one run at a time writes a run directory. "
                    "Wait for it to end (or stop it), or choose another hydra.run.dir."
                ) from None
            # The previous holder may have removed the file between our open and our lock.
            if self.path.exists() and os.fstat(self.file.fileno()).st_ino == os.stat(self.path).st_ino:
                break
            self.file.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {platform.node()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        self.file.flush()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # before unlocking: a newcomer then locks a new file
        fcntl.lockf(self.file, fcntl.LOCK_UN)
        self.file.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
