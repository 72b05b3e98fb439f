"""What `python -m framework` does before Hydra runs, decided from its command line and environment.

Some decisions cannot wait for Hydra: Hydra picks the run directory and writes into it before any
of our code runs, PYTHONHASHSEED counts only when it is set before the interpreter starts, and
torchrun's ranks must agree on one directory before Hydra makes one per rank. `plan` takes them
all, from the command line, the environment and what the directories named there hold; it starts
nothing, writes nothing and sets nothing. framework/cli/train.py carries the plan out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from framework import distributed
from framework.cli import hydra_files
from framework.config import overrides
from framework.config import recipes as recipe
from framework.runs.layout import CHECKPOINTS, RunLayout
from framework.runs.run_dir import (
    EXISTING_RUN,
    RUN_DIR_KEYS,
    RunDirRefused,
    holds_a_run,
    refusal,
    refuse_unless_dead,
    url_as_run_dir,
)


@dataclass(frozen=True)
class Relaunch:
    """Replace this process with another command (exec): the same job, started another way."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class MakeRoom:
    """`existing_run=archive|overwrite`: move aside or delete the run in the directory a new run
    was given (framework/runs/run_dir.py refuses where it may not act)."""

    folder: Path
    policy: str
    key: str  # hydra.run.dir, or hydra.sweep.dir for a sweep


@dataclass(frozen=True)
class LaunchPlan:
    """What to do, in this order: print the version and stop; or exec `relaunch`; or join the
    process group, stop with `error`, make room, then run Hydra with `hydra_argv`."""

    print_version: bool = False
    error: str | None = None  # one line, said as "Error: ..." on stderr
    exit_code: int = 0
    relaunch: Relaunch | None = None
    join_process_group: bool = False  # under torchrun, before the ranks share anything
    make_room: MakeRoom | None = None
    hydra_argv: tuple[str, ...] = ()
    # Under torchrun without hydra.run.dir: rank 0's proposal, which every rank takes from rank 0.
    run_dir_from_rank_0: str | None = None
    # Hydra lets its errors through to us only with HYDRA_FULL_ERROR=1; the user's own value says
    # whether they are shown as tracebacks.
    set_environ: Mapping[str, str] = field(default_factory=lambda: {"HYDRA_FULL_ERROR": "1"})
    show_tracebacks: bool = False


def plan(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    recipes: Mapping[str, recipe.Recipe],
    recipe_problems: Mapping[str, str],
    in_use: Callable[[Path], str | None],
    python: str,
    now: datetime,
) -> LaunchPlan:
    """The launch plan for `python -m framework ARGV` in `environ`.

    recipes: the recipes found, by name; recipe_problems: why some of them cannot be used, by name.
    in_use: why a live process holds the run in a folder (or one of a sweep's), or None.
    python: the interpreter to re-launch; now: the time a torchrun job's directory is named for.
    """
    argv = list(argv)
    if "--version" in argv:  # Hydra's own flag would print Hydra's version, not ours
        return LaunchPlan(print_version=True)
    problem = (
        overrides.unreadable(argv)
        or recipe_problem(argv, recipes, recipe_problems, environ)
        or next(filter(None, (url_as_run_dir(k, overrides.value_of(argv, k)) for k in RUN_DIR_KEYS)), None)
    )
    if problem:
        return LaunchPlan(error=problem, exit_code=1)
    relaunch = relaunch_for_strict(argv, environ, python) or start_processes(argv, environ, python)
    if relaunch is not None:
        return LaunchPlan(relaunch=relaunch)
    under_torchrun = distributed.is_distributed(environ)
    if under_torchrun and overrides.is_multirun(argv):
        return LaunchPlan(
            error="under torchrun a command runs one job; sweep multi-process jobs with a launcher", exit_code=1
        )
    make_room = None
    if distributed.is_main(environ):  # the other ranks are stopped by torchrun if rank 0 refuses
        try:
            make_room = room_for_a_new_run(argv, in_use)
        except RunDirRefused as e:
            return LaunchPlan(error=str(e), exit_code=1, join_process_group=under_torchrun)
    argv = continue_in_place(argv)  # the same directory on every rank
    argv = hold_back_hydra_files(argv)
    argv, proposed = one_run_directory(argv, environ, now)
    return LaunchPlan(
        join_process_group=under_torchrun,
        make_room=make_room,
        hydra_argv=tuple(argv),
        run_dir_from_rank_0=proposed,
        show_tracebacks=environ.get("HYDRA_FULL_ERROR") == "1",
    )


def recipe_problem(
    argv: list[str], recipes: Mapping[str, recipe.Recipe], problems: Mapping[str, str], environ: Mapping[str, str]
) -> str | None:
    """Why the recipe the command line names cannot be used, or None (a name that is not a
    recipe's is left to Hydra to refuse)."""
    chosen = overrides.value_of(argv, "recipe")
    if chosen in problems:
        return problems[chosen]
    if chosen and recipe.NAME.fullmatch(chosen) and chosen not in recipes:
        folders = " or ".join(str(f) for f in recipe.user_folders(environ))
        return (
            f"recipe={chosen}: no such recipe in {folders} (yours, relative to where you run from; "
            f"${recipe.FOLDERS_ENV} names others) nor among the shipped ones. There are: {', '.join(recipes)} "
            "(python -m framework.recipe list describes them)."
        )
    return None


