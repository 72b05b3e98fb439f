"""TrainState: the one place that knows every piece of state a run carries between steps.

A checkpoint is `TrainState.capture()`; resuming is `TrainState.restore()`. Each piece is a
pair of methods, `_capture_<piece>` and `_restore_<piece>`, named in PIECES. Adding stateful
behaviour to the loop means adding its piece here, and tests/test_state.py fails for a piece
that is captured but not restored (it scrambles the live state and checks that restoring
brings back every captured bit).

The checkpoint keeps the plain-PyTorch key names people know (`model_state_dict`,
`optimizer_state_dict`, `rng_state`, ...) and only types that
`torch.load(..., weights_only=True)` reads: tensors, numbers, strings, lists, dicts.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence

import numpy as np
import torch

from framework.checkpoint import sharded
from framework.engine.ema import N_AVERAGED, without_count
from framework.engine.strategy import is_sharded

log = logging.getLogger("framework")

# Restoring happens in this order. The RNG streams come last: they must be set after anything
# else that might draw from them (the loop also restores them only after the resumed epoch's
# data iterator exists).
PIECES = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "ema",
    "counters",
    "early_stopping",
    "callbacks",
    "data_order",
    "data_position",
    "python_rng",
    "numpy_rng",
    "torch_rng",
    "cuda_rng",
)
RNG_PIECES = ("python_rng", "numpy_rng", "torch_rng", "cuda_rng")
RNG_KEYS = ("rng_state", "cuda_rng_state", "numpy_rng_state", "python_rng_state")
# The counters that differ per rank under torchrun: each rank's own losses. A checkpoint keeps
# every rank's (`counters_per_rank`), so that each rank resumes its own running sum.
RANK_COUNTERS = ("loss", "epoch_loss_sum")

# Fault injection for the tests that prove exact resume has teeth: a comma-separated list of
# pieces that `restore` must skip. Never set it outside those tests.
SKIP_ENV = "FRAMEWORK_TEST_SKIP_RESTORE"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel / torch.compile."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def stepped_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors that only the optimizer's step changes: the parameters and the optimizer's
    state. (Not the buffers: a forward pass may change them, batch norm's running statistics.)"""
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return [*model.parameters(), *state]


def strip_prefixes(state_dict: dict) -> dict:
    """Drop `module.` and `_orig_mod.` key prefixes, so wrapped and plain models share files."""
    clean = {}
    for key, value in state_dict.items():
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


