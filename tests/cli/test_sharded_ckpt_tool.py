"""The real `python -m framework.ckpt` on a sharded checkpoint's directory, in fresh processes:
torch.distributed.checkpoint imported only where a command meets a directory, and the exit
codes. What the commands do is tests/integration/test_sharded_tools.py's."""

from __future__ import annotations

import shutil

from helpers import flip_middle_byte, run_together

# As tests/integration/test_sharded_tools.py trains it (one run for both, in a session running both).
FSDP = ("model=mlp", "trainer.max_epochs=1", "logger=none", "trainer.strategy=fsdp", "determinism.num_threads=1")


def test_convert_and_verify_a_damaged_directory(trained_run, tmp_path):
    run = shutil.copytree(trained_run(*FSDP), tmp_path / "run")
    flip_middle_byte(run / "checkpoints" / "best" / "__0_0.distcp")
    converted, damaged = run_together(
        ("framework.ckpt", "convert", run / "checkpoints" / "last", tmp_path / "last.pt"),
        ("framework.ckpt", "verify", run),
    )
    assert converted.returncode == 0 and (tmp_path / "last.pt").is_file(), converted.stdout + converted.stderr
    assert damaged.returncode == 4 and "best/__0_0.distcp does not match its xxh3" in damaged.stdout, damaged.stdout
    assert damaged.stdout.endswith("2 checkpoints: 1 bad\n") and "Traceback" not in damaged.stderr, damaged.stdout
