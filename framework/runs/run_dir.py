"""The run directory: whether it already holds a run, what to do with one that does, and the
lock that gives it one writer.

A new run started in a directory that holds another (`hydra.run.dir=D` without `resume`) would
overwrite its checkpoints, add a second history to its metrics and leave its later files to
hijack a `resume=auto`. It is refused, unless `existing_run` says to archive the old run
(rename the directory aside) or to overwrite it (delete it). Decided before Hydra writes its
own files into the directory, when the directory is on the command line.

Archiving and deleting act only on a directory that is unmistakably a run of ours: it carries
the marker a run writes when it takes the directory, and nothing in it but what runs and sweeps
write (RUN_FILES, SWEEP_FILES in framework/runs/layout.py). Never on the current directory, a
parent of it, the home folder or a file system's root, never through a symbolic link, and never
while a live process holds the run's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import framework
from framework.atomic import write_json_atomic
from framework.checkpoint import storage
from framework.checkpoint.remote_folder import is_url
from framework.runs import layout

EXISTING_RUN = ("refuse", "archive", "overwrite")
RUN_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


class RunDirRefused(Exception):
    """The directory is another run's: this invocation leaves it as it is (one line, exit 1)."""


class RunDirInUse(RunDirRefused):
    """Another process is writing this run directory."""


def url_as_run_dir(key: str, value: object) -> str | None:
    """Why `value` cannot be the run (or sweep) directory `key`: it is a URL, which would become a
    local folder named `s3:/bucket/...` (pathlib folds the `//`). None for a path."""
    if not is_url(value):
        return None
    return (
        f"{key}={value}: a run directory is a local folder, not a URL. Keep the checkpoints there with "
        f"checkpoint.remote={value} and a local {key} (node-local scratch will do)"
    )


def holds_a_run(folder: Path) -> bool:
    """Checkpoints or metrics of a run: what a new run would destroy."""
    run = layout.RunLayout(folder)
    return not storage.for_run(None, folder).empty() or run.history.is_file() or run.record.is_file()


def mark_as_run(folder: Path) -> None:
    """Say that a run of ours has taken `folder` (once: the first run there wrote it)."""
    if (folder / layout.MARKER).is_file():
        return
    try:
        write_json_atomic(
            folder / layout.MARKER,
            {"framework": framework.__version__, "since": f"{datetime.now():%Y-%m-%d %H:%M:%S}"},
        )
    except OSError:
        pass  # a full disk must not fail the run for its marker: without it, existing_run only refuses


def describe(folder: Path) -> str:
    """A few words on the run a folder holds: its status and how far it got."""
    try:
        summary = json.loads(layout.RunLayout(folder).record.read_text())
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


def make_room(folder: Path, policy: str, key: str = "hydra.run.dir") -> str:
    """Apply `existing_run` (archive or overwrite) to a folder that holds a run or a sweep's runs;
    return what was done, in words. Raises RunDirRefused, touching nothing, where it may not act."""
    why_not = untouchable(folder) or not_ours(folder)
    if why_not:
        raise RunDirRefused(f"existing_run={policy} leaves {key}={folder} as it is: {why_not}")
    with hold_every_run(folder):
        if policy == "archive":
            aside = folder.with_name(f"{folder.name}.archived-{datetime.now():%Y%m%d-%H%M%S-%f}")
            folder.rename(aside)
            for lock in [aside / layout.LOCK, *aside.glob(f"*/{layout.LOCK}")]:
                lock.unlink(missing_ok=True)  # the archive is nobody's: the lock held here is not its file
            return f"the run that was in {folder} is now in {aside}"
        shutil.rmtree(folder)
        return f"the run that was in {folder} was deleted (existing_run=overwrite)"


def untouchable(folder: Path) -> str | None:
    """Why no `existing_run` may archive or delete `folder` whatever it holds, or None."""
    if folder.is_symlink():
        return f"it is a symbolic link (to {os.readlink(folder)}); give the directory itself"
    real, here = folder.resolve(), Path.cwd().resolve()
    if real == here or real in here.parents:
        return "it is the current directory or one above it"
    if real == Path.home().resolve() or os.path.ismount(real):
        return "it is the home folder or the root of a file system"
    return None


def not_ours(folder: Path) -> str | None:
    """Why `folder` is not unmistakably a run (or a sweep of runs) of ours, or None."""
    if (folder / layout.MARKER).is_file():
        others = [p.name for p in folder.iterdir() if not is_run_file(p.name)]
    else:
        runs = [p for p in folder.iterdir() if p.is_dir() and (p / layout.MARKER).is_file()]
        if not runs:
            return (
                f"it has no {layout.MARKER} file, which every run of this framework writes (a run made by an older "
                "version has none, and a folder of your own never has one); move or delete it yourself"
            )
        others = [p.name for p in folder.iterdir() if p not in runs and not is_sweep_file(p.name)]
        others += [f"{run.name}/{name}" for run in runs for name in os.listdir(run) if not is_run_file(name)]
    if others:
        return f"it holds what no run writes ({', '.join(sorted(others)[:3])}): move that out first"
    return None


@contextlib.contextmanager
def hold_every_run(folder: Path) -> Iterator[None]:
    """Hold the lock of the run in `folder`, or of every run in a sweep's `folder`: refused, naming
    the process, when a live one holds any of them."""

    def is_run(path: Path) -> bool:
        return (path / layout.MARKER).is_file() or holds_a_run(path)

    runs = [folder] if is_run(folder) else [p for p in folder.iterdir() if p.is_dir() and is_run(p)]
    with contextlib.ExitStack() as held:
        for run in runs:
            held.enter_context(RunLock(run))
        yield


def refuse_unless_dead(folder: Path) -> None:
    """Refused, naming the process, when a live one holds the run in `folder` (or one of a sweep's)."""
    with hold_every_run(folder):
        pass


def is_run_file(name: str) -> bool:
    return name in layout.RUN_FILES or name.endswith(".log") or layout.is_temporary_of(name, layout.RECORD)


def is_sweep_file(name: str) -> bool:
    return name in layout.SWEEP_FILES or name.startswith((".summary.", ".val_curves."))


def clear_leftovers(folder: Path) -> None:
    """What an attempt that never saved a checkpoint left (its history, summary, TensorBoard
    events): a fresh start replaces them rather than adding a second history after them."""
    run = layout.RunLayout(folder)
    for path in (run.history, run.record):
        path.unlink(missing_ok=True)
    shutil.rmtree(run.tensorboard, ignore_errors=True)


class RunLock:
    """One writer per run directory: an OS lock on `.lock`, which dies with its process, so a run
    killed with -9 never leaves its directory locked. A second start is refused, naming the
    process that holds the lock.

    A POSIX record lock (lockf), not flock: loader workers forked by the run would inherit an
    flock and hold the directory until they noticed their parent was gone."""

    def __init__(self, folder: Path):
        self.path = folder / layout.LOCK
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
