"""The language model under real `torchrun` (2 processes, gloo on this CPU machine): stopped
inside an epoch and resumed, it ends with the bits of a run never stopped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import ROOT, TESTS, read_summary

from framework.cli.compare import compare as differences

# About 800 windows of 32 characters a rank in an epoch, in batches of 8: every step is inside the
# first epoch. The run ends at step 6; the stopped one at step 3.
TINY = ["task=language_model", "model=transformer", "data=text", "model.n_layer=1", "model.n_embd=32",
        "data.source.block_size=32", "data.batch_size=8", "data.val_fraction=0.01", "data.test_fraction=0.01",
        "trainer.max_steps=6", "logger=none"]  # fmt: skip


def torchrun(run_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "framework"]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.Popen([*cmd, f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def test_a_language_model_on_two_ranks_stopped_mid_epoch_resumes_exactly(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    # Started together: each pays for its own interpreters and process group.
    both = torchrun(straight, *TINY), torchrun(run, *TINY, "trainer.max_steps=3")
    try:
        for proc in both:
            finished(proc)
    finally:
        for proc in both:
            if proc.poll() is None:
                proc.terminate()  # torchrun passes it on to its ranks
                proc.communicate()
    finished(torchrun(run, "resume=auto", "trainer.max_steps=6"))
    resumed = read_summary(run)
    assert resumed["resumes"][0]["position"] == 3 and resumed["global_step"] == 6
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["meta"]["world_size"] == 2
    assert differences(straight, run) == []
