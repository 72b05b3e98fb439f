"""Importing another program's checkpoint and resuming from it, as a user types it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, THEIRS, assert_one_line_error, read_summary, run_together, tutorial_checkpoint


@pytest.mark.slow
def test_import_and_resume_through_the_command_line(tmp_path):
    """What a user types: migrate with the opt-in, then a run that resumes from the file."""
    src = tmp_path / "checkpoint_epoch_3.pt"
    tutorial_checkpoint(src, epoch=3, with_streams=True)
    dst = tmp_path / "imported.pt"
    migrate = [sys.executable, "-m", "framework.ckpt", "migrate", str(src), str(dst), *THEIRS]
    # (Without the opt-in it is refused: tests/integration/test_migrate.py.)
    done = subprocess.run([*migrate, "--unpickle-numpy", str(src)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    run = tmp_path / "run"
    resumed = subprocess.run([sys.executable, "-m", "framework", f"resume={dst}", f"hydra.run.dir={run}"], cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "not bit for bit" in resumed.stdout + resumed.stderr
    assert read_summary(run)["status"] == "completed"


def test_migrate_names_a_numpy_class_that_numpy_does_not_have(tmp_path, monkeypatch):
    class FakeDType:
        """Pickled under a name of NumPy's form, which the opt-in lets through to the look-up."""

        def __reduce__(self):
            return FakeDType, ()

    FakeDType.__module__, FakeDType.__qualname__ = "numpy.dtypes", "FakeDType"
    monkeypatch.setattr(np.dtypes, "FakeDType", FakeDType, raising=False)  # so that pickle finds it here
    src = tmp_path / "checkpoint_epoch_1.pt"
    torch.save({"epoch": 1, "model_state_dict": {"w": torch.zeros(1)}, "dtype": FakeDType()}, src)
    dst = tmp_path / "imported.pt"
    proc = run_together(("framework.ckpt", "migrate", src, dst, "model=mlp", "--unpickle-numpy", src))[0]
    assert_one_line_error(proc, 5, f"{src} pickles numpy.dtypes.FakeDType, which NumPy", "nothing of it was unpickled")
    assert not dst.exists()
