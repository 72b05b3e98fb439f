"""The sweep's Hydra callbacks (the summary when a multirun ends; a stop signal stops the whole
sweep) and `python -m framework.cli.sweep SWEEP_DIR`, which (re)builds a summary from disk.
What the summary holds: framework/runs/sweep_summary.py."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from hydra.experimental.callback import Callback

from framework.cli import exit_with
from framework.engine.preemption import STOP_SIGNALS, exit_code, is_python_handler
from framework.runs.layout import REFUSED, STOPPED_BY
from framework.runs.sweep_summary import job_dirs, request_stop, stop_requested, summarize, verdict

log = logging.getLogger("framework")


# The launchers that run a sweep's jobs in its own processes on this machine: one after another,
# or in worker processes. A cluster's launcher (submitit) runs each job as a job of its own,
# which a scheduler signals and requeues alone: its signals are not the whole sweep's.
LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")


def runs_here(hydra_cfg) -> bool:
    """Whether the sweep's jobs run in processes of its own, on this machine (LOCAL_LAUNCHERS)."""
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    return any(launcher.endswith(name) for name in LOCAL_LAUNCHERS)


class StopBetweenJobs:
    """The handler of the stop signals in the processes of a sweep that runs here (runs_here)
    while no job trains (each job's own StopOnSignal takes them meanwhile, and puts this one back
    after): it notes the stop at the sweep's root and passes the signal to this process's
    children, the workers of a parallel launcher, whose running jobs then stop at a step. Ctrl-C
    is not passed on: a terminal sends it to every process already, and a second one would abort
    a job without its checkpoint. Installed once per process, never over another program's."""

    installed: StopBetweenJobs | None = None

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self.previous = {}
        for sig in STOP_SIGNALS:
            if not is_python_handler(signal.getsignal(sig)):
                self.previous[sig] = signal.signal(sig, self.handle)

    @classmethod
    def install(cls, sweep_dir: Path) -> None:
        if cls.installed is None and threading.current_thread() is threading.main_thread():
            cls.installed = cls(sweep_dir)

    @classmethod
    def uninstall(cls) -> None:
        if cls.installed is not None:
            for sig, handler in cls.installed.previous.items():
                signal.signal(sig, handler)
            cls.installed = None

    def handle(self, signum: int, frame) -> None:
        request_stop(self.sweep_dir, signum)
        if signum != signal.SIGINT:
            for child in multiprocessing.active_children():
                if child.pid is not None:
                    os.kill(child.pid, signum)


class SummaryCallback(Callback):
    """Takes the stop signals for the sweep while it runs (StopBetweenJobs); writes the summary
    when a multirun ends; the sweep exits 1 if a job failed or a seed did not reproduce, 128 + N
    if signal N stopped it. (Hydra turns an exception raised here into a warning, hence sys.exit.)"""

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # What the last multirun of this directory left: a requeue starts anew.
        shutil.rmtree(sweep_dir / REFUSED, ignore_errors=True)
        (sweep_dir / STOPPED_BY).unlink(missing_ok=True)
        if runs_here(config.hydra):
            StopBetweenJobs.install(sweep_dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        StopBetweenJobs.uninstall()
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarize(sweep_dir)
        status, line = verdict(summary)
        stopped_by = stop_requested(sweep_dir)
        if stopped_by is not None:
            status = exit_code(stopped_by)
            line = (
                f"stopped by {stopped_by.name}: no more jobs started. {line}. Continue with the same command "
                "and resume=auto"
            )
        log.info("sweep summary: %s (%s)", line, sweep_dir / "summary.md")
        print(f"sweep summary: {line}\n  {sweep_dir / 'summary.md'}", file=sys.stderr if status else sys.stdout)
        if status:
            sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framework.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir() or not job_dirs(args.sweep_dir):
        print(f"Error: {args.sweep_dir} holds no sweep jobs (no */.hydra/overrides.yaml)", file=sys.stderr)
        return 2
    summary = summarize(args.sweep_dir)
    status, line = verdict(summary)
    print((args.sweep_dir / "summary.md").read_text())
    print(line, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    exit_with(main)
