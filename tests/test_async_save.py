"""Saving in the background (checkpoint.async_save=true, issue 12): the state is copied at the
save point and written by one background thread while training goes on; exact resume holds, a
failed background write stops the run, and a stop waits for the save in flight.
(Killed mid-write: tests/test_hardening.py kills a background save at each of its boundaries.)"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import torch
from helpers import read_summary, train_in_process

import framework.train
from framework.checkpoint import CheckpointError, io
from framework.compare import compare as differences

# 22 steps an epoch; a periodic file every 5 steps, so saves fall inside epochs too.
RUN = ["model=mlp", "model.hidden=[32]", "data=synthetic", "trainer.max_epochs=2", "logger=none",
       "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=5"]  # fmt: skip
ASYNC = "checkpoint.async_save=true"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Saving synchronously, never stopped."""
    run = tmp_path_factory.mktemp("async") / "straight"
    train_in_process(run, *RUN)
    return run


def test_background_saves_change_nothing_and_resume_exactly_mid_epoch(straight, tmp_path):
    run = tmp_path / "run"
    train_in_process(run, *RUN, ASYNC, "trainer.max_steps=27")  # epoch 2, batch 5: a step save there
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["global_step"], ckpt["loader_state"]) == (27, {"epoch": 1, "position": 5})
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert {e["file"] for e in index["files"]} >= {"last.pt", "step_00000025.pt", "best.pt"}
    for entry in index["files"]:  # every listed file is there, whole, as listed
        path = run / "checkpoints" / entry["file"]
        assert (path.stat().st_size, io.sha256_of(path)) == (entry["size"], entry["sha256"])

    summary = train_in_process(run, *RUN, ASYNC, "resume=auto", "trainer.max_steps=null")
    assert summary["resumes"][-1]["global_step"] == 27
    assert differences(straight, run) == []


def test_the_snapshot_is_a_copy_that_later_steps_cannot_change():
    from framework.checkpoint.policy import snapshot

    weights = torch.nn.Linear(3, 2).state_dict()
    payload = {"model_state_dict": weights, "rng": [torch.get_rng_state()], "meta": {"kind": "full"}}
    copied = snapshot(payload)
    before = {k: v.clone() for k, v in weights.items()}
    for tensor in weights.values():
        tensor.add_(1.0)  # what the next optimizer step does in place
    assert all(torch.equal(copied["model_state_dict"][k], v) for k, v in before.items())
    assert type(copied["model_state_dict"]) is type(weights) and copied["meta"] == payload["meta"]


def test_a_background_write_that_fails_stops_the_run(tmp_path, monkeypatch):
    real_write, calls = io.write, []

    def fail_the_second(payload, path, discard):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise CheckpointError(f"cannot write {path}: No space left on device. Existing checkpoints are kept.")
        return real_write(payload, path, discard)

    monkeypatch.setattr(io, "write", fail_the_second)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="last.pt: No space left on device"):  # the save at step 10
        train_in_process(run, *RUN, ASYNC)
    assert all(name.startswith("checkpoint") for name in calls)  # written by the background thread
    assert len(calls) == 2  # nothing saved after the failure: the run stopped before the next save point
    summary = read_summary(run)
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert {e["file"]: e["step"] for e in index["files"]} == {"last.pt": 5, "step_00000005.pt": 5}
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_a_stop_by_a_signal_waits_for_the_save_in_flight(straight, tmp_path, monkeypatch):
    real_step, calls = framework.train.train_step, []

    def step_then_signal(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 11:  # right after the save at step 10 was handed to the background
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(framework.train, "train_step", step_then_signal)
    run = tmp_path / "run"
    summary = train_in_process(run, *RUN, ASYNC)
    assert (summary["status"], summary["global_step"]) == ("preempted", 11)
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert {e["file"]: e["step"] for e in index["files"]}["last.pt"] == 11
    monkeypatch.undo()
    train_in_process(run, *RUN, ASYNC, "resume=auto")
    assert differences(straight, run) == []
