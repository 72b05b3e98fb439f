"""`python -m framework [overrides]`: compose the config with Hydra and train."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.distributed.elastic.multiprocessing.errors import record

import framework
from framework import distributed
from framework.checkpoint import CheckpointError
from framework.cli import hydra_files
from framework.cli import sweep as sweep_callbacks
from framework.config import overrides, schema
from framework.config import recipes as recipe
from framework.config.errors import ConfigError
from framework.config.folders import CONF_DIR
from framework.config.target_arguments import explain_unknown_key
from framework.engine.preemption import exit_code
from framework.engine.run import run
from framework.engine.step import RunStopped
from framework.runs import sweep_summary
from framework.runs.run_dir import EXISTING_RUN, RunDirRefused, holds_a_run, make_room, refusal, refuse_unless_dead

schema.register()
RECIPES = recipe.find_all()
RECIPE_PROBLEMS = recipe.register(RECIPES)
log = logging.getLogger("framework")
# A run stopped gracefully by a signal exits as a process killed by it would: not done.
STOPPED = ("preempted", "interrupted")  # by a signal, with a checkpoint: resume=auto continues


def continue_in_place(argv: list[str]) -> list[str]:
    """With `resume=RUN_DIR` or `resume=FILE.pt`, run in that run's own directory.

    Hydra picks the run directory before any of our code runs, so this is decided from the
    command line: add `hydra.run.dir=<the run's directory>` unless the user set one.
    """
    if not resumes(argv):
        return argv
    run_dir = resumed_run_dir(argv)
    if run_dir is not None and overrides.value_of(argv, "hydra.run.dir") is None:
        return overrides.with_overrides(argv, f"hydra.run.dir={overrides.quoted(str(run_dir.resolve()))}")
    return argv


def hold_back_hydra_files(argv: list[str]) -> list[str]:
    """Hydra writes its record of the invocation into a folder of this invocation's own, which
    joins the run once the run takes its directory (framework/cli/hydra_files.py). Not where the
    user chose where Hydra writes it."""
    if overrides.value_of(argv, "hydra.output_subdir") is not None:
        return argv
    return overrides.with_overrides(argv, f"hydra.output_subdir={overrides.quoted(hydra_files.incoming_subdir())}")


def resumes(argv: list[str]) -> bool:
    return overrides.value_of(argv, "resume") not in (None, "", "None", "null")


def resumed_run_dir(argv: list[str]) -> Path | None:
    """The directory of the run a resume continues: hydra.run.dir if given, else the one its
    `resume=RUN_DIR` or `resume=FILE.pt` names (None for resume=auto without a directory)."""
    run_dir_arg = overrides.value_of(argv, "hydra.run.dir")
    if run_dir_arg is not None:
        return Path(run_dir_arg)
    resume = overrides.value_of(argv, "resume")
    path = Path(resume).expanduser()
    if resume != "auto" and path.is_file():  # RUN_DIR/checkpoints/NAME.pt
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if resume != "auto" and path.is_dir():  # RUN_DIR or RUN_DIR/checkpoints
        return path.parent if path.name == "checkpoints" else path
    return None


def protect_existing_run(argv: list[str]) -> None:
    """A new run (no `resume`) in a directory that holds a run is refused before Hydra writes
    anything into it, unless `existing_run=archive|overwrite` makes room (framework/runs/run_dir.py).

    Only a directory given on the command line is seen here; one from a config file is checked
    when the run starts.
    """
    if resumes(argv):
        return
    key = "hydra.sweep.dir" if overrides.is_multirun(argv) else "hydra.run.dir"
    given = overrides.value_of(argv, key)
    if given is None:
        return  # Hydra makes a new, timestamped directory
    folder = Path(given)
    if key == "hydra.run.dir":
        occupied = holds_a_run(folder)
    else:
        occupied = folder.is_dir() and any(holds_a_run(job) for job in folder.iterdir() if job.is_dir())
    policy = overrides.value_of(argv, "existing_run") or "refuse"
    if not occupied or policy not in EXISTING_RUN:
        return  # a wrong value is refused with the rest of the config
    try:
        if policy == "refuse":
            refuse_unless_dead(folder)  # a live run is named as such
            raise RunDirRefused(refusal(folder, key))
        print(make_room(folder, policy, key), file=sys.stderr)
    except RunDirRefused as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


def start_processes(argv: list[str]) -> None:
    """`trainer.processes=N` on the plain command: become `torchrun --standalone
    --nproc_per_node=N -m framework ...` (torch's own elastic launcher, not one of ours), before
    any work. Only a value given on the command line is seen here, as for determinism=strict."""
    given = overrides.value_of(argv, "trainer.processes")
    if distributed.is_distributed() or given is None or not given.isdigit() or int(given) < 2:
        return
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={given}"]
    os.execv(sys.executable, [*launcher, "-m", "framework", *argv])


def join_the_job(argv: list[str]) -> None:
    """Under torchrun: join the process group (one job per command: no sweeps)."""
    if not distributed.is_distributed():
        return
    if overrides.is_multirun(argv):
        print("Error: under torchrun a command runs one job; sweep multi-process jobs with a launcher", file=sys.stderr)
        sys.exit(1)
    distributed.init()


def one_run_directory(argv: list[str]) -> list[str]:
    """Under torchrun, every rank in one run directory, decided before Hydra makes one per rank
    (each would resolve its own timestamp): rank 0 picks it and tells the others. Only rank 0
    lets Hydra write `.hydra/` and train.log there."""
    if not distributed.is_distributed():
        return argv
    if overrides.value_of(argv, "hydra.run.dir") is None:
        now = datetime.now()  # the pattern of hydra.run.dir in conf/config.yaml
        chosen = distributed.from_main(f"outputs/{now:%Y-%m-%d}/{now:%H-%M-%S-%f}")
        argv = overrides.with_overrides(argv, f"hydra.run.dir={overrides.quoted(chosen)}")
    if distributed.is_main():
        return argv
    mine = [a for a in argv if not a.startswith("hydra.output_subdir=")]
    return overrides.with_overrides(mine, "hydra.output_subdir=null", "hydra/job_logging=disabled")


def relaunch_for_strict(argv: list[str]) -> None:
    """determinism=strict needs PYTHONHASHSEED fixed before the interpreter starts (setting it
    in a running one changes nothing for that one): re-launch with it set, before any work.

    Seen here: a level given on the command line (a sweep over levels included), and a resume
    of a strict run that gives no level (the checkpoint's config keeps it; the run's metrics.json
    says so without loading anything). A level from a config file is checked when the run
    starts, which then refuses with a message saying how to set it.
    """
    if "PYTHONHASHSEED" not in os.environ and (overrides.asks_for_strict(argv) or resumes_a_strict_run(argv)):
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "framework", *argv], env)


def resumes_a_strict_run(argv: list[str]) -> bool:
    """A resume that sets no determinism level, of a run whose last process ran strict."""
    if not resumes(argv) or overrides.sets_determinism(argv):
        return False
    run_dir = resumed_run_dir(argv)
    if run_dir is None:
        return False
    try:
        return json.loads((run_dir / "metrics.json").read_text())["determinism"]["level"] == "strict"
    except (OSError, ValueError, KeyError, TypeError):  # no summary, or not ours: the run says what is wrong
        return False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | str | None:
    """Train; return the final value of `optimized_metric`, for sweepers that optimize it."""
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
            f"set optimized_metric to one of {schema.FINAL_METRICS}"
        )


# Under torchrun, a rank's uncaught error goes into the file torchrun names for it, so that its
# failure summary shows that rank's error as the root cause (the other ranks fail after it, on a
# closed connection). Without torchrun it does nothing.
@record
def entry(argv: list[str]) -> None:
    if "--version" in argv:  # Hydra's own flag would print Hydra's version, not ours
        print(f"framework {framework.__version__} (Hydra {hydra.__version__}, torch {torch.__version__})")
        return
    problem = overrides.unreadable(argv)
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        sys.exit(1)
    chosen = overrides.value_of(argv, "recipe")
    if chosen in RECIPE_PROBLEMS:
        print(f"Error: {RECIPE_PROBLEMS[chosen]}", file=sys.stderr)
        sys.exit(1)
    if chosen and recipe.NAME.fullmatch(chosen) and chosen not in RECIPES:
        folders = " or ".join(str(f) for f in recipe.user_folders())
        print(
            f"Error: recipe={chosen}: no such recipe in {folders} (yours, relative to where you run from; "
            f"${recipe.FOLDERS_ENV} names others) nor among the shipped ones. There are: {', '.join(RECIPES)} "
            "(python -m framework.recipe list describes them).",
            file=sys.stderr,
        )
        sys.exit(1)
    relaunch_for_strict(argv)
    start_processes(argv)
    join_the_job(argv)
    if distributed.is_main():
        protect_existing_run(argv)  # the others are stopped by torchrun if it refuses
    argv = continue_in_place(argv)  # the same directory on every rank
    argv = hold_back_hydra_files(argv)
    argv = one_run_directory(argv)
    sys.argv = [sys.argv[0], *argv]
    # Hydra prints its errors itself unless HYDRA_FULL_ERROR is 1; set, they reach us, and the
    # one a user meets most (a key the config does not have) gets a message that says what to do.
    user_wants_tracebacks = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except KeyboardInterrupt:  # a second Ctrl-C: the first one's graceful stop was not awaited
        print(
            "Interrupted: stopped at once, without a checkpoint. resume=auto continues from the last one.",
            file=sys.stderr,
        )
        sys.exit(exit_code(signal.SIGINT))
    except Exception as e:
        if user_wants_tracebacks:
            raise
        message = explain_unknown_key(e)
        if message is not None:
            message = f"Error: {message}"
        elif isinstance(e, CompactHydraException):
            # What Hydra itself prints for its own errors: the message and the config error under it.
            cause = e.__cause__
            message = str(e) + (f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else "")
        else:
            raise  # not a mistake in the config: a crash, with its whole traceback
        print(message, file=sys.stderr)
        sys.exit(1)
    finally:
        # Leave the process group before the interpreter shuts down: torch's threads torn down at
        # exit instead can abort a rank ("terminate called without an active exception").
        distributed.close()


def entry_of_a_rank(argv: list[str]) -> None:
    """`entry` in a process of torchrun's, which then ends without the interpreter's teardown.

    By then the process group is destroyed, the run's files are closed and the exit status is
    known; what the teardown would still do is destroy torch's C++ objects, and there gloo's
    threads can abort a rank that finished its work: CI once saw a rank of a completed run die
    with "terminate called without an active exception" while its main thread had no Python
    frame left (the teardown), so torchrun failed the job. An error that escapes `entry` takes
    the ordinary way out, so that torchrun's error file and the traceback are written.
    """
    try:
        entry(argv)
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):  # what the interpreter would have printed
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    gc.collect()  # a DataLoader's workers are told to stop, as at an ordinary exit
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def command() -> None:
    """`python -m framework`: one process, or a rank of torchrun's."""
    if distributed.is_distributed():
        entry_of_a_rank(sys.argv[1:])
    else:
        entry(sys.argv[1:])