class TrainState:
    """The model, optimizer, scheduler and scaler, the loop's counters and data position, and the
    optional pieces: the weights' moving average, early stopping, the user's callbacks."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        ema=None,  # torch.optim.swa_utils.AveragedModel (engine/ema.py), or None: off
        early_stopping=None,  # engine/early_stopping.py's EarlyStopping, or None: off
        callbacks=None,  # engine/callbacks.py's Callbacks, or None: none
    ):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        # Sharded (trainer.strategy=fsdp): the model's and the optimizer's state are each rank's
        # shards, keyed by parameter name (torch.distributed.checkpoint.state_dict), written by
        # every rank into a checkpoint directory.
        self.sharded = is_sharded(model)
        self.ema, self.early_stopping, self.callbacks = ema, early_stopping, callbacks
        self.epoch = 0  # completed epochs
        self.global_step = 0  # optimizer steps taken
        self.data_epoch = 0  # the epoch whose shuffle the train loader uses
        self.position = 0  # batches of that epoch already trained on
        self.epoch_loss_sum = 0.0  # sum of this epoch's step losses so far (for the epoch mean)
        self.last_loss: float | None = None
        self.best_metric: float | None = None

    # ---- the two entry points --------------------------------------------------------------
    def capture(self, every_rank: list[dict] | None = None) -> dict:
        """The checkpoint's state. `every_rank`: under torchrun, each rank's `own_state()` in rank
        order (None: one process, whose streams are every rank's)."""
        out: dict = {}
        for piece in PIECES:
            out.update(getattr(self, f"_capture_{piece}")())
        if every_rank is None:
            out["rng_per_rank"] = [{k: out[k] for k in RNG_KEYS}]
        else:
            out.update(per_rank_entries(every_rank))
        return out

    def own_state(self) -> dict:
        """This process's state that differs per rank: its random streams and its losses."""
        out: dict = {}
        for piece in RNG_PIECES:
            out.update(getattr(self, f"_capture_{piece}")())
        counters = self._capture_counters()
        return {**out, **{k: counters[k] for k in RANK_COUNTERS}}

    def restore(self, ckpt: dict, pieces: Sequence[str] = PIECES, strict: bool = True) -> list[str]:
        """Restore the named pieces from a checkpoint; return notes on what did not fit
        (only with strict=False; strict loading raises instead)."""
        skip = {p for p in os.environ.get(SKIP_ENV, "").split(",") if p}
        notes: list[str] = []
        for piece in pieces:
            if piece not in skip:
                notes += getattr(self, f"_restore_{piece}")(ckpt, strict) or []
        return notes

    # ---- model -------------------------------------------------------------------------------
    def model_weights(self) -> dict:
        """The weights without wrapper prefixes: they load into the plain model anywhere (sharded:
        this rank's shards, as DTensors)."""
        if self.sharded:
            return sharded_state().model_state(self.model)
        return strip_prefixes(unwrap(self.model).state_dict())

    def whole_state(self) -> tuple[dict, dict]:
        """The model's and the optimizer's state dicts, whole (sharded: gathered on rank 0, and
        every rank must call this; the optimizer's keyed by parameter name)."""
        if self.sharded:
            return sharded_state().whole_state(self.model, self.optimizer)
        return self.model.state_dict(), self.optimizer.state_dict()

    def stepped_tensors(self) -> list[torch.Tensor]:
        """For a background save's later copy (sharded: none, DCP's stager copies the shards)."""
        return [] if self.sharded else stepped_tensors(self.model, self.optimizer)

    def _capture_model(self):
        return {"model_state_dict": self.model_weights()}

    def _restore_model(self, ckpt, strict):
        saved, model = ckpt["model_state_dict"], unwrap(self.model)
        if self.sharded or isinstance(saved, sharded.Shards):  # shards into any model, or any weights into shards
            saved = saved if isinstance(saved, sharded.Shards) else strip_prefixes(saved)
            return sharded_state().load_model(model, saved, lambda own, theirs: weight_problems(own, theirs, strict))
        return load_model_weights(model, saved, strict)

    # ---- optimizer, scheduler, scaler --------------------------------------------------------
    def _capture_optimizer(self):
        if self.sharded:
            return {"optimizer_state_dict": sharded_state().optimizer_state(self.model, self.optimizer)}
        return {"optimizer_state_dict": self.optimizer.state_dict()}

    def _restore_optimizer(self, ckpt, strict):
        saved = ckpt["optimizer_state_dict"]
        if self.sharded or isinstance(saved, sharded.Shards):
            sharded_state().load_optimizer(unwrap(self.model), self.optimizer, saved)
            return
        problem = optimizer_mismatch(self.optimizer, saved)
        if problem is None:
            try:
                self.optimizer.load_state_dict(saved)
                return
            except (ValueError, KeyError, RuntimeError) as e:
                problem = str(e)
        if strict:
            raise RuntimeError(f"the checkpoint's optimizer state does not fit: {problem}")
        return [f"optimizer state not loaded ({problem}); the optimizer starts fresh"]

    def _capture_scheduler(self):
        return {"scheduler_state_dict": self.scheduler.state_dict()}

    def _restore_scheduler(self, ckpt, strict):
        self.scheduler.load_state_dict(ckpt["scheduler_state_dict"])

    def _capture_scaler(self):
        return {"scaler_state_dict": self.scaler.state_dict()}

    def _restore_scaler(self, ckpt, strict):
        if ckpt["scaler_state_dict"]:  # a disabled scaler has an empty state
            self.scaler.load_state_dict(ckpt["scaler_state_dict"])

    # ---- the optional pieces: a checkpoint written without one (off, or an older version) has None --
    def average_weights(self) -> dict | None:
        """The moving average's entry: the model's own keys (export loads them into the plain
        model) and the count of updates; None without one."""
        if self.ema is None:
            return None
        weights = strip_prefixes(self.ema.module.state_dict())
        return {**weights, N_AVERAGED: self.ema.n_averaged.detach().clone()}

    def _capture_ema(self):
        return {"ema_state_dict": self.average_weights()}

    def _restore_ema(self, ckpt, strict):
        saved = ckpt.get("ema_state_dict")
        if self.ema is None:
            return
        if saved is None:
            # The average starts at the restored weights (the model is restored before it): the
            # resume check validates it, and the first update after resuming copies them anyway.
            load_model_weights(self.ema.module, self.model_weights(), strict=True)
            self.ema.n_averaged.zero_()
            log.warning("the checkpoint has no moving average of the weights: it starts from the restored weights")
            return
        notes = load_model_weights(self.ema.module, without_count(saved), strict)
        self.ema.n_averaged.copy_(saved[N_AVERAGED])
        return notes

    def _capture_early_stopping(self):
        return {"early_stopping": self.early_stopping.state_dict() if self.early_stopping else None}

    def _restore_early_stopping(self, ckpt, strict):
        saved = ckpt.get("early_stopping")
        if self.early_stopping is not None and saved is not None:
            self.early_stopping.load_state_dict(saved)

    def _capture_callbacks(self):
        if self.callbacks is None:
            return {"callbacks_state": {}}
        # The metrics the callbacks' views show: a resumed run's show the newest validation's too.
        return {"callbacks_state": self.callbacks.state_dict(), "callbacks_metrics": dict(self.callbacks.latest)}

    def _restore_callbacks(self, ckpt, strict):
        if self.callbacks is not None:
            self.callbacks.load_state_dict(ckpt.get("callbacks_state") or {})
            self.callbacks.latest = dict(ckpt.get("callbacks_metrics") or {})

    # ---- the loop's counters and the data position -------------------------------------------
    def _capture_counters(self):
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "loss": self.last_loss,
            "best_metric": self.best_metric,
            "epoch_loss_sum": self.epoch_loss_sum,
        }

    def _restore_counters(self, ckpt, strict):
        self.epoch, self.global_step = ckpt["epoch"], ckpt["global_step"]
        self.last_loss, self.best_metric = ckpt["loss"], ckpt["best_metric"]
        self.epoch_loss_sum = ckpt["epoch_loss_sum"]

    def _capture_data_order(self):
        return {"loader_state": {"epoch": self.data_epoch, "position": self.position}}

    def _restore_data_order(self, ckpt, strict):
        self.data_epoch = ckpt["loader_state"]["epoch"]

    def _capture_data_position(self):
        return {}  # captured with the order, in loader_state

    def _restore_data_position(self, ckpt, strict):
        self.position = ckpt["loader_state"]["position"]

    # ---- random streams ------------------------------------------------------------------------
    def _capture_python_rng(self):
        version, internal, gauss_next = random.getstate()
        return {"python_rng_state": {"version": version, "state": list(internal), "gauss_next": gauss_next}}

    def _restore_python_rng(self, ckpt, strict):
        s = ckpt["python_rng_state"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss_next"]))

    def _capture_numpy_rng(self):
        # np.random.get_state() holds an ndarray: stored as-is it would not load with
        # weights_only=True. Plain values instead.
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "numpy_rng_state": {
                "bit_generator": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            }
        }

    def _restore_numpy_rng(self, ckpt, strict):
        s = ckpt["numpy_rng_state"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["bit_generator"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))

    def _capture_torch_rng(self):
        return {"rng_state": torch.get_rng_state()}

    def _restore_torch_rng(self, ckpt, strict):
        torch.set_rng_state(ckpt["rng_state"])

    def _capture_cuda_rng(self):
        return {"cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def _restore_cuda_rng(self, ckpt, strict):
        states = ckpt["cuda_rng_state"]
        if states and torch.cuda.is_available():
            if len(states) != torch.cuda.device_count():
                have = torch.cuda.device_count()
                note = f"checkpoint has CUDA RNG states for {len(states)} devices, this machine has {have}"
                if strict:
                    raise RuntimeError(note)
                return [note]
            torch.cuda.set_rng_state_all(states)


def sharded_state():
    """framework/engine/sharded_state.py, imported at its first use: torch.distributed.checkpoint
    takes a second to import, which a run that shards nothing should not pay."""
    from framework.engine import sharded_state as module

    return module


def per_rank_entries(every_rank: list[dict]) -> dict:
    """The checkpoint's entries for the state that differs per rank, from each rank's
    `own_state()`: every rank's streams and counters, and under the counters' plain names their
    mean over the ranks (as train/loss is logged), which a reader of one value expects."""
    counters = [{k: own[k] for k in RANK_COUNTERS} for own in every_rank]
    return {
        "rng_per_rank": [{k: own[k] for k in RNG_KEYS} for own in every_rank],
        "counters_per_rank": counters,
        **{k: mean_or_none([c[k] for c in counters]) for k in RANK_COUNTERS},
    }


def mean_or_none(values: list[float | None]) -> float | None:
    return None if None in values else sum(values) / len(values)


def as_rank_restores_it(ckpt: dict, rank: int) -> dict:
    """The checkpoint with `rank`'s own streams and counters under the plain names. A file
    without `counters_per_rank` (written before it existed) keeps its plain counters."""
    counters = ckpt.get("counters_per_rank")
    return {**ckpt, **ckpt["rng_per_rank"][rank], **(counters[rank] if counters else {})}


def optimizer_mismatch(optimizer: torch.optim.Optimizer, saved: dict) -> str | None:
    """Why a saved optimizer state cannot serve these parameters, or None if it can.

    torch checks the number of parameters, not their shapes: a momentum buffer of the wrong
    shape would load and only fail at the next step.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in saved.get("param_groups", []) for i in group["params"]]
    if len(ids) != len(params):
        return f"it holds {len(ids)} parameters, the model has {len(params)}"
    for index, param in zip(ids, params):
        for name, value in saved.get("state", {}).get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                return (
                    f"'{name}' of parameter {index} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
                )
    return None


def weight_problems(own: dict, saved: dict, strict: bool) -> list[str]:
    """Every missing key, unexpected key and shape difference between the model's weights and a
    checkpoint's (each by name: its shape). strict: any of them raises, naming them all."""
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(saved[k])} vs model {tuple(own[k])}"
        for k in set(own) & set(saved)
        if tuple(saved[k]) != tuple(own[k])
    )
    problems = (
        ([f"missing keys: {', '.join(missing)}"] if missing else [])
        + ([f"unexpected keys: {', '.join(unexpected)}"] if unexpected else [])
        + ([f"shape differences: {'; '.join(shapes)}"] if shapes else [])
    )
    if problems and strict:
        raise RuntimeError("the checkpoint's weights do not fit the model: " + " | ".join(problems))
    return problems


def load_model_weights(model: torch.nn.Module, state_dict: dict, strict: bool) -> list[str]:
    """Load weights, listing every missing key, unexpected key and shape difference.

    strict: any difference raises, naming them all. Not strict: load what fits, return notes.
    """
    state_dict = strip_prefixes(state_dict)
    own = model.state_dict()
    problems = weight_problems(
        {k: v.shape for k, v in own.items()}, {k: v.shape for k, v in state_dict.items()}, strict
    )
    fits = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fits, strict=not problems)
    return problems
