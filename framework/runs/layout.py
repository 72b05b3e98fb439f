"""The names of everything in a run directory, in one place.

    RUN_DIR/
        .framework-run      MARKER: written when a run takes the directory ("a run of ours is here")
        .lock               LOCK: held by the one process that writes the run
        .hydra/             HYDRA: Hydra's record of the invocation (config, overrides)
        metrics.json        RECORD: status, settings, resumes, final metrics
        metrics.jsonl       HISTORY: a line per logged step and per epoch
        tensorboard/        TENSORBOARD: event files
        mlflow_run.json     MLFLOW_RUN: the MLflow run this run logs to (logger=mlflow), which a resume continues
        checkpoints/        CHECKPOINTS: the checkpoint store of the run
            index.json      INDEX: every checkpoint with its epoch, step, metric, size, checksums
            last.pt         the alias `last`: the newest state
            best.pt         the alias `best`: the best value of checkpoint.monitor
            epoch_0007.pt   periodic, every_n_epochs (zero-padded: names sort in order)
            step_00001200.pt periodic, every_n_steps
            last/, step_00001200/, ...  the same names without `.pt`: sharded checkpoints
                            (trainer.strategy=fsdp), a directory each (framework/checkpoint/directories.py)

A file is written under a temporary name beside its real one (`temporary`), then renamed: a
name matching TEMPORARIES is never a finished file, and a killed run's ones are removed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MARKER = ".framework-run"
LOCK = ".lock"
HYDRA = ".hydra"
RECORD = "metrics.json"
HISTORY = "metrics.jsonl"
TENSORBOARD = "tensorboard"
MLFLOW_RUN = "mlflow_run.json"
CHECKPOINTS = "checkpoints"
# What a run writes at the top of its directory; `*.log` (Hydra's job log) besides.
RUN_FILES = (MARKER, LOCK, HYDRA, RECORD, HISTORY, CHECKPOINTS, TENSORBOARD, MLFLOW_RUN)

# At a sweep's root, beside its jobs' run directories.
REFUSED = ".refused"  # a record per job of its last multirun that was refused
STOPPED_BY = ".stopped"  # the name of the signal that stopped the sweep
SWEEP_FILES = (
    "multirun.yaml",
    "summary.json",
    "summary.md",
    "val_curves.png",
    "optimization_results.yaml",
    REFUSED,
    STOPPED_BY,
)

INDEX = "index.json"
SUFFIX = ".pt"  # of a checkpoint file
CHECKPOINT_FILES = f"*{SUFFIX}"  # a glob: every checkpoint file of a folder
# The file each alias names; an alias is another name for the same bytes.
ALIASES = {"last": f"last{SUFFIX}", "best": f"best{SUFFIX}"}
LAST, BEST = ALIASES["last"], ALIASES["best"]
PERIODIC = re.compile(rf"(epoch_\d+|step_\d+)({re.escape(SUFFIX)})?")

TEMPORARY_MARK = ".tmp-"
TEMPORARIES = f".*{TEMPORARY_MARK}*"  # a glob: every temporary name of a folder


# `suffix` below: a checkpoint file's (SUFFIX), or "" for a sharded checkpoint's directory.
def alias(role: str, suffix: str = SUFFIX) -> str:
    """The name of the alias `role` ("last" or "best")."""
    return f"{role}{suffix}"


def epoch_file(epoch: int, suffix: str = SUFFIX) -> str:
    """The periodic checkpoint of a completed epoch (every_n_epochs)."""
    return f"epoch_{epoch:04d}{suffix}"


def step_file(step: int, suffix: str = SUFFIX) -> str:
    """The periodic checkpoint of an optimizer step (every_n_steps)."""
    return f"step_{step:08d}{suffix}"


def role_of(name: str) -> str:
    """What a checkpoint's name says it is: "last", "best", "periodic" or "other"."""
    for role in ALIASES:
        if name in (alias(role), alias(role, "")):
            return role
    return "periodic" if PERIODIC.fullmatch(name) else "other"


def temporary(name: str, suffix: str = "", owner: int | None = None) -> str:
    """The name this process writes `name` under before renaming it (`suffix`: a second one).
    `owner`: whose it is, when several processes write into it (rank 0's pid); this process's pid."""
    return f".{name}{TEMPORARY_MARK}{os.getpid() if owner is None else owner}{suffix}"


def is_temporary_of(file: str, name: str) -> bool:
    """Whether `file` is a temporary name of `name` (this process's or another's)."""
    return file.startswith(f".{name}")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory."""

    run_dir: Path

    @property
    def marker(self) -> Path:
        return self.run_dir / MARKER

    @property
    def lock(self) -> Path:
        return self.run_dir / LOCK

    @property
    def hydra(self) -> Path:
        return self.run_dir / HYDRA

    @property
    def record(self) -> Path:
        return self.run_dir / RECORD

    @property
    def history(self) -> Path:
        return self.run_dir / HISTORY

    @property
    def tensorboard(self) -> Path:
        return self.run_dir / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS

    @property
    def last(self) -> Path:
        """The newest checkpoint of the run (its local file)."""
        return self.checkpoints / LAST


def checkpoints_in(folder: Path) -> Path:
    """The checkpoints folder a path names: a run directory's checkpoints/, or the folder itself."""
    return folder / CHECKPOINTS if (folder / CHECKPOINTS).is_dir() else folder
