"""The stop-signal handler itself (framework.engine.preemption.StopOnSignal)."""

from __future__ import annotations

import os
import signal

from framework.engine.preemption import StopOnSignal


def test_the_signal_handler_itself_never_logs(caplog):
    """A signal can land while a log line is being flushed; a handler that logged then broke
    the log file's stream ("reentrant call inside BufferedWriter", seen in CI). It only raises
    the flag; the loop says what came, once, at a step boundary."""
    stop = StopOnSignal()
    try:
        with caplog.at_level("INFO", logger="framework"):
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM and caplog.records == []
            assert stop.stop_requested() and stop.stop_requested()
        assert [r.getMessage() for r in caplog.records] == [
            "received SIGTERM: stopping after this step, with a checkpoint"
        ]
    finally:
        stop.close()


def test_ctrl_c_is_not_handed_to_pythons_own_handler():
    """Python's SIGINT handler raises KeyboardInterrupt: the run has already stopped cleanly."""
    stop = StopOnSignal(["SIGINT"])
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.stop_requested()
    finally:
        stop.close()
    stop.hand_over()  # no KeyboardInterrupt
