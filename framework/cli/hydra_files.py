"""What Hydra writes into a run directory before our code runs, held back until the run takes
the directory.

Hydra writes its record of an invocation (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`)
and opens its job log (`train.log`) before it calls the task. In a directory that holds another
run (a refused job of a sweep, a resume whose config does not match, a second process while the
first is live) those writes would replace the record of the run that is there, or add to its log.
So the entry point gives Hydra a folder of this invocation's own to write its record into
(`.hydra/incoming-*`), and the job log's lines wait in memory. When the run takes the directory
(it writes its record for the first time) they join it: the files under `.hydra/` for a fresh
run, under `.hydra/resume-<time>/` for a resume (the run's original record stays), the lines in
train.log. An invocation that never takes the directory removes its own folder and writes no
line there, unless the directory held no run before it (a job that failed in a new directory
keeps Hydra's record, as a sweep's summary needs it).
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime
from pathlib import Path

from framework.runs.layout import HYDRA, MARKER, RunLayout
from framework.runs.run_dir import holds_a_run

INCOMING = f"{HYDRA}/incoming-"


def incoming_subdir() -> str:
    """`hydra.output_subdir` for this invocation: its own (the process), and each job's own in a
    sweep (the jobs of a parallel launcher may share a directory)."""
    return f"{INCOMING}{os.getpid()}-${{oc.select:hydra.job.num,0}}"


class Waiting(logging.Handler):
    """Keeps the records that wait for the run to take its directory."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class HeldBack:
    """Hydra's record and job log of this invocation, until it is known whose directory it is."""

    def __init__(self, run_dir: Path, output_subdir: str | None):
        self.run_dir = run_dir
        held = output_subdir is not None and str(output_subdir).startswith(INCOMING)
        self.incoming = run_dir / str(output_subdir) if held else None
        self.hydra_dir = RunLayout(run_dir).hydra
        # Whether a run was here before this invocation: then it may not leave anything behind.
        self.was_new = not holds_a_run(run_dir) and not (self.hydra_dir / "config.yaml").is_file()
        inside = os.path.abspath(run_dir) + os.sep  # as logging.FileHandler names its file
        self.log_files = [
            h for h in logging.root.handlers if isinstance(h, logging.FileHandler) and h.baseFilename.startswith(inside)
        ]
        self.waiting = Waiting()
        if self.log_files:
            for handler in self.log_files:
                logging.root.removeHandler(handler)
            logging.root.addHandler(self.waiting)
        self.settled = False
        self.dropped = False

    def keep(self, resumed: bool) -> None:
        """The run takes the directory: Hydra's record and the waiting lines join it."""
        if self.settled:
            return
        self.settled = True
        if self.incoming is not None and self.incoming.is_dir():
            if resumed and (self.hydra_dir / "config.yaml").is_file():
                self.incoming.rename(self.hydra_dir / f"resume-{datetime.now():%Y%m%d-%H%M%S-%f}")
            else:
                for file in self.incoming.iterdir():
                    os.replace(file, self.hydra_dir / file.name)
                self.incoming.rmdir()
        logging.root.removeHandler(self.waiting)
        for handler in self.log_files:
            logging.root.addHandler(handler)
            for record in self.waiting.records:
                if record.levelno >= handler.level:
                    handler.handle(record)

    def drop(self) -> None:
        """The directory is another run's (or nobody's): take away what this invocation wrote."""
        if self.settled:
            return
        self.settled = self.dropped = True
        logging.root.removeHandler(self.waiting)
        for handler in self.log_files:
            handler.close()  # not put back: this job writes nothing more there
        if self.incoming is not None:
            shutil.rmtree(self.incoming, ignore_errors=True)
        if self.was_new and not (self.run_dir / MARKER).exists():
            # Nothing of a run is here: what Hydra made for this job (an empty log, folders) goes too.
            for handler in self.log_files:
                log_file = Path(handler.baseFilename)
                if log_file.is_file() and log_file.stat().st_size == 0:
                    log_file.unlink()
            for folder in (self.hydra_dir, self.run_dir):
                try:
                    folder.rmdir()
                except OSError:
                    pass  # not empty: something else is there

    def settle(self) -> None:
        """The invocation ends without the run having taken the directory: keep Hydra's record
        where no run was before (a failed job must show in its sweep), else drop it."""
        if self.was_new:
            self.keep(resumed=False)
        else:
            self.drop()
