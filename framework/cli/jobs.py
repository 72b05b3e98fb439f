"""What Hydra runs for each job of `python -m framework`: one run, or one job of a sweep, and
what it returns to the sweeper. The command around it is framework/cli/train.py."""

from __future__ import annotations

import logging
import math
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from framework import distributed
from framework.checkpoint import CheckpointError
from framework.cli import hydra_files
from framework.cli import sweep as sweep_callbacks
from framework.config import overrides
from framework.config import recipes as recipe
from framework.config.errors import ConfigError
from framework.config.folders import CONF_DIR
from framework.engine.build import build_task
from framework.engine.callbacks import CallbackFailed
from framework.engine.preemption import exit_code
from framework.engine.run import run
from framework.engine.step import RunStopped
from framework.runs import sweep_summary
from framework.runs.run_dir import RunDirRefused, url_as_run_dir
from framework.tasks.task import metric_names

log = logging.getLogger("framework")
# A run stopped gracefully by a signal exits as a process killed by it would: not done.
STOPPED = ("preempted", "interrupted")  # by a signal, with a checkpoint: resume=auto continues


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | str | None:
    """Train; return the final value of `optimized_metric`, for sweepers that optimize it."""
    # A launcher's worker (submitit's, loky's) starts without the command's sys.path, where the
    # modules beside the user's recipes import from.
    recipe.make_importable(recipe.find_all())
    distributed.join_cluster_tasks()  # a submitit job with several tasks: one group, like torchrun's
    hydra_cfg = HydraConfig.get()
    # version_base 1.3 keeps the working directory; the run directory comes from Hydra.
    run_dir = Path(hydra_cfg.runtime.output_dir)
    held = hydra_files.HeldBack(run_dir, hydra_cfg.output_subdir)  # before anything is logged
    if not distributed.is_main():
        log.setLevel(logging.WARNING)  # rank 0 tells the run's story
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return sweep_job(cfg, hydra_cfg, run_dir, held)
        return single_run(cfg, hydra_cfg, run_dir, held)
    finally:
        held.settle()
        distributed.close()  # the job's group (a submitit job's tasks) ends with the job


# A user's mistake, an unusable checkpoint, a directory that is another run's: one clear message.
USER_ERRORS = (RunDirRefused, ConfigError, CheckpointError, RunStopped)


def train_job(cfg: DictConfig, hydra_cfg, run_dir: Path, held: hydra_files.HeldBack) -> dict:
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    key, folder = ("hydra.sweep.dir", hydra_cfg.sweep.dir) if multirun else ("hydra.run.dir", hydra_cfg.run.dir)
    if url_as_run_dir(key, folder):  # from a config file: given on the command line, it is refused before Hydra
        raise ConfigError(url_as_run_dir(key, folder))
    warn_if_auto_can_never_resume(cfg, hydra_cfg)
    check_objective(cfg, hydra_cfg)
    # The keys this command line sets: on resume only these may differ from the checkpoint's config.
    given = overrides.given_keys(list(hydra_cfg.overrides.task), hydra_cfg.runtime.choices)
    return run(cfg, run_dir, given=given, on_accept=held.keep)


def single_run(cfg: DictConfig, hydra_cfg, run_dir: Path, held: hydra_files.HeldBack) -> float | str | None:
    try:
        summary = train_job(cfg, hydra_cfg, run_dir, held)
    except USER_ERRORS as e:
        settle_failed(held, e)
        if distributed.is_main():  # one message for the job, not one per rank
            print(f"Error: {e}", file=sys.stderr)
        elif isinstance(e, CallbackFailed):  # this rank's own: rank 0 may only see a broken collective
            print(f"Error on rank {distributed.rank()}: {e}", file=sys.stderr)
        sys.exit(1)
    if summary["status"] in STOPPED:  # not finished: a scheduler must not take it for done
        sys.exit(exit_code(signal.Signals[summary["signal"]]))
    return objective(summary)


