"""What broke when the framework was attacked (issue 8), each through the real command line.

Every test here was run against the code before its fix and failed there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TESTS, read_jsonl, read_summary, run_cli, start_cli, train_in_process, wait_for_step

from framework.cli.compare import compare as differences
from framework.config.errors import ConfigError
from framework.engine.preemption import StopOnSignal

pytestmark = pytest.mark.slow

# 20 steps an epoch; a periodic file every 10 steps, only the newest one kept.
BASE = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=1"]
GO_ON = "trainer.max_steps=null"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped at step 25 of 40, with last.pt, best.pt and step_00000020.pt."""
    run = tmp_path_factory.mktemp("hardening") / "run"
    run_cli(run, *BASE, "trainer.max_steps=25")
    return run


def copy_of(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    return run


def test_a_crafted_index_cannot_make_retention_delete_files_outside_the_run(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    victims = [tmp_path / "victim_absolute", tmp_path / "victim_relative", tmp_path / "victim_linked"]
    for victim in victims:
        victim.write_text("precious")
    (run / "checkpoints" / "outside.pt").symlink_to(victims[2])
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    template = next(e for e in index["files"] if e["role"] == "periodic")
    for name in (str(victims[0]), "../../victim_relative", "outside.pt"):
        index["files"].append({**template, "file": name, "step": 1})  # the oldest: first to go
    (run / "checkpoints" / "index.json").write_text(json.dumps(index))

    proc = run_cli(run, *BASE, f"resume={run}", GO_ON)
    assert all(v.read_text() == "precious" for v in victims)
    assert "is not a plain file name" in proc.stdout and "leads out of" in proc.stdout
    assert read_summary(run)["status"] == "completed"


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_run_where_one_is_refused_and_the_old_one_kept(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    before = files_of(run)
    proc = run_cli(run, *BASE, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "already holds a run (status 'completed', step 25)" in proc.stderr
    assert "resume=auto" in proc.stderr and "existing_run=archive" in proc.stderr
    assert files_of(run) == before  # not even Hydra's .hydra/ or train.log

    archived = run_cli(run, *BASE, "existing_run=archive", "trainer.max_steps=5")
    (aside,) = tmp_path.glob("run.archived-*")
    assert files_of(aside) == before and "is now in" in archived.stderr
    fresh = read_summary(run)
    assert fresh["status"] == "completed" and fresh["global_step"] == 5 and "resumes" not in fresh

    first_fresh = files_of(run)
    overwritten = run_cli(run, *BASE, "existing_run=overwrite", "seed=1", "trainer.max_steps=5")
    assert "was deleted" in overwritten.stderr and files_of(run) != first_fresh
    assert read_summary(run)["seed"] == 1 and len(list(tmp_path.glob("run.archived-*"))) == 1


def test_a_fresh_start_replaces_the_history_of_an_attempt_that_saved_nothing(tmp_path):
    run = tmp_path / "run"
    unsaved = ["model=mlp", "trainer.max_epochs=2", "logger=none", "checkpoint=off", "resume=auto"]
    proc = start_cli(run, *unsaved)
    wait_for_step(proc, run, 20)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert "nothing was saved" in out + err and "continue with resume=auto" not in out + err

    run_cli(run, *unsaved)  # the requeue: same command, nothing to resume from, a fresh start
    history = read_jsonl(run)  # one history, not the killed one and another after it
    assert [r["step"] for r in history if r["event"] == "step"] == [10, 20, 30, 40]  # logged every 10 steps
    assert [r["event"] for r in history if r["event"] != "step"] == ["epoch", "epoch", "test"]


@pytest.mark.parametrize(
    "change,says",
    [
        (["optimizer.lr=0.5"], "optimizer.lr: 0.1 -> 0.5"),  # refused by the config check
        (["model.hidden=[32,32]", "allow_config_changes=true", GO_ON], "do not fit the model"),  # by the restore
    ],
)
def test_a_refused_or_failed_resume_leaves_the_run_as_it_was(stopped, tmp_path, change, says):
    run = copy_of(stopped, tmp_path)
    (run / "train.log").write_text("the first run's log\n")
    before = files_of(run)
    proc = run_cli(run, *BASE, f"resume={run}", *change, check=False)
    assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr
    assert files_of(run) == before  # status, history, checkpoints, .hydra/ and train.log untouched


# Only last.pt, written at each epoch end: a save cut short can fall back on no other file.
ONLY_LAST = ["model=mlp", "trainer.max_epochs=3", "trainer.log_every_n_steps=1", "logger=none",
             "checkpoint.monitor=null"]  # fmt: skip
# last.pt and a periodic file (a hard link to it) every 7 steps, the newest periodic one kept.
PERIODIC = [*ONLY_LAST, "checkpoint.every_n_steps=7", "checkpoint.keep_last_n=1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run never stopped (checkpoints never change a trajectory: test_resume.py)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    run_cli(run, *PERIODIC)
    return run


ALL_BOUNDARIES = ("written", "renamed", "indexed", "linked", "retained")


@pytest.mark.parametrize(
    "saving,boundaries",
    [("checkpoint.async_save=false", ALL_BOUNDARIES), ("checkpoint.async_save=true", ("written", "indexed"))],
)
def test_a_save_killed_at_each_of_its_boundaries_leaves_a_run_that_resumes_exactly(
    straight, tmp_path, saving, boundaries
):
    """The requeue command, killed (SIGKILL) at each boundary of a save in turn, each time in
    the second save of the process: temp file written, renamed (the index still describes the
    old file), indexed, linked (a periodic name not yet listed), retention done. Written in the
    background, the kill lands in that thread while training goes on (two boundaries: the
    commit order is the same code)."""
    run = tmp_path / "run"
    for boundary in boundaries:
        env = {"FRAMEWORK_TEST_KILL_AT": f"{boundary}:2"}
        killed = run_cli(run, *PERIODIC, saving, "resume=auto", env=env, check=False)
        assert killed.returncode == -signal.SIGKILL, f"never reached {boundary}: {killed.stderr}"
    run_cli(run, *PERIODIC, saving, "resume=auto")
    assert differences(straight, run) == []
    assert len(read_summary(run)["resumes"]) == len(boundaries)
    # A periodic file written but not yet listed when a run was killed is not left behind.
    assert [p.name for p in (run / "checkpoints").glob("step_*.pt")] == ["step_00000056.pt"]


def flip_a_bit_inside_a_tensor(path):
    """Flip one bit in the middle of the largest tensor's bytes: torch.load still reads the file."""
    weights = torch.load(path, weights_only=True)["model_state_dict"]
    tensor = max(weights.values(), key=lambda t: t.numel())
    data = path.read_bytes()
    at = data.index(tensor.numpy().tobytes()[:64]) + tensor.numel() * tensor.element_size() // 2
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])


def test_without_an_index_a_corrupt_newest_file_is_found_by_its_own_check(straight, tmp_path):
    config = [*ONLY_LAST, "checkpoint.every_n_steps=10", "checkpoint.keep_last_n=3"]
    run = tmp_path / "run"
    run_cli(run, *config, "trainer.max_steps=25")  # last.pt at 25; step_10, step_20
    (run / "checkpoints" / "index.json").unlink()
    flip_a_bit_inside_a_tensor(run / "checkpoints" / "last.pt")

    proc = run_cli(run, *config, "resume=auto", GO_ON)
    assert "skipping last.pt" in proc.stdout and "record(s) of its archive fail their CRC32" in proc.stdout
    assert "step_00000020.pt (epoch 1, step 20)" in proc.stdout
    assert "checked: its CRC32 records (index.json does not list it" in proc.stdout
    assert read_summary(run)["resumes"][-1]["global_step"] == 20  # the newest good one, by its step
    assert differences(straight, run) == []


def test_resume_auto_follows_the_latest_branch_not_the_highest_step(tmp_path):
    config = [*ONLY_LAST, "checkpoint.every_n_epochs=1"]
    run = tmp_path / "run"
    run_cli(run, *config)  # epoch_0001 (step 20) ... epoch_0003 (step 60), last.pt at 60
    # A deliberate rewind: back to epoch 1 with a lower learning rate, stopped at step 30.
    rewind = [f"resume={run / 'checkpoints' / 'epoch_0001.pt'}", "optimizer.lr=0.05", "allow_config_changes=true"]
    run_cli(run, *config, *rewind, "trainer.max_steps=30")
    proc = run_cli(
        run, *config, "resume=auto", "trainer.max_steps=31", "optimizer.lr=0.05", "allow_config_changes=true"
    )
    resumed = read_summary(run)["resumes"][-1]
    assert resumed["global_step"] == 30 and resumed["from"].endswith("last.pt"), proc.stdout


WORKERS = ["model=mlp", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "logger=none", "data.num_workers=2"]


@pytest.fixture(scope="module")
def straight_with_workers(tmp_path_factory):
    run = tmp_path_factory.mktemp("workers") / "straight"
    run_cli(run, *WORKERS)
    return run


@pytest.mark.parametrize("sig,status,code", [(signal.SIGTERM, "preempted", 143), (signal.SIGINT, "interrupted", 130)])
def test_a_signal_to_the_whole_process_group_still_stops_with_a_checkpoint(
    straight_with_workers, tmp_path, sig, status, code
):
    """SLURM and Kubernetes signal every process of a job; a terminal's Ctrl-C does the same."""
    run = tmp_path / "run"
    proc = start_cli(run, *WORKERS, "resume=auto", start_new_session=True)
    wait_for_step(proc, run, 25)
    os.killpg(proc.pid, sig)  # the loader workers too
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    summary = read_summary(run)
    assert summary["status"] == status and summary["stopped_by"] == "signal"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["global_step"] == summary["global_step"] >= 25

    run_cli(run, *WORKERS, "resume=auto")
    assert differences(straight_with_workers, run) == []


def test_the_signal_handler_itself_never_logs(caplog):
    """A signal can land while a log line is being flushed; a handler that logged then broke
    the log file's stream ("reentrant call inside BufferedWriter", seen in CI). It only raises
    the flag; the loop says what came, once, at a step boundary."""
    stop = StopOnSignal()
    try:
        with caplog.at_level("INFO", logger="framework"):
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM and caplog.records == []
            assert stop.stop_requested() and stop.stop_requested()
        assert [r.getMessage() for r in caplog.records] == [
            "received SIGTERM: stopping after this step, with a checkpoint"
        ]
    finally:
        stop.close()


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path):
    run = tmp_path / "run"
    proc = start_cli(run, *WORKERS, start_new_session=True)
    wait_for_step(proc, run, 5)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert read_summary(run)["status"] == "interrupted"


def test_sigterm_to_a_sweep_stops_it_and_the_requeue_finishes_it(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "framework", "-m", "seed=0,1,2", "model=mlp", "trainer.max_epochs=1", "logger=none",
           "trainer.log_every_n_steps=1", "resume=auto", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    wait_for_step(proc, sweep / "0", 10)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "no more jobs started" in err
    assert not (sweep / "1").exists() and not (sweep / "2").exists()
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["stopped"], summary["failed"]) == (1, 0)
    assert summary["runs"][0]["status"] == "preempted" and "resume=auto" in summary["runs"][0]["error"]

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["jobs"], summary["completed"]) == (3, 3)
    assert len(read_summary(sweep / "0")["resumes"]) == 1


def test_a_second_process_in_a_run_directory_is_refused_and_the_first_goes_on(tmp_path):
    run = tmp_path / "run"
    long = ["model=mlp", "trainer.max_epochs=20", "trainer.log_every_n_steps=1", "logger=none", "resume=auto"]
    first = start_cli(run, *long)
    wait_for_step(first, run, 5)
    second = run_cli(run, *long, check=False)
    assert first.poll() is None, "the first run ended before the second started"
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"is in use by process {first.pid} on " in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    steps = [r["step"] for r in read_jsonl(run) if r["event"] == "step"]
    assert steps == list(range(1, 401))  # one history, not two interleaved
    assert not (run / ".lock").exists()  # released with the run


def test_rerunning_a_finished_run_changes_nothing_and_says_so(tmp_path):
    run = tmp_path / "run"
    config = ["model=mlp", "trainer.max_epochs=3", "logger=none", "trainer.max_steps=30", "resume=auto"]
    first = run_cli(run, *config)
    assert "no checkpoint" in first.stdout  # resume=auto with nothing to resume: a fresh start
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "metrics.jsonl")}
    proc = run_cli(run, *config)  # the same command again, as a requeue would
    assert "nothing left to train" in proc.stdout
    assert (run / ".hydra" / "config.yaml").exists() and list((run / ".hydra").glob("resume-*"))
    assert {name: (run / name).read_bytes() for name in before} == before
    assert read_summary(run)["global_step"] == 30


