"""The checks Hydra cannot do: keys nothing reads, missing values and out-of-range choices."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from framework.checkpoint.remote_folder import url_problem
from framework.config.errors import ConfigError
from framework.config.schema import (
    COMPILE_MODES,
    DETERMINISM_LEVELS,
    PRECISIONS,
    STRATEGIES,
    Config,
    DataConfig,
)
from framework.engine.preemption import signal_problem
from framework.runs.run_dir import EXISTING_RUN


def check(cfg: DictConfig, every_key_read: bool = True) -> None:
    """Refuse what composition lets through: keys nothing reads, missing values and out-of-range
    choices. `every_key_read=False` for a checkpoint's config, which may hold keys that an older
    version read: a run resumed from it must not be refused for them."""
    if every_key_read:
        unread = unread_keys(cfg)
        if unread:
            raise ConfigError("; ".join(f"{key}: no such key; nothing reads it. {known}" for key, known in unread))
    missing = sorted(_missing_keys(cfg))
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(f"missing required value(s): {keys}. Set them on the command line, e.g. {missing[0]}=...")
    t = cfg.trainer
    problems = []
    det = cfg.determinism
    if det.level not in DETERMINISM_LEVELS:
        problems.append(f"determinism.level={det.level!r} is not one of {DETERMINISM_LEVELS}")
    if det.num_threads is not None and det.num_threads < 1:
        problems.append(f"determinism.num_threads={det.num_threads} must be at least 1 (or null: every CPU)")
    if det.level == "strict" and det.num_threads is None:
        problems.append(
            "determinism.num_threads=null: strict pins the number of threads (the bits depend on it); "
            "set a number, e.g. determinism.num_threads=1"
        )
    if str(t.precision) not in PRECISIONS:
        problems.append(f"trainer.precision={t.precision!r} is not one of {PRECISIONS}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device):
        problems.append(f"trainer.device={t.device!r} is not one of auto, cpu, cuda, cuda:N")
    if t.max_epochs < 1:
        problems.append(f"trainer.max_epochs={t.max_epochs} must be at least 1")
    if t.max_steps is not None and t.max_steps < 1:
        problems.append(f"trainer.max_steps={t.max_steps} must be at least 1 (or null for no limit)")
    if t.log_every_n_steps < 1:
        problems.append(f"trainer.log_every_n_steps={t.log_every_n_steps} must be at least 1")
    if cfg.existing_run not in EXISTING_RUN:
        problems.append(f"existing_run={cfg.existing_run!r} is not one of {EXISTING_RUN}")
    if not 0 <= cfg.seed < 2**63:
        problems.append(f"seed={cfg.seed} must be zero or positive and below 2**63")
    if t.gradient_clip_val is not None and t.gradient_clip_val <= 0:
        problems.append(f"trainer.gradient_clip_val={t.gradient_clip_val} must be positive (or null: no clipping)")
    if t.processes < 1:
        problems.append(f"trainer.processes={t.processes} must be at least 1")
    for name in t.stop_signals or []:
        problem = signal_problem(name)
        if problem:
            problems.append(f"trainer.stop_signals: {problem}")
    if t.eval_batch_size < 1:
        problems.append(f"trainer.eval_batch_size={t.eval_batch_size} must be at least 1")
    if t.accumulate_grad_batches < 1:
        problems.append(f"trainer.accumulate_grad_batches={t.accumulate_grad_batches} must be at least 1")
    if not (isinstance(t.compile, bool) or t.compile in COMPILE_MODES):
        problems.append(f"trainer.compile={t.compile!r} is not true, false or one of {COMPILE_MODES}")
    if t.val_every_n_steps is not None and t.val_every_n_steps < 1:
        problems.append(f"trainer.val_every_n_steps={t.val_every_n_steps} must be at least 1 (or null)")
    if t.ema.decay is not None and not 0 < t.ema.decay < 1:
        problems.append(f"trainer.ema.decay={t.ema.decay} must be between 0 and 1 (or null: off)")
    if t.strategy not in STRATEGIES:
        problems.append(f"trainer.strategy={t.strategy!r} is not one of {STRATEGIES}")
    if t.strategy == "fsdp":
        # Not built yet for sharded models: said before anything runs.
        if t.ema.decay is not None:
            problems.append("trainer.ema.decay: the moving average is not available with trainer.strategy=fsdp yet")
        if t.precision == "16-mixed":
            problems.append("trainer.precision=16-mixed: use bf16 with trainer.strategy=fsdp (no sharded loss scaler)")
    e = t.early_stopping
    if e.patience is not None and e.patience < 1:
        problems.append(f"trainer.early_stopping.patience={e.patience} must be at least 1 (or null: off)")
    if e.mode not in ("min", "max", None):
        problems.append(f"trainer.early_stopping.mode={e.mode!r} is not min or max (or null: the metric's direction)")
    if e.min_delta < 0:
        problems.append(f"trainer.early_stopping.min_delta={e.min_delta} must be zero or positive")
    if e.patience is not None and e.monitor is None:
        problems.append("trainer.early_stopping.monitor=null: early stopping needs a metric to watch")
    # The built-in schedulers' counts (StepLR divides by step_size at its first step).
    for key, least in (("step_size", 1), ("T_max", 1), ("total_steps", 1), ("warmup_steps", 0), ("total_iters", 0)):
        value = cfg.scheduler.get(key) if isinstance(cfg.scheduler, DictConfig) else None
        if isinstance(value, int) and value < least:
            problems.append(f"scheduler.{key}={value} must be at least {least}")
    c = cfg.checkpoint
    if c.mode not in ("min", "max", None):
        problems.append(f"checkpoint.mode={c.mode!r} is not min or max (or null: the monitored metric's direction)")
    for key in ("every_n_epochs", "every_n_steps", "keep_last_n"):
        if c[key] is not None and c[key] < 1:
            problems.append(f"checkpoint.{key}={c[key]} must be at least 1 (or null)")
    if c.remote is not None:
        problems.append(url_problem(c.remote))
    if c.upload_wait_s < 0:
        problems.append(f"checkpoint.upload_wait_s={c.upload_wait_s} must be zero or positive")
    if cfg.trainer.stop_grace_s < 0:
        problems.append(f"trainer.stop_grace_s={cfg.trainer.stop_grace_s} must be zero or positive")
    d = cfg.data
    if d.batch_size < 1:
        problems.append(f"data.batch_size={d.batch_size} must be at least 1")
    if d.num_workers < 0:
        problems.append(f"data.num_workers={d.num_workers} must be zero or positive")
    if d.get("on_device") and d.num_workers:
        problems.append(
            "data.on_device=true cuts batches on the device in the training process: it needs "
            f"data.num_workers=0 (got {d.num_workers})"
        )
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
        problems.append(
            f"data.val_fraction={d.val_fraction} and data.test_fraction={d.test_fraction} must be in [0, 1)"
            " and leave some data for training"
        )
    problems = [p for p in problems if p is not None]
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                found.append(full)
            else:
                found += _missing_keys(node._get_node(key), full + ".")
    return found


# Sections that the schema types `Any` (any option fits there) but whose own keys the framework
# reads: a data option's keys are DataConfig's, whatever its source.
READ_AS = {"data": DataConfig}


def unread_keys(cfg: DictConfig) -> list[tuple[str, str]]:
    """The keys that nothing reads, each with the keys its section has: `+trainer.ema_decay=0.9`
    adds a key that Hydra accepts and no code reads. A section with a `_target_` takes its
    target's arguments (checked in target_arguments.check_arguments); a section the schema does
    not describe is anyone's; a key that an interpolation names is read through it."""
    referenced = _referenced_keys(cfg)
    found = []
    for key, names in _unread_in(cfg, Config, ""):
        if not any(key == r or r.startswith(key + ".") or key.startswith(r + ".") for r in referenced):
            section = key.rpartition(".")[0] or "the config"
            found.append((key, f"The keys of {section}: {', '.join(names)}"))
    return found


