"""Saving in the background (checkpoint.async_save=true): the state is copied at the
save point and written by one background thread while training goes on; exact resume holds, a
failed background write stops the run, and a stop waits for the save in flight.
(Killed mid-write: tests/cli/test_killed_saves.py kills a background save at each of its boundaries.)"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import torch
from helpers import compose_config, read_summary, train_in_process

import framework.engine.training
from framework.checkpoint import CheckpointError, io, policy
from framework.cli.compare import compare as differences

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


@pytest.fixture
def slow_copy(monkeypatch):
    """The background copy of the weights starts only once the loop waits for it (before its next
    optimizer step, or for the whole save): the forward and backward pass in between run first."""
    real_copy, waited = policy.copy_pending, threading.Event()

    def copy_when_waited_for(*args):
        assert waited.wait(timeout=60), "the loop never waited for the snapshot"
        waited.clear()
        real_copy(*args)

    for name in ("wait_for_snapshot", "wait"):
        real_wait = getattr(policy.Checkpointer, name)

        def wait(self, real_wait=real_wait):
            if self.copying is not None:
                waited.set()
            real_wait(self)

        monkeypatch.setattr(policy.Checkpointer, name, wait)
    monkeypatch.setattr(policy, "copy_pending", copy_when_waited_for)


def test_background_saves_change_nothing_and_resume_exactly_mid_epoch(straight, tmp_path, slow_copy):
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
    copied, _ = snapshot(payload)
    before = {k: v.clone() for k, v in weights.items()}
    for tensor in weights.values():
        tensor.add_(1.0)  # what the next optimizer step does in place
    assert all(torch.equal(copied["model_state_dict"][k], v) for k, v in before.items())
    assert type(copied["model_state_dict"]) is type(weights) and copied["meta"] == payload["meta"]


def saver(folder) -> policy.Checkpointer:
    return policy.Checkpointer(compose_config(ASYNC).checkpoint, folder)


@pytest.fixture
def held_copy(monkeypatch) -> threading.Event:
    """The background copy waits until the test sets this event."""
    held, real_copy = threading.Event(), policy.copy_pending
    monkeypatch.setattr(policy, "copy_pending", lambda *args: (held.wait(timeout=60), real_copy(*args)))
    return held


def save_point(checkpointer, model, optimizer, step) -> None:
    state = {**dict.fromkeys(io.required_keys("full")), "model_state_dict": model.state_dict(),
             "optimizer_state_dict": optimizer.state_dict(), "meta": {"kind": "full"}}  # fmt: skip
    checkpointer.save(lambda kind: state, event="step", epoch=0, step=step, position=step, metric=None,
                      improved=False, copy_later=[*model.parameters()])  # fmt: skip


def test_the_loop_waits_for_the_copy_of_the_weights_before_it_changes_them(tmp_path, held_copy):
    """The copy of the parameters runs in the background; wait_for_snapshot holds the loop's next
    optimizer step until it is done, and the file holds the save point's weights."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    checkpointer = saver(tmp_path)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    save_point(checkpointer, model, optimizer, step=1)
    model(torch.ones(3, 4)).sum().backward()  # the next step's forward and backward go on meanwhile

    stepped = threading.Event()

    def optimizer_step():
        checkpointer.wait_for_snapshot()
        optimizer.step()
        stepped.set()

    step = threading.Thread(target=optimizer_step)
    step.start()
    assert not stepped.wait(timeout=0.3), "the weights changed while the save was still copying them"
    held_copy.set()
    step.join()
    assert stepped.is_set()
    checkpointer.close()
    written = torch.load(tmp_path / "last.pt", weights_only=True)["model_state_dict"]
    assert all(torch.equal(written[k], saved[k]) for k in saved)
    assert not torch.equal(model.weight, saved["weight"])  # the step did happen, after the copy


def test_weights_changed_before_their_copy_stop_the_run_instead_of_a_torn_checkpoint(tmp_path, held_copy):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    checkpointer = saver(tmp_path)
    save_point(checkpointer, model, optimizer, step=1)
    with torch.no_grad():
        model.bias.add_(1.0)  # outside the optimizer's step, before the copy was done
    held_copy.set()
    with pytest.raises(CheckpointError, match=r"model_state_dict\.bias changed before the background save"):
        checkpointer.wait_for_snapshot()
    checkpointer.close()  # reported once: not raised again
    assert not (tmp_path / "last.pt").exists() and not list(tmp_path.glob(".*tmp*"))


def test_a_model_that_edits_its_weights_in_forward_stops_with_a_one_line_error(tmp_path, slow_copy):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"model_state_dict\.net\.1\.bias changed before the background"):
        train_in_process(run, *RUN, ASYNC, "model._target_=user_modules.EditsWeightsInForward")
    summary = read_summary(run)
    assert summary["status"] == "failed" and "give checkpoint.async_save=false" in summary["error"]
    assert not (run / "checkpoints" / "last.pt").exists()


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
    real_step, calls = framework.engine.training.train_step, []

    def step_then_signal(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 11:  # right after the save at step 10 was handed to the background
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(framework.engine.training, "train_step", step_then_signal)
    run = tmp_path / "run"
    summary = train_in_process(run, *RUN, ASYNC)
    assert (summary["status"], summary["global_step"]) == ("preempted", 11)
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert {e["file"]: e["step"] for e in index["files"]}["last.pt"] == 11
    monkeypatch.undo()
    train_in_process(run, *RUN, ASYNC, "resume=auto")
    assert differences(straight, run) == []
