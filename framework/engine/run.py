"""The run: resolve the config, set up ranks and determinism, open the run record, build, maybe
restore, fit, test, finish. `run_locked` tells the whole story in a dozen lines; the steps are
`Training`'s methods (engine/training.py), the record is `RunRecord` (runs/record.py)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

import framework
from framework import distributed
from framework.config.checks import check
from framework.config.errors import ConfigError
from framework.config.target_arguments import check_arguments
from framework.engine.build import build_task
from framework.engine.callbacks import check_callbacks
from framework.engine.early_stopping import stopped_early
from framework.engine.preemption import StopOnSignal
from framework.engine.training import Training, check_metric_names
from framework.runs import resume as resume_lib
from framework.runs.record import RunRecord
from framework.runs.reproducibility import apply_determinism, gpu_note, pick_num_threads, seed_everything
from framework.runs.run_dir import RunDirRefused, RunLock, clear_leftovers, holds_a_run, refusal
from framework.tracking.metrics_logger import chosen_sinks

log = logging.getLogger("framework")


# How torch words the error of an operation that has no deterministic implementation.
NONDETERMINISTIC = "does not have a deterministic implementation"


def run(
    cfg: DictConfig,
    run_dir: Path,
    given: list[str] | None = None,
    on_accept: Callable[[bool], None] | None = None,
) -> dict:
    """Train as `cfg` says, writing everything into `run_dir`; return the final summary.

    `given`: the config keys the command line set (see framework/config/overrides.py). On resume only
    these may differ from the checkpoint's config; None compares every key.
    `on_accept(resumed)`: called once, when this run takes the directory (before it first
    changes anything there), or when it finds it finished already; never for a refused start.
    """
    check(cfg)  # before a handler is installed or a file written
    run_dir.mkdir(parents=True, exist_ok=True)
    # How this invocation takes signals (not part of the experiment: the command line's config).
    preemption = StopOnSignal(cfg.trainer.stop_signals)
    try:
        # One writer per run directory: under torchrun, rank 0 writes for all.
        with RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext():
            summary = run_locked(cfg, run_dir, given, preemption, on_accept)
    finally:
        preemption.close()
    # Recorded, closed and unlocked: now the handler this one replaced may requeue the job (submitit).
    preemption.hand_over()
    return summary


def run_locked(
    cfg: DictConfig,
    run_dir: Path,
    given: list[str] | None,
    preemption: StopOnSignal,
    on_accept: Callable[[bool], None] | None = None,
) -> dict:
    """The whole run: resolve the config, set up, build, maybe restore, fit, test, record."""
    record = RunRecord(run_dir, on_accept)
    cfg, resume_point, changes, follows_original = resolve_config(cfg, run_dir, given)
    if resume_point is not None and nothing_left(resume_point.ckpt, cfg):
        if record.previous.get("status") == "completed":
            record.accept(resumed=True)
            say_nothing_left(resume_point.ckpt, cfg)
            return record.previous
    device = pick_device(cfg.trainer.device)
    determinism = determinism_in_force(cfg, resume_point, device)
    seed_everything(cfg.seed)  # before anything is built: the initial weights come from the torch RNG
    log.info("framework %s; seed %d, determinism %s", framework.__version__, cfg.seed, determinism)
    record.start(cfg, determinism, device, follows_original, resumed=resume_point is not None, given=given)

    training = None
    try:
        training = Training(cfg, run_dir, device, record.summary, changes, resume_point)
        # Nothing in the run directory changes before a resumed state is restored: a failed
        # resume leaves the run it failed to resume as it was. The record and history come after.
        if resume_point is not None:
            record.add_resume(training.restore(resume_point))
        record.write()
        training.open_history(resume_point)
        stopped_by = training.fit(preemption)
        if stopped_by == "signal":
            training.finish_saves(preemption)
            return record.stopped(preemption.received, training, cfg.checkpoint.enabled)
        test = training.test()
        training.finish_saves(preemption)
        return record.completed(stopped_by, training, test, cfg)
    except BaseException as e:
        # A resume that failed before its state was restored changes nothing in the run.
        record.failed(e, write=(training is not None and training.logger is not None) or resume_point is None)
        if isinstance(e, RuntimeError) and NONDETERMINISTIC in str(e):
            op = str(e).split(NONDETERMINISTIC)[0].strip()
            raise ConfigError(
                f"determinism={cfg.determinism.level}: {op} has no deterministic implementation "
                f"on this device, so the run stopped. Relax the level with determinism=seeded "
                "(same seeds; this operation may then vary from run to run)."
            ) from e
        raise
    finally:
        if training is not None:
            training.close(record.summary.get("status", "failed"))


def resolve_config(
    cfg: DictConfig, run_dir: Path, given: list[str] | None
) -> tuple[DictConfig, resume_lib.ResumePoint | None, list[str], bool]:
    """The config this run uses, the checkpoint it continues from (None: a fresh start), the keys
    the command line changed, and whether the run still follows its original trajectory.
    Resuming, the checkpoint's config is the source of truth (see framework/runs/resume.py)."""
    resume_point = None
    if distributed.is_main():
        resume_point = resume_lib.find(cfg.resume, run_dir, cfg)
        if resume_point is None and holds_a_run(run_dir):
            if cfg.resume is None:  # a run directory from a config file; the command line's is checked earlier
                raise RunDirRefused(refusal(run_dir, "hydra.run.dir"))
            # resume=auto found no checkpoint: an attempt that never saved one is replaced, not continued.
            clear_leftovers(run_dir)
    # Rank 0 picks the file; the others load that one, so no two ranks resume from different files.
    chosen = distributed.from_main(str(resume_point.path) if resume_point else None)
    if chosen is not None and resume_point is None:
        resume_point = resume_lib.find(chosen, run_dir, cfg)
    changes, follows_original = [], True
    if resume_point is not None:
        cfg, changes, follows_original = resume_lib.reconcile(cfg, resume_point.ckpt, given)
        check(cfg, every_key_read=False)  # an older version may have read keys this one does not
        if not same_world_size(resume_point, cfg.allow_config_changes):
            follows_original = False
        if not resume_point.ckpt["meta"].get("exact_resume", True):
            follows_original = False
            say_not_exact(resume_point)
        if noise_drawn_otherwise(resume_point.ckpt, cfg):
            follows_original = False
    check_arguments(cfg)  # before any data is loaded
    check_callbacks(cfg.get("callbacks"))  # each callbacks.NAME's target and arguments, as the components'
    check_metric_names(cfg, build_task(cfg.task))
    if distributed.is_main():
        chosen_sinks(cfg.get("logger"))  # a sink's wrong key or missing package, before anything is written
    return cfg, resume_point, changes, follows_original


