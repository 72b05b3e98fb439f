"""metrics.jsonl: appended line by line, cut back to where a resumed run's checkpoint was taken."""

from __future__ import annotations

import json

from framework.tracking.jsonl_sink import JsonlSink
from framework.tracking.sinks import RunInfo


def write_history(run_dir, events):
    run_dir.mkdir(exist_ok=True)
    lines = [json.dumps({"event": e, "epoch": 0, "step": s, "train/loss": 1.0}) + "\n" for e, s in events]
    (run_dir / "metrics.jsonl").write_text("".join(lines))


def opened(run_dir, keep_lines=None, resume_step=None):
    sink = JsonlSink(keep_lines)
    sink.open(RunInfo(run_dir, "run", {}, {}, resume_step))
    if resume_step is not None:
        assert sink.rewind(resume_step)
    return sink


def events(run_dir):
    return [(r["event"], r["step"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_a_resumed_run_cuts_back_to_the_lines_its_checkpoint_recorded_and_goes_on(tmp_path):
    # A stop at step 4: its checkpoint was saved before the stop's line, so the cut is by count.
    write_history(tmp_path, [("step", 2), ("step", 4), ("stop", 4), ("step", 6)])
    sink = opened(tmp_path, keep_lines=2, resume_step=4)
    assert sink.lines == 2 and events(tmp_path) == [("step", 2), ("step", 4)]
    sink.log("step", 0, 6, {"train/loss": 0.5})
    sink.close("completed")
    assert events(tmp_path) == [("step", 2), ("step", 4), ("step", 6)]
    assert sink.lines == 3


def test_an_older_checkpoint_without_the_count_cuts_by_step_and_drops_a_half_written_line(tmp_path):
    write_history(tmp_path, [("step", 2), ("step", 4), ("step", 6)])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "step", "epo')  # a run killed mid-line
    sink = opened(tmp_path, resume_step=4)
    sink.close("completed")
    assert events(tmp_path) == [("step", 2), ("step", 4)]


def test_a_fresh_run_appends_to_nothing_and_counts_its_lines(tmp_path):
    sink = opened(tmp_path)
    for step in (1, 2):
        sink.log("step", 0, step, {"train/loss": 1.0})
    assert sink.lines == 2
    sink.close("completed")
    sink.close("completed")  # twice is harmless
    assert events(tmp_path) == [("step", 1), ("step", 2)]
