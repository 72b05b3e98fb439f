"""The checks Hydra cannot do: missing values and out-of-range choices, in one message."""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from framework.config.errors import ConfigError
from framework.config.schema import DETERMINISM_LEVELS, FINAL_METRICS, MONITORS, PRECISIONS
from framework.engine.preemption import signal_problem
from framework.runs.run_dir import EXISTING_RUN


def check(cfg: DictConfig) -> None:
    """Refuse what composition lets through: missing values and out-of-range choices."""
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
    metric = cfg.get("optimized_metric")
    if metric is not None and metric not in FINAL_METRICS:
        problems.append(f"optimized_metric={metric!r} is not one of {FINAL_METRICS} (or null)")
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
    # The built-in schedulers' counts (StepLR divides by step_size at its first step).
    for key, least in (("step_size", 1), ("T_max", 1), ("total_steps", 1), ("warmup_steps", 0), ("total_iters", 0)):
        value = cfg.scheduler.get(key) if isinstance(cfg.scheduler, DictConfig) else None
        if isinstance(value, int) and value < least:
            problems.append(f"scheduler.{key}={value} must be at least {least}")
    c = cfg.checkpoint
    if c.monitor is not None and c.monitor not in MONITORS:
        problems.append(f"checkpoint.monitor={c.monitor!r} is not one of {MONITORS} (or null)")
    if c.mode not in ("min", "max"):
        problems.append(f"checkpoint.mode={c.mode!r} is not min or max")
    for key in ("every_n_epochs", "every_n_steps", "keep_last_n"):
        if c[key] is not None and c[key] < 1:
            problems.append(f"checkpoint.{key}={c[key]} must be at least 1 (or null)")
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
