"""A test callback that makes the tests' S3 server unreachable for a span of optimizer steps
(tests/integration/test_remote_copy.py): at the same steps in every run, unlike a timer."""

from __future__ import annotations

# The S3Server (tests/s3_server.py) the callback cuts off: set by the test before the run, since
# a callback is built from the config, which holds no objects.
SERVER = None
_cut = []  # the outage in force, if any: ended by the callback, or by end_outage() after a failed run


class OutageAtSteps:
    """The server refuses every connection from optimizer step `start` to step `end`."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end

    def on_step_end(self, run) -> None:
        if run.step == self.start:
            outage = SERVER.outage()
            outage.__enter__()
            _cut.append(outage)
        elif run.step == self.end:
            end_outage()

    def on_fit_end(self, run) -> None:
        end_outage()


def end_outage() -> None:
    while _cut:
        _cut.pop().__exit__(None, None, None)
