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

With `async_save`, a save point only takes a snapshot of the state (every tensor copied: to
pinned CPU memory from a GPU, so later optimizer steps cannot touch it) and the file is written
by one background thread while training goes on. At most one save is in flight: the next save
point waits for it, and the loop's end, a stop by a signal and retention (done in that thread,
after the file is durable) never see a half-done one. The commit order is the synchronous one:
temporary file, fsync, rename, folder fsync, index.json, other names, retention. A background
write that fails raises its error at the next step boundary (`raise_if_failed`) or wait: the run
stops with it, never with a checkpoint silently missing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import torch
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
        self.background = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if cfg.async_save else None
        # Replaced files are deleted here, while training goes on (io.set_aside); close() waits.
        self.discard = ThreadPoolExecutor(1, thread_name_prefix="discard")
        self.in_flight: Future | None = None
        self.staging: dict = {}  # the last snapshot of each kind of payload, reused by the next

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

        self.wait()  # at most one save in flight
        kinds = (["full"] if full_roles else []) + (["model"] if periodic and cfg.model_only else [])
        if self.background is None:
            return self._commit({kind: make_payload(kind) for kind in kinds}, full_roles, periodic, facts)
        # The previous save is done (waited for above): its snapshot's memory takes this one.
        payloads = {kind: snapshot(make_payload(kind), reuse=self.staging.get(kind)) for kind in kinds}
        self.staging.update(payloads)
        self.in_flight = self.background.submit(self._commit, payloads, full_roles, periodic, facts)
        return [name for _, name in full_roles] + ([periodic] if "model" in kinds else [])

    def _commit(self, payloads: dict, full_roles: list, periodic: str | None, facts: dict) -> list[str]:
        """Write the files of one save point, list them, apply retention: in the loop's thread, or
        in the background one."""
        written = []
        if full_roles:
            payload = payloads["full"]
            (role, name), rest = full_roles[0], full_roles[1:]
            first = self._write(payload, name, role, facts)
            written.append(name)
            for role, other in rest:  # the same bytes under another name: a hard link, not a rewrite
                io.link(self.folder / name, self.folder / other)
                faults.boundary("linked")
                self.index.record({**first, "file": other, "role": role})
                written.append(other)
        if "model" in payloads:
            self._write(payloads["model"], periodic, "periodic", facts)
            written.append(periodic)
        if periodic:
            self._apply_retention()
            faults.boundary("retained")
        log.info("checkpoint at epoch %d step %d: %s", facts["epoch"], facts["step"], ", ".join(written))
        return written

    def wait(self) -> None:
        """Until the save in flight (if any) is durable and listed; its error, if it failed."""
        pending, self.in_flight = self.in_flight, None
        if pending is not None:
            pending.result()

    def raise_if_failed(self) -> None:
        """At a step boundary: a background save that failed stops the run now (a lock-free look
        while it is still writing)."""
        if self.in_flight is not None and self.in_flight.done():
            self.wait()

    def close(self) -> None:
        """Wait for the save in flight and stop the background thread. A run that fails for another
        reason still waits (a half-written temporary file is never left behind by choice)."""
        try:
            self.wait()
        finally:
            if self.background is not None:
                self.background.shutdown()
            self.discard.shutdown()

    def _write(self, payload: dict, name: str, role: str, facts: dict) -> dict:
        entry = {
            "file": name,
            "role": role,
            "kind": payload["meta"]["kind"],
            **facts,
            **io.write(payload, self.folder / name, self.discard),
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


def snapshot(payload: object, reuse: object = None) -> object:
    """A copy of the payload that later training cannot change: every tensor copied (from a GPU
    to pinned CPU memory, all copies started before one wait), containers rebuilt, the rest
    (numbers, strings) immutable already. `reuse`: the previous save's snapshot, whose tensors of
    the same shape are copied into rather than allocated anew (fresh memory costs page faults
    that would more than double the copy's time)."""
    copies = []

    def copy(value: object, old: object) -> object:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            fits = isinstance(old, torch.Tensor) and (old.shape, old.dtype) == (value.shape, value.dtype)
            if not fits:
                on_gpu = value.device.type != "cpu"
                old = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=on_gpu)
            copies.append(old.copy_(value, non_blocking=old.is_pinned()))
            return old
        if isinstance(value, dict):  # an OrderedDict (a state dict) stays one
            old = old if isinstance(old, dict) else {}
            return type(value)((k, copy(v, old.get(k))) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            old = old if isinstance(old, (list, tuple)) and len(old) == len(value) else [None] * len(value)
            return type(value)(copy(v, o) for v, o in zip(value, old))
        return value

    copied = copy(payload, reuse)
    if any(c.is_pinned() for c in copies):
        torch.cuda.synchronize()
    return copied