# The first version whose augmentation noise is drawn a batch at a time (other bits than before).
BATCHED_NOISE = (0, 2)


def noise_drawn_otherwise(ckpt: dict, cfg: DictConfig) -> bool:
    """Whether the checkpoint's run drew its augmentation noise otherwise than this version does."""
    written_by = str(ckpt["meta"].get("framework_version", "0"))
    older = tuple(int(part) for part in written_by.split(".")[:2] if part.isdigit()) < BATCHED_NOISE
    changed = older and bool(cfg.data.augment.noise_std)
    if changed:
        log.warning(
            "the checkpoint was written by framework %s, whose augmentation noise (data.augment.noise_std=%s) "
            "drew other values: the run goes on with this version's noise and no longer follows its original "
            "trajectory to the bit",
            written_by,
            cfg.data.augment.noise_std,
        )
    return changed


def say_not_exact(point: resume_lib.ResumePoint) -> None:
    imported = point.ckpt["meta"].get("imported", {})
    log.warning(
        "%s was imported from another program's checkpoint (%s; restored: %s): the run goes on from it, "
        "but not bit for bit: %s. The run is recorded as not following its original trajectory.",
        point.path,
        imported.get("source", "its source is not recorded"),
        ", ".join(imported.get("restored", [])),
        "; ".join(imported.get("not_exact", ["the file does not say why"])),
    )


