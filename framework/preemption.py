"""A graceful stop on SIGTERM: what schedulers (SLURM preemption, Kubernetes, torchrun) send
before they kill a job.

The handler only raises a flag; the training loop looks at it after each optimizer step, writes
a checkpoint at that exact step and ends the run with status "preempted", so `resume=auto`
continues from there instead of from the last periodic checkpoint. The previous handler is put
back when the run ends: in a sweep run by Hydra's basic launcher, jobs share one process.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("framework")


class StopOnSignal:
    def __init__(self, signals=(signal.SIGTERM,)):
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python only lets the main thread install handlers
        for sig in signals:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            log.warning("received %s: stopping after this step, with a checkpoint", signal.Signals(signum).name)
        self.received = signum

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
