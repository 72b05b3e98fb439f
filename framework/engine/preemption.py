"""A graceful stop on the signals that schedulers, launchers and terminals send before they kill
a job: by default SIGTERM (SLURM preemption, Kubernetes, torchrun), SIGINT (Ctrl-C), SIGUSR1
(Lightning's choice, and many SLURM scripts' `--signal=USR1@90`) and SIGUSR2 (submitit's
warning of an imminent timeout or preemption, SUBMITIT_PREEMPT_SIGNAL). `trainer.stop_signals`
sets the list.

The handler only raises a flag (it may run in the middle of a log write, so it must not log
itself: that once broke the log file's stream); the training loop looks at it after each
optimizer step, says what it received, writes a checkpoint at that exact step and ends the run
("interrupted" after Ctrl-C, "preempted" after the others; the exit status is 128 + the
signal's number, as if the signal had killed it), so `resume=auto` continues from there. A
second Ctrl-C aborts at once.

Once the run is recorded, the stop hands the signal over to the handler it replaced, if that
was a Python function: submitit's handler then requeues the job (Hydra's submitit launcher
resubmits the same command, which resumes with resume=auto). The previous handlers are put back
when the run ends: in a sweep run by Hydra's basic launcher, jobs share one process.

Schedulers signal every process of a job, DataLoader workers included. A worker killed by it
would crash the main process before it could save, so workers ignore these signals: the main
process decides, and shuts its workers down when it stops. A worker is started with them held
(`signals_held`), so none can arrive before it has said so.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

log = logging.getLogger("framework")

# The default of trainer.stop_signals; DataLoader workers ignore all of them, whatever the list.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# No process can catch these.
UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def exit_code(signum: int) -> int:
    """What a process killed by the signal exits with; a run stopped gracefully by it says the same."""
    return 128 + signum


def signal_problem(name: object) -> str | None:
    """Why `name` cannot be in trainer.stop_signals, or None."""
    if not isinstance(name, str) or name not in signal.Signals.__members__ or name in UNCATCHABLE:
        return f"{name!r} is not a signal name a process can catch (e.g. SIGTERM, SIGUSR1)"
    return None


class StopOnSignal:
    def __init__(self, names: list[str] | None = None):
        """`names`: trainer.stop_signals; None (or empty) stands for STOP_SIGNALS."""
        self.received: int | None = None
        self.received_at: float | None = None  # time.monotonic() when it came
        self.announced = False
        self.previous = {}  # each signal's handler before this one: put back by close, called by hand_over
        if threading.current_thread() is not threading.main_thread():
            return  # Python only lets the main thread install handlers
        for sig in [signal.Signals[name] for name in names] if names else STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self.received = signum
        self.received_at = time.monotonic()

    def stop_requested(self) -> bool:
        """Whether a signal came; said in the log the first time it is seen (here, at a step
        boundary, where logging is safe)."""
        if self.received is not None and not self.announced:
            self.announced = True
            again = " (Ctrl-C again aborts at once)" if self.received == signal.SIGINT else ""
            log.warning(
                "received %s: stopping after this step, with a checkpoint%s",
                signal.Signals(self.received).name,
                again,
            )
        return self.received is not None

    def grace_left(self, grace_s: float) -> float | None:
        """Of the `grace_s` seconds a scheduler gives between its signal and its kill, those left
        (None: no signal came)."""
        if self.received_at is None:
            return None
        return max(grace_s - (time.monotonic() - self.received_at), 0.0)

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def hand_over(self) -> None:
        """Call the handler the received signal had before this one, if it was a Python function
        (submitit's requeues the job, and exits). Call it once the run is recorded and closed:
        it may not return. Ctrl-C's own handler is not called: the run has stopped already."""
        handler = self.previous.get(self.received)
        if is_python_handler(handler):
            name = signal.Signals(self.received).name
            log.info("handing %s over to the handler it replaced (%s)", name, getattr(handler, "__qualname__", handler))
            handler(self.received, None)


def is_python_handler(handler: object) -> bool:
    """Whether a signal's handler is a Python function someone installed (submitit's requeue, a
    sweep's StopBetweenJobs), not Python's default Ctrl-C handler, SIG_DFL or SIG_IGN."""
    return callable(handler) and handler is not signal.default_int_handler


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold the stop signals while DataLoader workers are started (they inherit the mask and
    ignore the signals before letting them through); the main process gets any that came."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """In a DataLoader worker: leave SIGTERM and SIGINT to the main process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