def say_nothing_left(ckpt: dict, cfg: DictConfig) -> None:
    if stopped_early(ckpt):
        stopping = ckpt["early_stopping"]
        log.warning(
            "nothing left to train: the run stopped early at step %d (trainer.early_stopping: %s did not improve "
            "for %d validations; best %r at step %s). The run's results are kept as they are.",
            ckpt["global_step"],
            stopping.get("monitor"),
            stopping["bad_validations"],
            stopping["best"],
            stopping["best_step"],
        )
        return
    log.warning(
        "nothing left to train: the checkpoint is at epoch %d, step %d, and the config stops there "
        "(trainer.max_epochs=%d, trainer.max_steps=%s). The run's results are kept as they are. To go on, "
        "give trainer.max_steps=null or more epochs (trainer.max_epochs=N allow_config_changes=true).",
        ckpt["epoch"],
        ckpt["global_step"],
        cfg.trainer.max_epochs,
        cfg.trainer.max_steps,
    )


def nothing_left(ckpt: dict, cfg: DictConfig) -> bool:
    """Whether a resumed run's config stops it where its checkpoint already is (or early stopping,
    still on, had stopped it)."""
    max_steps = cfg.trainer.max_steps
    if stopped_early(ckpt) and cfg.trainer.early_stopping.patience is not None:
        return True
    return ckpt["epoch"] >= cfg.trainer.max_epochs or (max_steps is not None and ckpt["global_step"] >= max_steps)


def same_world_size(point: resume_lib.ResumePoint, allowed: bool) -> bool:
    """A checkpoint continues exactly only with the number of ranks that wrote it: the data
    order (each rank's shard) and the random streams (one per rank) depend on it."""
    saved, now = point.ckpt["meta"].get("world_size", 1), distributed.world_size()
    if saved == now:
        return True
    if not allowed:
        raise ConfigError(
            f"{point.path} was written by {saved} process(es), this run has {now}: the data order and the "
            "random streams cannot continue exactly. Resume with the same number of processes, or give "
            "allow_config_changes=true to continue from its model, optimizer and scheduler on a new trajectory."
        )
    log.warning(
        "resuming a %d-process checkpoint on %d: model, optimizer and scheduler are restored; the data order and "
        "the random streams cannot continue exactly, and the run no longer follows its original trajectory",
        saved,
        now,
    )
    return False


def determinism_in_force(cfg: DictConfig, resume_point: resume_lib.ResumePoint | None, device: torch.device) -> dict:
    """Put the level and the thread count in force (a resumed run keeps the count it ran with);
    return the settings in force, and say what a user must know about them."""
    recorded = resume_point.ckpt["meta"].get("determinism_settings", {}) if resume_point else {}
    num_threads, threads_from = pick_num_threads(cfg.determinism.num_threads, recorded.get("num_threads"))
    settings = apply_determinism(cfg.determinism.level, num_threads)
    log.info("%d intra-op threads (%s): the bits depend on it", num_threads, threads_from)
    if os.environ.get("OMP_NUM_THREADS", str(num_threads)) != str(num_threads):
        log.info(
            "OMP_NUM_THREADS=%s is not what sets the thread count: determinism.num_threads does "
            "(a launcher may set OMP_NUM_THREADS, and the bits must not follow it)",
            os.environ["OMP_NUM_THREADS"],
        )
    note = gpu_note(cfg.determinism.level, str(device))
    if note:
        log.warning(note)
    return settings


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but this machine has no CUDA device; use trainer.device=cpu or trainer.device=auto"
        )
    return torch.device(name)