def sweep_job(cfg: DictConfig, hydra_cfg, run_dir: Path, held: hydra_files.HeldBack) -> float | str | None:
    """One job of a sweep. A failed job must not stop the others (the basic sweeper would raise and
    skip the summary): it returns why it failed, and its record says so, in its own metrics.json or,
    where its directory is another run's, at the sweep's root (framework/runs/sweep_summary.py). A stop signal
    stops the whole sweep where it runs here: no more jobs start, and the summary ends it."""
    sweep_dir, here = Path(hydra_cfg.sweep.dir), sweep_callbacks.runs_here(hydra_cfg)
    if here:
        sweep_callbacks.StopBetweenJobs.install(sweep_dir)  # a parallel launcher's worker, between its jobs
        stopped_by = sweep_summary.stop_requested(sweep_dir)
        if stopped_by is not None:
            held.drop()
            return failed(f"not started: {stopped_by.name} stopped the sweep")
    try:
        summary = train_job(cfg, hydra_cfg, run_dir, held)
    except Exception as e:
        settle_failed(held, e)
        if held.dropped:
            overrides_given = list(hydra_cfg.overrides.task)
            sweep_summary.record_refusal(
                sweep_dir, hydra_cfg.job.num, run_dir, cfg.get("seed"), overrides_given, str(e)
            )
            print(f"Error: job {hydra_cfg.job.num} left {run_dir} as it was: {e}", file=sys.stderr)
        elif isinstance(e, USER_ERRORS):
            log.error("job failed: %s", e)
        else:
            log.exception("job failed")
        return failed(e)
    if summary["status"] in STOPPED:
        signum = signal.Signals[summary["signal"]]
        if not here:  # a cluster's job: the signal was for it alone, and its scheduler takes the exit status
            sys.exit(exit_code(signum))
        sweep_summary.request_stop(sweep_dir, signum)
        return failed(f"{summary['status']} at step {summary['global_step']}")
    return objective(summary)


def settle_failed(held: hydra_files.HeldBack, error: Exception) -> None:
    """A job that failed before it took its directory: Hydra's files of it stay only where no run
    was before, and never where another process holds the directory."""
    if isinstance(error, RunDirRefused):
        held.drop()
    else:
        held.settle()


def warn_if_auto_can_never_resume(cfg: DictConfig, hydra_cfg) -> None:
    """resume=auto looks for checkpoints in the run directory; a directory named for the time
    (Hydra's default, `${now:...}`) is new at every start, so there is never anything to find."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    pattern = OmegaConf.to_container(hydra_cfg.sweep if multirun else hydra_cfg.run, resolve=False)["dir"]
    if cfg.get("resume") == "auto" and "${now:" in str(pattern) and not warned_about_auto:
        warned_about_auto.append(key)  # once per process, not once per job of a sweep
        print(
            f"Warning: resume=auto without {key}: this run gets a new timestamped directory, so it can "
            f"never find a checkpoint to continue from. Give {key}=A_FIXED_DIRECTORY, the same on every requeue.",
            file=sys.stderr,
        )


warned_about_auto: list[str] = []


def objective(summary: dict) -> float | str | None:
    """The final value of `optimized_metric` (None when none is set): what sweepers that
    optimize take from each job."""
    metric = summary.get("optimized_metric")
    if metric is None:
        return None
    value = summary["metrics"].get(metric)
    if value is None or not math.isfinite(value):
        return failed(f"{metric} is {value}")
    return value


def failed(reason: object) -> str:
    """What a failed job returns in a sweep: not a number, so that a sweeper that optimizes
    records the trial as failed, with this reason in its log, and goes on (Optuna's plugin
    cannot record a NaN as a failure: it raises). The job's metrics.json says why as well."""
    return f"failed: {reason}"


def check_objective(cfg: DictConfig, hydra_cfg) -> None:
    """A sweeper that optimizes takes the value each job returns: without a metric to return,
    every trial would fail ("No trials are completed yet") after training for nothing."""
    sweeper = str(hydra_cfg.sweeper.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and cfg.get("optimized_metric") is None and "BasicSweeper" not in sweeper:
        raise ConfigError(
            f"optimized_metric=null, but the sweeper ({sweeper}) optimizes the value each job returns: "
            f"set optimized_metric to one of {', '.join(metric_names(build_task(cfg.task)))}"
        )
    check_direction(cfg.get("optimized_metric"), hydra_cfg.sweeper.get("direction"), cfg.task)


# A metric's direction as an optimizing sweeper (Optuna's `direction`) spells it.
SWEEPER_DIRECTIONS = {"min": "minimize", "max": "maximize"}


def check_direction(metric: str | None, direction, task: DictConfig) -> None:
    """A sweeper that minimizes a metric the task says is better higher (or the other way) would
    search for the worst trials."""
    direction = getattr(direction, "name", direction)  # Optuna's default is an enum
    if metric is None or not isinstance(direction, str):  # several objectives: a list, each its own
        return
    wanted = SWEEPER_DIRECTIONS.get(metric_names(build_task(task)).get(metric))
    if wanted is not None and direction != wanted:
        raise ConfigError(
            f"hydra.sweeper.direction={direction}, but optimized_metric={metric} is better "
            f"{'higher' if wanted == 'maximize' else 'lower'} (task {task._target_}): "
            f"set hydra.sweeper.direction={wanted}"
        )
