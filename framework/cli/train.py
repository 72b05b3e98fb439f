"""`python -m framework [overrides]`: compose the config with Hydra and train.

The command makes Hydra's config known, computes its launch plan from the command line and the
environment (framework/cli/launch_plan.py), and carries it out: print, exit, re-launch, make room,
then Hydra's main, which runs each job (framework/cli/jobs.py).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from datetime import datetime

import hydra
import torch
from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException
from torch.distributed.elastic.multiprocessing.errors import record

import framework
from framework import distributed
from framework.cli import jobs, launch_plan
from framework.cli.launch_plan import LaunchPlan
from framework.config import recipes as recipe
from framework.config import schema
from framework.config.target_arguments import explain_unknown_key
from framework.engine.preemption import exit_code
from framework.runs.run_dir import RunDirRefused, make_room


def plan_for(argv: list[str]) -> LaunchPlan:
    """Register the schemas and the recipes in Hydra's ConfigStore (every start reads the recipes,
    and a user folder's parent goes on sys.path), then plan from this process's world."""
    schema.register()
    found = recipe.find_all()
    problems = recipe.register(found)
    return launch_plan.plan(
        argv,
        os.environ,
        recipes=found,
        recipe_problems=problems,
        in_use=launch_plan.held_by_a_live_process,
        python=sys.executable,
        now=datetime.now(),
    )


# Under torchrun, a rank's uncaught error goes into the file torchrun names for it, so that its
# failure summary shows that rank's error as the root cause (the other ranks fail after it, on a
# closed connection). Without torchrun it does nothing.
@record
def entry(argv: list[str]) -> None:
    carry_out(plan_for(argv))


def carry_out(plan: LaunchPlan) -> None:
    if plan.print_version:
        print(f"framework {framework.__version__} (Hydra {hydra.__version__}, torch {torch.__version__})")
        return
    if plan.relaunch is not None:
        os.execve(plan.relaunch.argv[0], list(plan.relaunch.argv), dict(plan.relaunch.env))
    if plan.join_process_group:
        distributed.init()
    if plan.error is not None:
        print(f"Error: {plan.error}", file=sys.stderr)
        sys.exit(plan.exit_code)
    if plan.make_room is not None:
        room = plan.make_room
        try:
            print(make_room(room.folder, room.policy, room.key), file=sys.stderr)
        except RunDirRefused as e:
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(1)
    argv = list(plan.hydra_argv)
    if plan.run_dir_from_rank_0 is not None:
        argv = launch_plan.with_run_dir(argv, distributed.from_main(plan.run_dir_from_rank_0))
    sys.argv = [sys.argv[0], *argv]
    os.environ.update(plan.set_environ)
    run_hydra(plan.show_tracebacks)


def run_hydra(show_tracebacks: bool) -> None:
    """Hydra's main with sys.argv; the error a user meets most (a key the config does not have)
    gets a message that says what to do."""
    try:
        jobs.main()
    except KeyboardInterrupt:  # a second Ctrl-C: the first one's graceful stop was not awaited
        print(
            "Interrupted: stopped at once, without a checkpoint. resume=auto continues from the last one.",
            file=sys.stderr,
        )
        sys.exit(exit_code(signal.SIGINT))
    except Exception as e:
        if show_tracebacks:
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
