"""What to write at each save point, and what retention may delete.

Names follow Lightning's ModelCheckpoint where they overlap: `save_last`, `monitor`, `mode`,
`every_n_epochs`, `every_n_steps`. Files:
    last.pt                newest state, written at every save point (always a full checkpoint)
    best.pt                best value of `monitor` so far (epoch ends only: that is when it is measured)
    epoch_0007.pt          periodic, every_n_epochs (counts completed epochs)
    step_00001200.pt       periodic, every_n_steps (may fall inside an epoch)
Retention (`keep_last_n`) applies to the periodic files only, ordered by step number, never by
file name. It deletes nothing before the new file is written and verified, and never deletes
last.pt, best.pt or the file this run resumed from.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig, OmegaConf

from framework import faults
from framework.checkpoint import io
from framework.checkpoint.index import Index

log = logging.getLogger("framework")


class Checkpointer:
    def __init__(self, cfg: DictConfig, folder: Path, resumed_from: Path | None = None, state_bytes: int = 0):
        """`state_bytes`: about how large a checkpoint will be. The folder and the room for one
        are checked now, before training, not at the first save an epoch later."""
        # Plain values: step_due runs every step, and DictConfig lookups are slow.
        cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))
        self.cfg = cfg
        self.folder = folder
        if cfg.enabled:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                raise io.CheckpointError(f"{folder} is not a folder: checkpoints cannot be written there") from e
            if not os.access(folder, os.W_OK | os.X_OK):
                raise io.CheckpointError(f"{folder} is not writable: checkpoints cannot be written there")
            io.check_room(folder, state_bytes, "for this run's checkpoints")
        self.index = Index(folder) if cfg.enabled else None
        # Half-written temporary files of a run that was killed mid-write: never valid, only in the way.
        for leftover in folder.glob(".*.tmp-*") if cfg.enabled else ():
            leftover.unlink(missing_ok=True)
        # Retention never deletes the checkpoint this run stands on.
        self.protected = {resumed_from.name} if resumed_from is not None and resumed_from.parent == folder else set()

    def step_due(self, global_step: int) -> bool:
        n = self.cfg.every_n_steps
        return bool(self.cfg.enabled and n and global_step % n == 0)

    def improves(self, value: float | None, best: float | None) -> bool:
        if value is None:
            return False
        return best is None or (value < best if self.cfg.mode == "min" else value > best)

    def save(
        self,
        make_payload: Callable[[str], dict],
        *,
        event: str,
        epoch: int,
        step: int,
        position: int,
        metric: float | None,
        improved: bool,
    ) -> list[str]:
        """Write what the policy asks for at this save point; return the file names written.

        event: "epoch" (an epoch just ended), "step" (every_n_steps inside an epoch) or "stop"
        (max_steps ended the run). make_payload(kind) builds the checkpoint ("full" or "model").
        """
        cfg = self.cfg
        if not cfg.enabled:
            return []
        periodic = None
        if event == "epoch" and cfg.every_n_epochs and epoch % cfg.every_n_epochs == 0:
            periodic = f"epoch_{epoch:04d}.pt"
        elif self.step_due(step):
            periodic = f"step_{step:08d}.pt"
        full_roles = []
        if cfg.save_last:
            full_roles.append(("last", "last.pt"))
        if event == "epoch" and improved:
            full_roles.append(("best", "best.pt"))
        if periodic and not cfg.model_only:
            full_roles.append(("periodic", periodic))
        facts = {"epoch": epoch, "step": step, "position": position, "metric": metric}

        written = []
        if full_roles:
            payload = make_payload("full")
            (role, name), rest = full_roles[0], full_roles[1:]
            first = self._write(payload, name, role, facts)
            written.append(name)
            for role, other in rest:  # the same bytes under another name: a hard link, not a rewrite
                io.link(self.folder / name, self.folder / other)
                faults.boundary("linked")
                self.index.record({**first, "file": other, "role": role})
                written.append(other)
        if periodic and cfg.model_only:
            self._write(make_payload("model"), periodic, "periodic", facts)
            written.append(periodic)
        if periodic:
            self._apply_retention()
            faults.boundary("retained")
        log.info("checkpoint at epoch %d step %d: %s", epoch, step, ", ".join(written))
        return written

    def _write(self, payload: dict, name: str, role: str, facts: dict) -> dict:
        entry = {
            "file": name,
            "role": role,
            "kind": payload["meta"]["kind"],
            **facts,
            **io.write(payload, self.folder / name),
            "time": time.time(),
        }
        self.index.record(entry)
        faults.boundary("indexed")
        return entry

    def _apply_retention(self) -> None:
        n = self.cfg.keep_last_n
        if not n:
            return
        # The most recent saves are kept, those the index lists and those a killed run wrote
        # without listing them (else they would pile up past keep_last_n).
        periodic = [f for f in self.index.files() if f.role == "periodic"]
        for old in sorted(periodic, key=lambda f: f.order, reverse=True)[n:]:
            if old.name in self.protected:
                continue
            (self.folder / old.name).unlink(missing_ok=True)
            self.index.remove(old.name)
