"""What to write at each save point, and what retention may delete: the policy. Where and how the
files are written, listed, read and deleted is the store's (framework/checkpoint/storage.py).

Names follow Lightning's ModelCheckpoint where they overlap: `save_last`, `monitor`, `mode`,
`every_n_epochs`, `every_n_steps`. Files:
    last.pt                newest state, written at every save point (always a full checkpoint)
    best.pt                best value of `monitor` so far (at epoch ends, and at trainer.val_every_n_steps)
    epoch_0007.pt          periodic, every_n_epochs (counts completed epochs)
    step_00001200.pt       periodic, every_n_steps (may fall inside an epoch)
Retention (`keep_last_n`) applies to the periodic files only, ordered by step number, never by
file name. It deletes nothing before the new file is written and verified, and never deletes
last.pt, best.pt or the file this run resumed from.

With `async_save`, a save point only takes a snapshot of the state (every tensor copied: to
pinned CPU memory from a GPU, so later optimizer steps cannot touch it) and the file is written
by one background thread while training goes on. The tensors that only the optimizer's step
changes (`copy_later`: the parameters and the optimizer's state, most of the bytes) are copied
by that thread too, first, while the loop runs the next forward and backward pass; the loop
calls `wait_for_snapshot()` before its next optimizer step, so the copy is of the save point's
state (as torch.distributed.checkpoint's asynchronous staging asks of its callers). Everything
else (buffers such as batch norm's running statistics, which a forward pass changes) is copied
at the save point. A tensor of `copy_later` that changes anyway before its copy is done (a model
that edits its weights in forward) is caught by its version counter and stops the run: that
snapshot would mix two states.
At most one save is in flight: the next save point waits for it, and the loop's end, a stop by
a signal and retention (done in that thread, after the file is durable) never see a half-done
one. The commit order is the synchronous one: temporary file, fsync, rename, folder fsync,
index.json, other names, retention. A background write that fails raises its error at the next
step boundary (`raise_if_failed`) or wait: the run stops with it, never with a checkpoint
silently missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from framework import distributed, faults
from framework.checkpoint import io
from framework.checkpoint.storage import CheckpointStore, LocalFiles
from framework.runs import layout

log = logging.getLogger("framework")


class Checkpointer:
    def __init__(
        self,
        cfg: DictConfig,
        store: CheckpointStore | Path,
        resumed_from: Path | None = None,
        state_bytes: int = 0,
    ):
        """`store`: where the checkpoints go (a folder: its LocalFiles). `state_bytes`: about how
        large a checkpoint will be. The store and the room for one are checked now, before
        training, not at the first save an epoch later."""
        # Plain values: step_due runs every step, and DictConfig lookups are slow.
        cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))
        self.cfg = cfg
        self.store = store if isinstance(store, CheckpointStore) else LocalFiles(store)
        # Retention never deletes the checkpoint this run stands on.
        protected = self.store.name_of(resumed_from) if resumed_from is not None else None
        self.protected = {protected} if protected is not None else set()
        if cfg.enabled:
            self.store.prepare(state_bytes)
        self.background = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if cfg.async_save else None
        if self.background is not None and cfg.enabled:
            self.store.saving_in_background()
        self.in_flight: Future | None = None
        self.copying: Future | None = None  # the in-flight save's copy of `copy_later`
        self.staging: dict = {}  # the last snapshot of each kind of payload, reused by the next
        self.copy_stream = None  # a CUDA stream for the background copy, made at the first one

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
        copy_later: Iterable[torch.Tensor] = (),
    ) -> list[str]:
        """Write what the policy asks for at this save point; return the names written (on the
        ranks that write: the store says which, and every rank returns once they are done).

        event: "epoch" (an epoch just ended), "step" (every_n_steps inside an epoch) or "stop"
        (max_steps ended the run). make_payload(kind) builds the checkpoint ("full" or "model").
        copy_later: tensors that only the optimizer's step changes; with async_save they may
        still be being copied when this returns, and the caller must call wait_for_snapshot()
        before its next optimizer step.
        """
        written = self.store.collectively(
            lambda: self._save_point(make_payload, event, epoch, step, position, metric, improved, copy_later)
        )
        return written or []

    def _save_point(
        self,
        make_payload: Callable[[str], dict],
        event: str,
        epoch: int,
        step: int,
        position: int,
        metric: float | None,
        improved: bool,
        copy_later: Iterable[torch.Tensor],
    ) -> list[str]:
        cfg = self.cfg
        if not cfg.enabled:
            return []
        periodic, suffix = None, self.store.suffix
        if event == "epoch" and cfg.every_n_epochs and epoch % cfg.every_n_epochs == 0:
            periodic = layout.epoch_file(epoch, suffix)
        elif self.step_due(step):
            periodic = layout.step_file(step, suffix)
        full_roles = []
        if cfg.save_last:
            full_roles.append(("last", layout.alias("last", suffix)))
        if improved:
            full_roles.append(("best", layout.alias("best", suffix)))
        if periodic and not cfg.model_only:
            full_roles.append(("periodic", periodic))
        facts = {"epoch": epoch, "step": step, "position": position, "metric": metric}

        self.wait()  # at most one save in flight
        kinds = (["full"] if full_roles else []) + (["model"] if periodic and cfg.model_only else [])
        if self.background is None:
            return self._commit({kind: make_payload(kind) for kind in kinds}, full_roles, periodic, facts)
        # The previous save is done (waited for above): its snapshot's memory takes this one.
        later = {t.data_ptr() for t in copy_later}
        payloads, pending = {}, []
        for kind in kinds:
            payload = make_payload(kind)
            own = self.store.own_copy(payload)  # a sharded store's shards, copied by DCP's stager
            rest = {key: value for key, value in payload.items() if key not in own}
            copied, copies = snapshot(rest, reuse=self.staging.get(kind), later=later)
            payloads[kind] = {**copied, **own}
            pending += copies
        self.staging.update(payloads)
        ready = None  # on a GPU: the point in the loop's stream where the state is the save point's
        if any(c.source.is_cuda for c in pending):
            ready = torch.cuda.Event()
            ready.record()
            if self.copy_stream is None:
                self.copy_stream = torch.cuda.Stream()
        self.copying = Future()
        self.in_flight = self.background.submit(
            self._copy_then_commit, pending, ready, self.copying, payloads, full_roles, periodic, facts
        )
        return [name for _, name in full_roles] + ([periodic] if "model" in kinds else [])

    def _copy_then_commit(self, pending: list, ready, copying: Future, *commit_args) -> list[str]:
        """In the background thread: finish the snapshot (the loop waits for `copying` before its
        next optimizer step), then write."""
        try:
            copy_pending(pending, ready, self.copy_stream)
        except BaseException as e:
            copying.set_exception(e)
            raise
        copying.set_result(None)
        return self._commit(*commit_args)

    def _commit(self, payloads: dict, full_roles: list, periodic: str | None, facts: dict) -> list[str]:
        """Write the files of one save point, list them, apply retention: in the loop's thread, or
        in the background one."""
        written = []
        if full_roles:
            payload = payloads["full"]
            (role, name), rest = full_roles[0], full_roles[1:]
            self._write(payload, name, role, facts)
            written.append(name)
            for role, other in rest:  # the same bytes under another name, not a rewrite
                self.store.alias(other, name, role)
                written.append(other)
        if "model" in payloads:
            self._write(payloads["model"], periodic, "periodic", facts)
            written.append(periodic)
        if periodic:
            self._apply_retention()
            faults.boundary("retained")
        if distributed.is_main():  # a sharded store's saves run on every rank
            log.info("checkpoint at epoch %d step %d: %s", facts["epoch"], facts["step"], ", ".join(written))
        return written

    def wait_for_snapshot(self) -> None:
        """Before an optimizer step: until the save in flight has its copy of the state the step
        changes (at once when there is none, or it is done); its error, if the copy failed."""
        copying, self.copying = self.copying, None
        if copying is None:
            return
        try:
            copying.result()
        except BaseException:
            self.in_flight = None  # said here; the write it ended is not waited for again
            raise

    def wait(self) -> None:
        """Until the save in flight (if any) is durable and listed; its error, if it failed."""
        pending, self.in_flight, self.copying = self.in_flight, None, None
        if pending is not None:
            pending.result()

    def raise_if_failed(self) -> None:
        """At a step boundary: a background save that failed stops the run now (a lock-free look
        while it is still writing)."""
        if self.in_flight is not None and self.in_flight.done():
            self.wait()

    def finish(self, wait_s: float, grace_left: Callable[[], float | None]) -> dict | None:
        """At the run's end: the save in flight done, then the store's own work (a remote copy's
        uploads) for at most `wait_s` seconds, or what `grace_left()` says is left of a stop
        signal's grace; what the store says of it, for the run's record."""
        self.wait()
        return self.store.finish(wait_s, grace_left) if self.cfg.enabled else None

    def close(self) -> None:
        """Wait for the save in flight and stop the background thread, then the store's. A run
        that fails for another reason still waits (a half-written temporary file is never left
        behind by choice)."""
        try:
            self.wait()
        finally:
            if self.background is not None:
                self.background.shutdown()
            self.store.close()

    def _write(self, payload: dict, name: str, role: str, facts: dict) -> dict:
        return self.store.write(name, payload, {"role": role, "kind": payload["meta"]["kind"], **facts})

    def _apply_retention(self) -> None:
        n = self.cfg.keep_last_n
        if not n or not distributed.is_main():  # rank 0 deletes (a sharded store's saves run on every rank)
            return
        # The most recent saves are kept, those the index lists and those a killed run wrote
        # without listing them (else they would pile up past keep_last_n).
        periodic = [f for f in self.store.list() if f.role == "periodic"]
        for old in sorted(periodic, key=lambda f: f.order, reverse=True)[n:]:
            if old.name not in self.protected:
                self.store.delete(old.name)


class PendingCopy(NamedTuple):
    """A tensor of the snapshot that the background thread copies (`copy_later`)."""

    key: str  # where it is in the payload, for the error that names it
    destination: torch.Tensor
    source: torch.Tensor
    version: int  # the source's version counter at the save point


def snapshot(payload: object, reuse: object = None, later: set[int] = frozenset()) -> tuple[object, list]:
    """A copy of the payload that later training cannot change: every tensor copied (from a GPU
    to pinned CPU memory, all copies started before one wait), containers rebuilt, the rest
    (numbers, strings) immutable already. `reuse`: the previous save's snapshot, whose tensors of
    the same shape are copied into rather than allocated anew (fresh memory costs page faults
    that would more than double the copy's time). Tensors whose data_ptr is in `later` get
    their memory but are not copied yet: returned as PendingCopy's for copy_pending."""
    copies, pending = [], []

    def copy(value: object, old: object, key: str) -> object:
        if isinstance(value, torch.Tensor):
            value = value.detach()  # shares the version counter
            fits = isinstance(old, torch.Tensor) and (old.shape, old.dtype) == (value.shape, value.dtype)
            if not fits:
                on_gpu = value.device.type != "cpu"
                old = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=on_gpu)
            if value.data_ptr() in later and value.numel():
                pending.append(PendingCopy(key, old, value, value._version))
            else:
                copies.append(old.copy_(value, non_blocking=old.is_pinned()))
            return old
        if isinstance(value, dict):  # an OrderedDict (a state dict) stays one
            old = old if isinstance(old, dict) else {}
            return type(value)((k, copy(v, old.get(k), f"{key}.{k}" if key else str(k))) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            old = old if isinstance(old, (list, tuple)) and len(old) == len(value) else [None] * len(value)
            return type(value)(copy(v, o, f"{key}[{i}]") for i, (v, o) in enumerate(zip(value, old)))
        return value

    copied = copy(payload, reuse, "")
    if any(c.is_pinned() for c in copies):
        torch.cuda.synchronize()
    return copied, pending


def copy_pending(pending: list[PendingCopy], ready, stream) -> None:
    """The copies `snapshot` left for later, in the background thread, while the loop runs the
    next forward and backward pass (which read these tensors, never write them). From a GPU: on
    a stream of their own that first waits for `ready`, the save point in the loop's stream.
    Then every source must still be at its save-point version: one that was changed before its
    copy was done (in place, by the model's forward) would make a snapshot of two states."""
    if ready is None:
        for c in pending:
            c.destination.copy_(c.source)
    else:
        with torch.cuda.device(stream.device), torch.cuda.stream(stream):  # this thread's device is 0 by default
            stream.wait_event(ready)
            for c in pending:
                c.destination.copy_(c.source, non_blocking=True)
            stream.synchronize()
    changed = [c.key for c in pending if c.source._version != c.version]
    if changed:
        named = changed[0] if len(changed) == 1 else f"{changed[0]} (and {len(changed) - 1} more)"
        raise io.CheckpointError(
            f"checkpoint.async_save: {named} changed before the background save had copied it; only "
            "the optimizer's step may change the parameters and the optimizer's state, and this model "
            "changes them elsewhere (in forward?): give checkpoint.async_save=false"
        )
