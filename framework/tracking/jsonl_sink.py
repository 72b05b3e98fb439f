"""metrics.jsonl: a line per logged step, per epoch, per stop and for the test. Always on."""

from __future__ import annotations

import json

from framework.atomic import json_text, replace_atomically
from framework.runs.layout import RunLayout
from framework.tracking.sinks import MetricSink, RunInfo


class JsonlSink(MetricSink):
    """Appends a JSON line per event to the run's metrics.jsonl.

    A resumed run goes on where its checkpoint was taken: the file is cut back to the lines it had
    then. The checkpoint records that count (`metrics_lines`, read from `lines`): the line of a
    stop at the checkpoint's own step was written after the save, so a cut by step would keep it.
    A checkpoint without the count (an older version's) is cut by step.
    """

    def __init__(self, keep_lines: int | None = None):
        self.keep_lines = keep_lines
        self.lines = 0
        self.file = None

    def open(self, run: RunInfo) -> None:
        self.path = RunLayout(run.run_dir).history
        self.lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self.file = open(self.path, "a", buffering=1)  # line-buffered: a killed run loses no whole line

    def rewind(self, step: int) -> bool:
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        if self.keep_lines is not None:
            kept = lines[: self.keep_lines]
        else:
            kept = [line for line in lines if logged_at(line) <= step]
        if len(kept) < len(lines):
            self.file.close()
            replace_atomically(self.path, "".join(kept))
            self.file = open(self.path, "a", buffering=1)
        self.lines = len(kept)
        return True

    def log(self, event: str, epoch: int, step: int, metrics: dict) -> None:
        self.file.write(json_text({"event": event, "epoch": epoch, "step": step, **metrics}) + "\n")
        self.lines += 1

    def close(self, status: str) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def logged_at(line: str) -> float:
    """The step of a line; a line a killed run left half-written is past any step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
