"""`python -m framework [overrides]`: compose the config with Hydra and train."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch.distributed.elastic.multiprocessing.errors import record

import framework
from framework import config, distributed, overrides, recipe, train
from framework.arguments import explain_unknown_key
from framework.checkpoint import CheckpointError
from framework.preemption import exit_code
from framework.run_dir import EXISTING_RUN, RunDirInUse, holds_a_run, make_room, refusal
from framework.sweep import summarize, verdict

config.register()
RECIPES = recipe.find_all()
RECIPE_PROBLEMS = recipe.register(RECIPES)
log = logging.getLogger("framework")
# A run stopped gracefully by a signal exits as a process killed by it would: not done.
STOPPED = ("preempted", "interrupted")  # by a signal, with a checkpoint: resume=auto continues


def continue_in_place(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """With `resume=RUN_DIR` or `resume=FILE.pt`, run in that run's own directory.

    Hydra picks the run directory before any of our code runs, so this is decided from the
    command line: add `hydra.run.dir=<the run's directory>` unless the user set one. And so that
    the run's original `.hydra/` record is kept, Hydra's files for this invocation go to
    `.hydra/resume-<time>/` whenever the directory already holds checkpoints.

    Returns the arguments, and what takes back Hydra's writes into the run (that folder, the lines
    added to train.log) if the resume is refused before it starts.
    """
    if not resumes(argv):
        return argv, None
    run_dir, extra = resumed_run_dir(argv), []
    if run_dir is not None and overrides.value_of(argv, "hydra.run.dir") is None:
        extra.append(f"hydra.run.dir={overrides.quoted(str(run_dir.resolve()))}")
    has_checkpoints = run_dir is not None and any((run_dir / "checkpoints").glob("*.pt"))
    if not has_checkpoints or overrides.value_of(argv, "hydra.output_subdir") is not None:
        return argv + extra, None
    subdir = f".hydra/resume-{datetime.now():%Y%m%d-%H%M%S-%f}"
    return argv + [*extra, f"hydra.output_subdir={subdir}"], take_back_if_not_started(run_dir, run_dir / subdir)


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


def take_back_if_not_started(run_dir: Path, hydra_files: Path) -> Callable[[], None]:
    """What undoes Hydra's writes into `run_dir` for this invocation, as long as the run has not
    started (its metrics.json is as it was): a refused resume leaves the run as it found it."""
    log_file = run_dir / "train.log"
    log_size = log_file.stat().st_size if log_file.is_file() else None
    summary = run_dir / "metrics.json"
    summary_before = summary.read_bytes() if summary.is_file() else None

    def take_back() -> None:
        if (summary.read_bytes() if summary.is_file() else None) != summary_before:
            return  # the run started: what it wrote is its record
        shutil.rmtree(hydra_files, ignore_errors=True)
        if log_size is None:
            log_file.unlink(missing_ok=True)
        elif log_file.is_file():
            os.truncate(log_file, log_size)

    return take_back


def warn_about_auto_without_a_directory(argv: list[str]) -> None:
    """resume=auto looks for checkpoints in the run directory; without a fixed one, every run
    gets a new timestamped directory, and there is never anything to continue from."""
    key = "hydra.sweep.dir" if overrides.is_multirun(argv) else "hydra.run.dir"
    if overrides.value_of(argv, "resume") == "auto" and overrides.value_of(argv, key) is None:
        print(
            f"Warning: resume=auto without {key}: this run gets a new timestamped directory, so it can "
            f"never find a checkpoint to continue from (unless your config sets {key}). Give "
            f"{key}=A_FIXED_DIRECTORY, the same on every requeue.",
            file=sys.stderr,
        )


def protect_existing_run(argv: list[str]) -> None:
    """A new run (no `resume`) in a directory that holds a run is refused before Hydra writes
    anything into it, unless `existing_run=archive|overwrite` makes room (framework/run_dir.py).

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
    if policy == "refuse":
        print(f"Error: {refusal(folder, key)}", file=sys.stderr)
        sys.exit(1)
    print(make_room(folder, policy), file=sys.stderr)


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
        argv = [*argv, f"hydra.run.dir={overrides.quoted(chosen)}"]
    if distributed.is_main():
        return argv
    mine = [a for a in argv if not a.startswith("hydra.output_subdir=")]
    return [*mine, "hydra.output_subdir=null", "hydra/job_logging=disabled"]


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


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train; return the final value of `optimized_metric`, for sweepers that optimize it."""
    distributed.join_cluster_tasks()  # a submitit job with several tasks: one group, like torchrun's
    if not distributed.is_main():
        log.setLevel(logging.WARNING)  # rank 0 tells the run's story
    # version_base 1.3 keeps the working directory; the run directory comes from Hydra.
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    # The keys this command line sets: on resume only these may differ from the checkpoint's config.
    given = overrides.given_keys(list(hydra_cfg.overrides.task), hydra_cfg.runtime.choices)
    try:
        check_objective(cfg, hydra_cfg)
        summary = train.run(cfg, run_dir, given=given)
        if summary["status"] in STOPPED:  # not finished: a scheduler must not take it for done
            if in_sweep:
                # The signal was for the whole sweep: start no more jobs; summarize what ran.
                stop_the_sweep(Path(hydra_cfg.sweep.dir), summary["status"])
            sys.exit(exit_code(signal.Signals[summary["signal"]]))
        return objective(summary)
    except (config.ConfigError, CheckpointError, RunDirInUse, train.RunStopped) as e:
        # A user's mistake or an unusable checkpoint: one clear message and a non-zero exit.
        if in_sweep:
            log.error("job failed: %s", e)
            return failed(e)
        if distributed.is_main():  # one message for the job, not one per rank
            print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        if not in_sweep:
            raise
        # In a sweep, a failed job must not stop the others (the basic sweeper would raise and
        # skip the summary): it is recorded in its own metrics.json and in the summary, and the
        # sweep exits non-zero at the end.
        log.exception("job failed")
        return failed(e)
    finally:
        distributed.close()  # the job's group (a submitit job's tasks) ends with the job


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
        raise config.ConfigError(
            f"optimized_metric=null, but the sweeper ({sweeper}) optimizes the value each job returns: "
            f"set optimized_metric to one of {config.FINAL_METRICS}"
        )


def stop_the_sweep(sweep_dir: Path, status: str) -> None:
    line = verdict(summarize(sweep_dir))[1]
    print(
        f"sweep {status}: no more jobs started. {line}. Continue with the same command and resume=auto "
        f"(the summary: {sweep_dir / 'summary.md'})",
        file=sys.stderr,
    )


# Under torchrun, a rank's uncaught error goes into the file torchrun names for it, so that its
# failure summary shows that rank's error as the root cause (the other ranks fail after it, on a
# closed connection). Without torchrun it does nothing.
@record
def entry(argv: list[str]) -> None:
    if "--version" in argv:  # Hydra's own flag would print Hydra's version, not ours
        print(f"framework {framework.__version__} (Hydra {hydra.__version__}, torch {torch.__version__})")
        return
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
    warn_about_auto_without_a_directory(argv)
    if distributed.is_main():
        protect_existing_run(argv)  # the others are stopped by torchrun if it refuses
    argv, take_back = continue_in_place(argv)  # the same directory on every rank
    argv = one_run_directory(argv)
    if not distributed.is_main():
        take_back = None
    sys.argv = [sys.argv[0], *argv]
    # Hydra prints its errors itself unless HYDRA_FULL_ERROR is set; set, they reach us, and the
    # one a user meets most (a key the config does not have) gets a message that says what to do.
    user_wants_tracebacks = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and take_back is not None:
            take_back()  # the resume was refused
        raise
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


if __name__ == "__main__":
    if distributed.is_distributed():
        entry_of_a_rank(sys.argv[1:])
    else:
        entry(sys.argv[1:])
