"""trainer.compile, in process: a compiled run stopped and resumed ends with the bits of one that
never stopped; a checkpoint resumes across the switch (with allow_config_changes, recorded as
another trajectory) and holds the plain module's keys; the compile time is logged.

Compiling costs seconds per graph on 2 cores, so the runs are few and tiny (an MLP of 16 units, 3
steps an epoch: two of 64 samples and one of 12, which compiles a second graph with a dynamic
batch size) and each is shared by the assertions that need it. Each run starts with dynamo's
in-memory caches emptied, as a new process would: a run must not reuse graphs that an earlier run
in this process compiled (inductor's on-disk cache still serves them, which keeps this cheap).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import read_summary, train_in_process

from framework.cli.compare import compare as differences
from framework.config.errors import ConfigError

TINY = [
    "data=synthetic",
    "data.source.n_samples=200",  # 140 training samples: batches of 64, 64 and 12
    "model=mlp",
    "model.hidden=[16]",  # with dropout: the compiled graph draws random numbers
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "logger=none",
]
COMPILED = [*TINY, "trainer.compile=true"]
STOP = "trainer.max_steps=4"  # mid-epoch: epoch 1, after its first batch
GO_ON = "trainer.max_steps=null"
ALLOW = "allow_config_changes=true"
COMPILE_LINE = re.compile(r"torch\.compile: the first step took \d+\.\d s \(compiling\)")


def train(run_dir: Path, *overrides: str) -> list[str]:
    """Train in process from fresh dynamo caches; returns the framework's log messages."""
    torch._dynamo.reset()
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("framework")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train_in_process(run_dir, *overrides)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        torch._dynamo.reset()  # no graph of this run outlives it (nor counts towards a recompile limit)
    return messages


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs the tests share (never changed: a test that resumes one copies it first): compiled
    straight through, compiled and stopped at STOP, eager and stopped at STOP; with each one's log."""
    folder = tmp_path_factory.mktemp("compile")
    logs = {
        "straight": train(folder / "straight", *COMPILED),
        "stopped": train(folder / "stopped", *COMPILED, STOP),
        "eager_stopped": train(folder / "eager_stopped", *TINY, STOP),
    }
    return {name: (folder / name, log) for name, log in logs.items()}


def resumed_copy(runs, name: str, tmp_path: Path, *overrides: str) -> tuple[Path, list[str]]:
    run = tmp_path / name
    shutil.copytree(runs[name][0], run)
    log = train(run, *overrides, f"resume={run}", GO_ON)
    return run, log


def model_keys(run: Path) -> list[str]:
    return list(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state_dict"])


def test_a_compiled_run_stopped_and_resumed_ends_as_one_never_stopped(runs, tmp_path):
    run, log = resumed_copy(runs, "stopped", tmp_path, *COMPILED)
    straight = runs["straight"][0]
    assert differences(straight, run) == []
    assert read_summary(run)["fingerprint"] == read_summary(straight)["fingerprint"]
    summary = read_summary(run)
    assert summary["follows_original_trajectory"] is True and summary["resumes"][-1]["exact"] is True
    assert any(COMPILE_LINE.fullmatch(message) for message in log)  # the resumed run compiled too


def test_the_compile_time_is_logged_once_and_only_when_compiling(runs):
    assert len([m for m in runs["straight"][1] if COMPILE_LINE.fullmatch(m)]) == 1
    assert not [m for m in runs["eager_stopped"][1] if m.startswith("torch.compile")]


def test_checkpoints_hold_the_plain_modules_keys(runs):
    compiled, eager = model_keys(runs["stopped"][0]), model_keys(runs["eager_stopped"][0])
    assert compiled == eager and not [key for key in compiled if "_orig_mod" in key]


@pytest.mark.parametrize(
    ("name", "switch"), [("eager_stopped", "trainer.compile=true"), ("stopped", "trainer.compile=false")]
)
def test_switching_compile_on_resume_is_refused_in_one_line(runs, tmp_path, name, switch):
    run = tmp_path / name
    shutil.copytree(runs[name][0], run)
    with pytest.raises(ConfigError) as refused:
        train(run, *TINY, switch, f"resume={run}", GO_ON)
    said = str(refused.value)
    assert "trainer.compile" in said and ALLOW in said and "\n" not in said


@pytest.mark.parametrize(
    ("name", "switch", "compiles"),
    [("eager_stopped", "trainer.compile=true", True), ("stopped", "trainer.compile=false", False)],
)
def test_a_checkpoint_resumes_across_the_switch_as_another_trajectory(runs, tmp_path, name, switch, compiles):
    run, log = resumed_copy(runs, name, tmp_path, *TINY, switch, ALLOW)
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["global_step"] == 6
    assert summary["follows_original_trajectory"] is False
    assert summary["resumes"][-1]["changed_keys"] == ["trainer.compile", "trainer.max_steps"]
    assert any(COMPILE_LINE.fullmatch(message) for message in log) == compiles
    assert model_keys(run) == model_keys(runs["eager_stopped"][0])
