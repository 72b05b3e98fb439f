"""Checkpoint format versions, and the steps that bring an older file up to the current one.

`meta.format_version` says which format a file has:
  1  (framework 0.1.0) the layout of DESIGN.md's public interface.
  2  (framework 0.2.0) `meta.origin` says where the state came from: "trained" (written by a run)
     or "imported" (another program's checkpoint, brought in by `python -m framework.ckpt
     migrate`); `meta.exact_resume` says whether a resume from it can continue bit for bit.

A change of format raises FORMAT_VERSION and adds one function below, registered with
`@step(FROM)`, that turns a checkpoint of version FROM into one of FROM + 1. Reading applies the
steps in order, in memory (a run resumes from an older file as it is); `python -m framework.ckpt
migrate SRC DST` writes the result. A file newer than FORMAT_VERSION is refused, never guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import framework
from framework.checkpoint.errors import DamagedCheckpoint, NewerCheckpoint

FORMAT_VERSION = 2
STEPS: dict[int, Callable[[dict], dict]] = {}


def step(from_version: int) -> Callable:
    def register(upgrade: Callable[[dict], dict]) -> Callable[[dict], dict]:
        STEPS[from_version] = upgrade
        return upgrade

    return register


@step(1)
def record_origin(ckpt: dict) -> dict:
    """Every version-1 file was written by a run of this framework: trained, and complete."""
    return {**ckpt, "meta": {**ckpt["meta"], "origin": "trained", "exact_resume": True}}


def version_of(ckpt: dict, path: Path) -> int:
    version = ckpt["meta"].get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DamagedCheckpoint(f"{path} has meta.format_version {version!r}, not a format this framework knows")
    if version > FORMAT_VERSION:
        written_by = ckpt["meta"].get("framework_version")
        by, reader = ("?", "a newer framework")
        if written_by:
            by, reader = f"framework {written_by}", f"framework {written_by} or later"
        raise NewerCheckpoint(
            f"{path} has checkpoint format {version}, written by {by}; this framework ({framework.__version__}) "
            f"reads formats 1 to {FORMAT_VERSION}. Read it with {reader}."
        )
    return version


def upgrade(ckpt: dict, path: Path) -> tuple[dict, list[int]]:
    """The checkpoint in the current format, and the versions it was upgraded from ([] if none).
    Raises NewerCheckpoint for a file newer than this code."""
    version = version_of(ckpt, path)
    passed = []
    while version < FORMAT_VERSION:
        ckpt = STEPS[version](ckpt)
        passed.append(version)
        version += 1
    if passed:
        meta = ckpt["meta"]
        ckpt["meta"] = {**meta, "format_version": version, "upgraded_from": meta.get("upgraded_from", []) + passed}
    return ckpt, passed