def relaunch_for_strict(argv: list[str], environ: Mapping[str, str], python: str) -> Relaunch | None:
    """determinism=strict needs PYTHONHASHSEED fixed before the interpreter starts (setting it
    in a running one changes nothing for that one): re-launch with it set, before any work.

    Seen here: a level given on the command line (a sweep over levels included), and a resume
    of a strict run that gives no level (the checkpoint's config keeps it; the run's metrics.json
    says so without loading anything). A level from a config file is checked when the run
    starts, which then refuses with a message saying how to set it.
    """
    if "PYTHONHASHSEED" in environ:
        return None
    if overrides.asks_for_strict(argv) or resumes_a_strict_run(argv):
        return Relaunch(argv=(python, "-m", "framework", *argv), env={**environ, "PYTHONHASHSEED": "0"})
    return None


def resumes_a_strict_run(argv: list[str]) -> bool:
    """A resume that sets no determinism level, of a run whose last process ran strict."""
    if not resumes(argv) or overrides.sets_determinism(argv):
        return False
    run_dir = resumed_run_dir(argv)
    if run_dir is None:
        return False
    try:
        return json.loads(RunLayout(run_dir).record.read_text())["determinism"]["level"] == "strict"
    except (OSError, ValueError, KeyError, TypeError):  # no summary, or not ours: the run says what is wrong
        return False


def start_processes(argv: list[str], environ: Mapping[str, str], python: str) -> Relaunch | None:
    """`trainer.processes=N` on the plain command: become `torchrun --standalone
    --nproc_per_node=N -m framework ...` (torch's own elastic launcher, not one of ours), before
    any work. Only a value given on the command line is seen here, as for determinism=strict."""
    given = overrides.value_of(argv, "trainer.processes")
    if distributed.is_distributed(environ) or given is None or not given.isdigit() or int(given) < 2:
        return None
    launcher = (python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={given}")
    return Relaunch(argv=(*launcher, "-m", "framework", *argv), env=dict(environ))


def room_for_a_new_run(argv: list[str], in_use: Callable[[Path], str | None]) -> MakeRoom | None:
    """A new run (no `resume`) in a directory that holds a run is refused (RunDirRefused) before
    Hydra writes anything into it, unless `existing_run=archive|overwrite` makes room.

    Only a directory given on the command line is seen here; one from a config file is checked
    when the run starts.
    """
    if resumes(argv):
        return None
    key = "hydra.sweep.dir" if overrides.is_multirun(argv) else "hydra.run.dir"
    given = overrides.value_of(argv, key)
    if given is None:
        return None  # Hydra makes a new, timestamped directory
    folder = Path(given)
    if key == "hydra.run.dir":
        occupied = holds_a_run(folder)
    else:
        occupied = folder.is_dir() and any(holds_a_run(job) for job in folder.iterdir() if job.is_dir())
    policy = overrides.value_of(argv, "existing_run") or "refuse"
    if not occupied or policy not in EXISTING_RUN:
        return None  # a wrong value is refused with the rest of the config
    if policy == "refuse":
        live = in_use(folder)  # a live run is named as such
        raise RunDirRefused(live or refusal(folder, key))
    return MakeRoom(folder, policy, key)


def held_by_a_live_process(folder: Path) -> str | None:
    """Why a live process holds the run in `folder` (or one of a sweep's), or None: `in_use` for
    the real command. It takes each run's lock and lets it go."""
    try:
        refuse_unless_dead(folder)
    except RunDirRefused as e:
        return str(e)
    return None


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


def one_run_directory(argv: list[str], environ: Mapping[str, str], now: datetime) -> tuple[list[str], str | None]:
    """Under torchrun, every rank in one run directory, decided before Hydra makes one per rank
    (each would resolve its own timestamp): rank 0 proposes one (returned beside the argv) and
    tells the others. Only rank 0 lets Hydra write `.hydra/` and train.log there."""
    if not distributed.is_distributed(environ):
        return argv, None
    proposed = None
    if overrides.value_of(argv, "hydra.run.dir") is None:
        proposed = f"outputs/{now:%Y-%m-%d}/{now:%H-%M-%S-%f}"  # the pattern of hydra.run.dir in conf/config.yaml
    if distributed.is_main(environ):
        return argv, proposed
    mine = [a for a in argv if not a.startswith("hydra.output_subdir=")]
    return overrides.with_overrides(mine, "hydra.output_subdir=null", "hydra/job_logging=disabled"), proposed


def with_run_dir(argv: Sequence[str], run_dir: str) -> list[str]:
    """`argv` with the run directory the ranks agreed on."""
    return overrides.with_overrides(list(argv), f"hydra.run.dir={overrides.quoted(run_dir)}")


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
        return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
    if resume != "auto" and path.is_dir():  # RUN_DIR or RUN_DIR/checkpoints
        return path.parent if path.name == CHECKPOINTS else path
    return None
