"""A SIGTERM that lands among an optimizer step's micro-batches, through the command line: the
run finishes that step, saves there (a whole number of steps: no half-added gradients in the
checkpoint), exits as preempted, and resume=auto ends with the bits of a run never stopped."""

from __future__ import annotations

import torch
from helpers import finish_together, read_summary, start_cli, train_in_process

from framework.cli.compare import compare as differences

# Digits in micro-batches of 16, 4 to an optimizer step (20 steps, 79 micro-batches); dropout on.
# The task is Classification's, with a SIGTERM to itself at the loss's SIGNAL_AT-th call.
RUN = ["model=mlp", "model.hidden=[32]", "data.batch_size=16", "trainer.accumulate_grad_batches=4",
       "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "logger=none",
       "task._target_=user_modules.SignalsMidAccumulation", "resume=auto"]  # fmt: skip
SIGNAL_AT = 30  # the 2nd micro-batch of optimizer step 8 (calls 29 to 32)
STOPPED_AT = 8


def test_a_sigterm_mid_accumulation_stops_at_the_next_optimizer_step_and_resumes_exactly(tmp_path):
    signalled, straight = tmp_path / "signalled", tmp_path / "straight"
    proc = start_cli(signalled, *RUN, env={"SIGTERM_AT_LOSS_CALL": str(SIGNAL_AT)})
    train_in_process(straight, *RUN)  # meanwhile, on the other CPU
    done = finish_together({"signalled": proc})["signalled"]

    assert done.returncode == 128 + 15 and "Traceback" not in done.stderr, done.stderr
    summary = read_summary(signalled)
    assert (summary["status"], summary["signal"], summary["global_step"]) == ("preempted", "SIGTERM", STOPPED_AT)
    last = torch.load(signalled / "checkpoints" / "last.pt", weights_only=True)
    assert last["global_step"] == STOPPED_AT and last["loader_state"] == {"epoch": 0, "position": 4 * STOPPED_AT}

    train_in_process(signalled, *RUN)  # the requeue: a new process, which does not signal
    assert differences(straight, signalled) == []
    assert read_summary(signalled)["fingerprint"] == read_summary(straight)["fingerprint"]
