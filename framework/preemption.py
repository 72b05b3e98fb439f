"""A graceful stop on SIGTERM (what SLURM preemption, Kubernetes and torchrun send before they
kill a job) and on Ctrl-C.

The handler only raises a flag (it may run in the middle of a log write, so it must not log
itself: that once broke the log file's stream); the training loop looks at it after each
optimizer step, says what it received, writes
a checkpoint at that exact step and ends the run ("preempted" after SIGTERM, exit 143;
"interrupted" after Ctrl-C, exit 130), so `resume=auto` continues from there. A second Ctrl-C
aborts at once. The previous handlers are put back when the run ends: in a sweep run by Hydra's
basic launcher, jobs share one process.

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
from collections.abc import Iterator

log = logging.getLogger("framework")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What a process killed by the signal exits with; a run stopped gracefully by it says the same.
EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}


class StopOnSignal:
    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.received: int | None = None
        self.announced = False
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python only lets the main thread install handlers
        for sig in signals:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self.received = signum

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

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


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