def _unread_in(node: DictConfig, spec: type, prefix: str) -> list[tuple[str, list[str]]]:
    if "_target_" in node:
        return []
    hints = typing.get_type_hints(spec)
    names = [f.name for f in dataclasses.fields(spec)]
    found = []
    for key in node.keys():
        full = f"{prefix}{key}"
        if full == "hydra":  # Hydra's own settings, where a config is composed with them
            continue
        if key not in hints:
            found.append((full, names))
            continue
        inner, child = READ_AS.get(full, hints[key]), node._get_node(key)
        if dataclasses.is_dataclass(inner) and _is_section(child):
            found += _unread_in(child, inner, full + ".")
    return found


# `${a.b}`, `${.b}` and the ones nested in a resolver's arguments (`${oc.env:X,${a.b}}`).
REFERENCE = re.compile(r"\$\{\s*(\.*[\w\-]+(?:\.[\w\-]+)*)\s*\}")


def _referenced_keys(node: DictConfig | ListConfig, prefix: str = "") -> set[str]:
    """The absolute keys that the interpolations under `node` (at `prefix`) name."""
    found = set()
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        child = node._get_node(key)
        if child._is_interpolation():
            found |= {_absolute(ref, prefix) for ref in REFERENCE.findall(str(child._value()))}
        elif _is_section(child) or (isinstance(child, ListConfig) and not (child._is_none() or child._is_missing())):
            found |= _referenced_keys(child, f"{prefix}{key}.")
    return found


def _is_section(node: Any) -> bool:
    return isinstance(node, DictConfig) and not (node._is_none() or node._is_missing())


def _absolute(ref: str, prefix: str) -> str:
    """`ref` as an absolute key, where `prefix` is the section (with its dot) that names it."""
    dots = len(ref) - len(ref.lstrip("."))
    if not dots:
        return ref
    parts = prefix.rstrip(".").split(".") if prefix else []
    parts = parts[: len(parts) - (dots - 1)] if dots > 1 else parts
    return ".".join([*parts, ref.lstrip(".")])