def strict_json(path):
    """Standard JSON only: NaN and Infinity are not JSON (Python's reader takes them by default)."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    if path.suffix == ".jsonl":
        return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
    return json.loads(path.read_text(), parse_constant=refuse)


def npz(tmp_path, x, y):
    import numpy as np

    path = tmp_path / "data.npz"
    np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return ["data=npz", f"data.source.path={path}", "model=mlp"]


BAD_VALUES = {
    "negative clip": (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1.0 must be positive"),
    "step_size 0": (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0 must be at least 1"),
    "huge seed": ([f"seed={2**70}"], "must be zero or positive and below 2**63"),
}
BAD_DATA = {  # (inputs, labels) -> what the error says
    "fractional labels": (lambda: ([[0.0, 1.0]] * 20, [0.5, 1.0] * 10), "labels must be whole class indices, got 0.5"),
    "negative labels": (lambda: ([[0.0, 1.0]] * 20, [-1, 1] * 10), "labels must be class indices 0, 1, ..., got -1"),
    "one-hot labels": (lambda: ([[0.0, 1.0]] * 20, [[1, 0], [0, 1]] * 10), "one-hot labels? give y.argmax(1)"),
    "flat inputs": (lambda: ([0.0, 1.0] * 10, [0, 1] * 10), "inputs must have shape [N, features...], got [20]"),
    "a NaN input": (lambda: ([[0.0, 1.0]] * 19 + [[float("nan"), 1.0]], [0, 1] * 10),
                    "1 input values are NaN or infinite (the first in sample 19)"),
}  # fmt: skip


def overrides_of(case, tmp_path):
    if case in BAD_VALUES:
        return BAD_VALUES[case]
    make, says = BAD_DATA[case]
    return npz(tmp_path, *make()), says


@pytest.mark.parametrize("case", ["negative clip", "fractional labels"])
def test_values_and_data_that_would_train_nonsense_get_one_line_from_the_command_line(tmp_path, case):
    overrides, says = overrides_of(case, tmp_path)
    run = tmp_path / "run"
    proc = run_cli(run, *overrides, "trainer.max_epochs=1", "logger=none", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)  # not one step trained


@pytest.mark.parametrize("case", [*BAD_VALUES, *BAD_DATA])
def test_values_and_data_that_would_train_nonsense_are_refused_before_training(tmp_path, case):
    overrides, says = overrides_of(case, tmp_path)
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as refused:
        train_in_process(run, *overrides, "trainer.max_epochs=1", "logger=none")
    assert says in str(refused.value)
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)


def test_a_loss_that_goes_non_finite_stops_the_run_and_every_json_file_stays_json(tmp_path):
    diverging = ["model=mlp", "optimizer.lr=1e12", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
                 "logger=none"]  # fmt: skip
    stopped = run_cli(tmp_path / "stopped", *diverging, check=False)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "train/loss is nan at step" in stopped.stderr or "train/loss is inf at step" in stopped.stderr
    assert "trainer.stop_on_nonfinite_loss=false" in stopped.stderr
    assert strict_json(tmp_path / "stopped" / "metrics.json")["status"] == "failed"
    assert not (tmp_path / "stopped" / "checkpoints" / "last.pt").exists()  # that state was never saved

    run_cli(tmp_path / "on", *diverging, "trainer.stop_on_nonfinite_loss=false")
    for name in ("metrics.json", "metrics.jsonl", "checkpoints/index.json"):
        strict_json(tmp_path / "on" / name)  # NaN written as null
    assert strict_json(tmp_path / "on" / "metrics.json")["metrics"]["train/loss"] is None


def test_a_different_eval_batch_size_on_resume_is_no_false_alarm(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    proc = run_cli(run, *BASE, f"resume={run}", GO_ON, "trainer.eval_batch_size=7")
    assert "RESUME CHECK FAILED" not in proc.stdout
    assert "resume check: val/loss" in proc.stdout
    assert read_summary(run)["resumes"][-1]["val_check"]["identical"] is True


def test_a_resumed_epoch_with_no_batches_left_ends_cleanly(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)  # stopped at batch 5 of epoch 2; 512 a batch leaves 3 batches an epoch
    proc = run_cli(run, *BASE, f"resume={run}", GO_ON, "data.batch_size=512", "allow_config_changes=true", check=False)
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2


def resave(path, **fields):
    """A checkpoint changed by hand, with valid CRC32s (as torch.save makes them, and an attacker can)."""
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, **fields}, path)


def test_hand_made_fields_of_the_wrong_type_get_one_line(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    resave(run / "checkpoints" / "last.pt", epoch="1", loader_state=[1, 5])
    proc = run_cli(run, *BASE, f"resume={run / 'checkpoints' / 'last.pt'}", GO_ON, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has fields of the wrong type: epoch is '1', not a count; loader_state is [1, 5]" in proc.stderr


def test_a_yaml_alias_bomb_in_a_checkpoint_is_refused_at_once(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    names = "abcdefghij"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip(names, names[1:])
    )  # about 600 bytes that expand to 9**10 elements
    resave(run / "checkpoints" / "last.pt", config=bomb)
    proc = run_cli(run, *BASE, f"resume={run / 'checkpoints' / 'last.pt'}", check=False, timeout=60)
    assert proc.returncode == 1 and "its config uses YAML aliases" in proc.stderr


def test_a_hostile_pickle_is_refused_without_torchs_advice_to_unpickle_it(stopped, tmp_path):
    run = copy_of(stopped, tmp_path)
    marker = tmp_path / "pwned"
    payload = f"import os; open({str(marker)!r}, 'w').close()"
    torch.save({"meta": {}, "x": Hostile(payload)}, run / "checkpoints" / "evil.pt")
    proc = run_cli(run, *BASE, f"resume={run / 'checkpoints' / 'evil.pt'}", check=False)
    assert proc.returncode == 1
    assert "evil.pt needs more than torch.load(weights_only=True): it pickles builtins.exec" in proc.stderr
    assert "weights_only=False" not in proc.stderr and "Re-running" not in proc.stderr
    assert not marker.exists()


class Hostile:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def test_a_checkpoints_path_that_is_a_file_is_found_before_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    proc = run_cli(run, "model=mlp", "trainer.max_epochs=1", "logger=none", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "checkpoints is not a folder" in proc.stderr
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)  # before the first step


def test_compare_says_it_cannot_read_a_damaged_file(stopped, tmp_path):
    a, b = copy_of(stopped, tmp_path), tmp_path / "b"
    shutil.copytree(stopped, b)
    (b / "checkpoints" / "last.pt").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "framework.compare", str(a), str(b)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("Error: cannot compare") and "different" not in proc.stdout


def test_resume_auto_without_a_fixed_directory_is_warned_about(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    cmd = [sys.executable, "-m", "framework", "resume=auto", "model=mlp", "trainer.max_steps=2", "logger=none"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0
    assert "Warning: resume=auto without hydra.run.dir" in proc.stderr


@pytest.mark.parametrize(
    "size,inodes,says", [("16m", 10000, "not enough free disk space"), ("256m", 10, "free inodes")]
)
def test_no_room_for_checkpoints_is_found_before_training_and_recorded(small_disk, size, inodes, says):
    run = small_disk(size, inodes) / "run"
    proc = run_cli(run, "model=mlp", "trainer.max_epochs=1", "logger=none", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr
    assert read_summary(run)["status"] == "failed"  # not left at "running"
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run)
