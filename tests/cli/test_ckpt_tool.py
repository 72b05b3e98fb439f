"""The real `python -m framework.ckpt`: its subcommands, help and exit codes in a fresh process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, assert_one_line_error, run_together

# Two epochs of the small MLP, a numbered file each epoch: best.pt, epoch_0001.pt,
# epoch_0002.pt, last.pt and index.json.
QUICK = ("model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_epochs=1")


@pytest.fixture
def runs(trained_run, tmp_path_factory):
    """Two runs that differ only by seed (shared by the whole test session), as runs/seed0 and
    runs/seed1; never changed by a test (last.pt, best.pt and epoch_0002.pt are hard links of one
    file): a test that damages a file copies it first."""
    root = tmp_path_factory.mktemp("ckpt_tool")
    for seed in (0, 1):
        (root / f"seed{seed}").symlink_to(trained_run(*QUICK, f"seed={seed}"))
    return root


def copy_run(runs, tmp_path, seed=0):
    """A run directory of the test's own, with separate files (no hard links between them)."""
    return shutil.copytree(runs / f"seed{seed}", tmp_path / f"seed{seed}")


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_the_command_line(runs, tmp_path):
    """The real `python -m framework.ckpt`, once per subcommand (started together: each pays
    for its own interpreter and torch)."""
    damaged_run = copy_run(runs, tmp_path)
    truncate(damaged_run / "checkpoints" / "epoch_0002.pt")
    last = runs / "seed0" / "checkpoints" / "last.pt"
    commands = {
        "help": ["--help"],
        "inspect": ["inspect", last],
        "verify": ["verify", damaged_run],
        "diff": ["diff", last, runs / "seed1" / "checkpoints" / "last.pt"],
        "export": ["export", last, tmp_path / "model.safetensors"],
    }
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "framework.ckpt", *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    # `... | head`: the reader is gone before the tool writes; it ends as the shell's tools do.
    reader_gone = {}
    for tool, args in {"ckpt": ["inspect", last], "compare": [runs / "seed0", runs / "seed1"]}.items():
        read, write = os.pipe()
        os.close(read)
        reader_gone[tool] = subprocess.Popen([sys.executable, "-m", f"framework.{tool}", *map(str, args)], cwd=ROOT,
                                             stdout=write, stderr=subprocess.PIPE, text=True)  # fmt: skip
        os.close(write)
    results = {name: (*proc.communicate(timeout=120), proc.returncode) for name, proc in started.items()}
    for tool, proc in reader_gone.items():
        _, err = proc.communicate(timeout=120)
        assert (proc.returncode, err) == (128 + signal.SIGPIPE, ""), (tool, proc.returncode, err)
    results = {name: (code, out, err) for name, (out, err, code) in results.items()}
    expected_codes = {"help": 0, "inspect": 0, "verify": 4, "diff": 1, "export": 0}
    assert {name: result[0] for name, result in results.items()} == expected_codes, results
    assert all("Traceback" not in err for _, _, err in results.values())
    help_text = results["help"][1]
    assert all(name in help_text for name in ("inspect", "verify", "diff", "export", "exit codes:"))
    assert "BAD   epoch_0002.pt" in results["verify"][1] and "4 files: 1 bad" in results["verify"][1]
    assert "global step     40" in results["inspect"][1]
    assert "seed: 0 -> 1" in results["diff"][1]
    assert (tmp_path / "model.safetensors").is_file()


def test_ckpt_on_a_named_pipe_says_so_without_opening_it(tmp_path):
    pipe = tmp_path / "last.pt"
    os.mkfifo(pipe)
    verified, migrated, inspected = run_together(
        ("framework.ckpt", "verify", pipe),
        ("framework.ckpt", "migrate", pipe, tmp_path / "new.pt", "model=mlp"),
        ("framework.ckpt", "inspect", pipe),
    )
    for proc in (verified, migrated, inspected):
        assert_one_line_error(proc, 3, f"{pipe} is a named pipe (FIFO), not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
