"""A key added with `+` that nothing reads stops the command line in one line, before training."""

from __future__ import annotations

from helpers import QUICK, run_cli


def test_plus_keys_that_nothing_reads_stop_the_run_in_one_line(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        run,
        *QUICK,
        "trainer.max_steps=2",
        "+trainer.accumulate_grad=4",
        "+trainer.ema_decay=0.9",
        "+checkpoint.patience=3",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for key in ("trainer.accumulate_grad", "trainer.ema_decay", "checkpoint.patience"):
        assert f"{key}: no such key; nothing reads it" in lines[0]
    assert "The keys of trainer: max_epochs, max_steps," in lines[0]
    assert "The keys of checkpoint: enabled, save_last," in lines[0]
    assert not (run / "metrics.json").exists() and not (run / "checkpoints").exists()
