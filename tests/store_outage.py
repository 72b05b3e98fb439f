"""A test callback that makes the tests' S3 server unreachable for a span of optimizer steps
(tests/integration/test_remote_copy.py): at the same steps in every run, unlike a timer."""

from __future__ import annotations

import logging
import threading

# The S3Server (tests/s3_server.py) the callback cuts off: set by the test before the run, since
# a callback is built from the config, which holds no objects.
SERVER = None
_cut = []  # the outage in force, if any: ended by the callback, or by end_outage() after a failed run


class RemoteWarnings(logging.Handler):
    """Sets `seen` at the first warning about checkpoint.remote (an upload that failed)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "checkpoint.remote" in record.getMessage():
            self.seen.set()


class OutageAtSteps:
    """The server refuses every connection from optimizer step `start` to step `end`, and longer
    if no upload has failed by then (the uploads run in a thread of their own), up to `wait_s`."""

    def __init__(self, start: int, end: int, wait_s: float = 30):
        self.start, self.end, self.wait_s = start, end, wait_s
        self.warnings = RemoteWarnings()

    def on_step_end(self, run) -> None:
        if run.step == self.start:
            logging.getLogger("framework").addHandler(self.warnings)
            outage = SERVER.outage()
            outage.__enter__()
            _cut.append(outage)
        elif run.step == self.end:
            self.warnings.seen.wait(self.wait_s)
            logging.getLogger("framework").removeHandler(self.warnings)
            end_outage()

    def on_fit_end(self, run) -> None:
        logging.getLogger("framework").removeHandler(self.warnings)
        end_outage()


def end_outage() -> None:
    while _cut:
        _cut.pop().__exit__(None, None, None)
