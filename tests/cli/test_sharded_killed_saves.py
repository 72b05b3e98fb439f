"""A sharded checkpoint's save (trainer.strategy=fsdp, one process) killed at each of its commit
boundaries leaves a run whose newest whole checkpoint reads back and resumes exactly; a save
that fails in the background stops the run with one line. Through the real command line (the
kills on rank 0 while rank 1 waits, under torchrun: tests/cli/test_sharded_training.py)."""

from __future__ import annotations

import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import compose_config, read_summary, run_cli, start_cli, train_in_process, wait_until_stopped

from framework.checkpoint import storage
from framework.cli.compare import compare as differences
from framework.faults import KILL_ENV, STOP_ENV
from framework.runs import layout, resume

# One process (a one-rank group), one thread (two would spin on 2 CPUs): 20 steps, a directory
# every 3 steps, the newest 2 kept (tests/integration/test_sharded_store.py trains the same run
# never stopped).
ONE_PROCESS = ["model=mlp", "trainer.max_epochs=1", "logger=none", "trainer.strategy=fsdp",
               "checkpoint.every_n_steps=3", "checkpoint.keep_last_n=2", "determinism.num_threads=1"]  # fmt: skip

# Each kill in turn, each resuming what the one before left: (boundary, which time it is reached
# in that process, the step `last` holds after it). Before anything is written (step 6's save:
# `last` stays step 3's), once listed (step 9's `last`, its periodic name not made yet), once
# the periodic name exists but is not listed (step 15's), once retention is done (step 18's).
KILLS = [("room_checked:2", 3), ("indexed:2", 9), ("linked:2", 15), ("retained:1", 18)]


def killed_in_turn(run: Path) -> list:
    """Each kill's process, and a copy of the checkpoints it left."""
    left = []
    for i, (boundary, _) in enumerate(KILLS):
        resumed = ["resume=auto"] if i else []
        proc = run_cli(run, *ONE_PROCESS, *resumed, env={KILL_ENV: boundary}, check=False)
        copy = shutil.copytree(run / layout.CHECKPOINTS, run.parent / f"after_{i}" / layout.CHECKPOINTS)
        left.append((proc, copy.parent))
    return left


def failed_in_the_background(run: Path):
    """A background save whose temporary directory is replaced by a file while the process is
    stopped after its room check (step 6's save): DCP cannot write there."""
    proc = start_cli(run, *ONE_PROCESS, "checkpoint.async_save=true", env={STOP_ENV: "room_checked:2"})
    try:
        wait_until_stopped(proc)
        (tmp,) = (run / layout.CHECKPOINTS).glob(layout.TEMPORARIES)
        tmp.rmdir()
        tmp.write_text("in the way")
        proc.send_signal(signal.SIGCONT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    return proc.returncode, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The chain of kills and the failing background save, side by side."""
    folder = tmp_path_factory.mktemp("sharded_kills")
    (folder / "killed").mkdir()
    with ThreadPoolExecutor(2) as pool:
        kills = pool.submit(killed_in_turn, folder / "killed" / "run")
        failed = pool.submit(failed_in_the_background, folder / "failed")
        return {"killed": (folder / "killed" / "run", kills.result()), "failed": (folder / "failed", failed.result())}


def test_a_save_killed_at_each_boundary_leaves_its_newest_whole_checkpoint_and_the_run_resumes_exactly(
    runs, trained_run
):
    run, kills = runs["killed"]
    cfg = compose_config(*ONE_PROCESS)
    for (boundary, step), (proc, after) in zip(KILLS, kills, strict=True):
        assert proc.returncode == -signal.SIGKILL, f"never reached {boundary}: {proc.stderr[-3000:]}"
        point = resume.find("auto", after, cfg)  # read back: every file checked against its checksums
        assert (point.path.name, point.ckpt["global_step"]) == ("last", step), boundary
    train_in_process(run, *ONE_PROCESS, "resume=auto")  # the last requeue, in process: to the end
    assert differences(trained_run(*ONE_PROCESS), run) == []
    assert len(read_summary(run)["resumes"]) == len(KILLS)
    # The periodic directory listed by no index when its run was killed (step 15's) is counted by
    # retention: the newest 2 are kept, nothing temporary is left.
    kept = sorted(p.name for p in (run / layout.CHECKPOINTS).iterdir())
    assert kept == ["best", "index.json", "last", "step_00000015", "step_00000018"]


def test_a_background_save_that_fails_stops_the_run_with_one_line_and_lists_nothing_it_did_not_write(runs):
    run, (code, stderr) = runs["failed"]
    assert code == 1 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert f"cannot write {run / layout.CHECKPOINTS / 'last'}: [Errno 17] File exists" in stderr, stderr
    summary = read_summary(run)
    assert summary["status"] == "failed" and "cannot write" in summary["error"]
    # The failed save is claimed nowhere: last is step 3's, in the index and on disk, and the
    # log says only that step 3's was saved.
    cfg = compose_config(*ONE_PROCESS)
    assert resume.find("auto", run, cfg).ckpt["global_step"] == 3
    assert {e["step"] for e in storage.for_run(cfg, run).index.entries.values()} == {3}
    log = (run / "train.log").read_text()
    assert "checkpoint at epoch 0 step 3: last, step_00000003" in log and "step 6: last" not in log
