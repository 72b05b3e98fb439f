"""The remote copy (checkpoint.remote) through the real command line, against a real S3 server on
127.0.0.1 (the module's `s3` fixture): a run resumed on a "new machine" (its run directory gone)
from the remote copy alone, bitwise; a SIGTERM stop that waits for its last upload, or says
within its grace that it could not, and the next start that uploads what was missing; the store
unreachable at start (refused in one line); a URL as run directory refused; no credentials in
what the runs write; fsdp's every shard uploaded. The store's options in process are in
tests/integration.

Every command of the module is started in two waves, side by side (each pays for its own
interpreter): the first commands, then the ones that go on from what those left. A command that
needs the store down gets an endpoint of its own (a relay to the same moto server) and cuts it,
so that the others keep theirs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime

import pytest
from helpers import (
    ROOT,
    TESTS,
    assert_one_line_error,
    finish_together,
    read_summary,
    start_cli,
    start_in,
    wait_until_stopped,
)
from s3_server import SECRET, Relay, local_entries, remote_contents, sha256

from framework.cli.compare import compare as differences
from framework.engine.preemption import exit_code
from framework.faults import STOP_ENV

# Digits, 20 steps an epoch; one intra-op thread on every side of a comparison.
RUN = ["trainer.max_epochs=2", "logger=none", "determinism.num_threads=1"]
# The stopped runs freeze themselves once their first save (the first epoch's end) is listed,
# and get SIGTERM there: they stop after the next step, whatever the machine's load.
FROZEN = {STOP_ENV: "indexed:1"}
STOP_STEP = 21
# Two ranks of fsdp, one epoch (10 steps on each).
FSDP = ["model=mlp", *RUN, "trainer.max_epochs=1", "trainer.strategy=fsdp", "trainer.processes=2"]
GRACE_S = 2  # trainer.stop_grace_s of the stop whose upload cannot be done


def endpoint_of_its_own(s3) -> tuple[Relay, dict]:
    """A relay of its own to the module's server, and the environment of a run that uses it:
    closing it makes the store unreachable for that run alone."""
    relay = Relay(s3.moto_port)
    return relay, {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"}


def logged_at(log: str, text: str) -> float:
    """When the first line of train.log holding `text` was written (its timestamp), in seconds."""
    line = next(line for line in log.splitlines() if text in line)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def said(proc: subprocess.CompletedProcess) -> str:
    """The end of a command's output (its log on stdout, torchrun's long), for a failed assertion."""
    return f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(s3, trained_run, tmp_path_factory) -> dict:
    """Every command of the module, in two waves (see the module's doc): name -> what it left
    (`proc`, its CompletedProcess; `run`, its folder; `url`, its remote copy; and what each
    test needs besides)."""
    folder = tmp_path_factory.mktemp("remote")
    left = {name: {"run": folder / name, "url": f"s3://{s3.bucket()}/r"} for name in (
        "stopped", "stopped_down", "unreachable", "fsdp")}  # fmt: skip
    down_relay, down_env = endpoint_of_its_own(s3)  # cut around stopped_down's stop
    cut_relay, cut_env = endpoint_of_its_own(s3)  # cut from the start: unreachable
    cut_relay.close()
    elsewhere = folder / "elsewhere"  # a working folder where no `s3:` folder may appear
    elsewhere.mkdir()
    this_checkout = {**s3.env, "PYTHONPATH": os.pathsep.join((str(ROOT), str(TESTS)))}  # its framework, from there

    def remote(name: str) -> str:
        return f"checkpoint.remote={left[name]['url']}"

    try:
        started = {
            "stopped": start_cli(left["stopped"]["run"], *RUN, remote("stopped"), env={**s3.env, **FROZEN}),
            "stopped_down": start_cli(left["stopped_down"]["run"], *RUN, remote("stopped_down"),
                                      f"trainer.stop_grace_s={GRACE_S}", env={**down_env, **FROZEN}),
            "unreachable": start_cli(left["unreachable"]["run"], *RUN, remote("unreachable"), env=cut_env),
            "fsdp": start_cli(left["fsdp"]["run"], *FSDP, remote("fsdp"), env=s3.env),
            "run_dir_url": start_in(elsewhere, "hydra.run.dir=s3://bucket/runs/x", *RUN, env=this_checkout),
        }  # fmt: skip
        straight = trained_run(*RUN)  # in this process while they start: the run never stopped
        # SIGTERM to each frozen run, taken when it goes on; the store down for stopped_down's
        # until it has exited.
        for name in ("stopped", "stopped_down"):
            wait_until_stopped(started[name])
            started[name].send_signal(signal.SIGTERM)
        started["stopped"].send_signal(signal.SIGCONT)
        down_relay.close()
        started["stopped_down"].send_signal(signal.SIGCONT)
        signalled = time.monotonic()
        started["stopped_down"].wait(timeout=120)
        left["stopped_down"]["stop_s"] = time.monotonic() - signalled
        down_relay.open()
        stops = finish_together({name: started.pop(name) for name in ("stopped", "stopped_down")})
        for name, proc in stops.items():
            left[name]["proc"] = proc
        left["stopped"]["remote"] = remote_contents(left["stopped"]["url"], s3)  # as the stop left it
        left["stopped_down"]["first_summary"] = read_summary(left["stopped_down"]["run"])

        # The second wave, while the first goes on: on a new machine (the run directory moved
        # away, kept for the tests), resume=auto from the remote copy alone; and the run stopped
        # during the outage started again with the store back, with nothing left to train: what
        # it uploads is the catch-up.
        left["stopped"]["first"] = left["stopped"]["run"].with_name("stopped-first")
        os.rename(left["stopped"]["run"], left["stopped"]["first"])
        again = {
            "stopped": start_cli(left["stopped"]["run"], *RUN, remote("stopped"), "resume=auto", env=s3.env),
            "stopped_down": start_cli(left["stopped_down"]["run"], *RUN, remote("stopped_down"), "resume=auto",
                                      f"trainer.max_steps={STOP_STEP}", env=down_env),
        }  # fmt: skip
        for name, proc in finish_together(started).items():
            left.setdefault(name, {})["proc"] = proc
        for name, proc in finish_together(again).items():
            left[name]["again"] = proc
        left["elsewhere"] = elsewhere
        left["straight"] = {"run": straight}
    finally:
        down_relay.close()
        cut_relay.close()
    return left


def test_a_sigterm_stop_waits_for_its_last_checkpoint_to_be_uploaded(runs):
    stopped = runs["stopped"]
    assert stopped["proc"].returncode == exit_code(signal.SIGTERM), said(stopped["proc"])
    summary = json.loads((stopped["first"] / "metrics.json").read_text())
    assert summary["status"] == "preempted" and summary["remote"]["not_uploaded"] == [], summary
    entries, objects, _ = stopped["remote"]
    last = (stopped["first"] / "checkpoints" / "last.pt").read_bytes()
    assert entries["last.pt"]["step"] == summary["global_step"] == STOP_STEP
    assert entries["last.pt"]["sha256"] == sha256(last) and objects[sha256(last)] == last


def test_resumed_on_a_new_machine_from_the_remote_copy_alone_it_ends_bitwise_as_a_run_never_stopped(runs, s3):
    stopped = runs["stopped"]
    assert stopped["again"].returncode == 0, said(stopped["again"])
    resumed = read_summary(stopped["run"])["resumes"][-1]
    assert resumed["global_step"] == STOP_STEP and resumed["exact"], resumed
    assert f"downloading last.pt from {stopped['url']}" in (stopped["run"] / "train.log").read_text()
    assert differences(runs["straight"]["run"], stopped["run"]) == []

    # The remote copy is the local one: each entry as the local index has it, each object the
    # bytes of a local file (a checkpoint's, or the history's as of its save).
    entries, objects, _ = remote_contents(stopped["url"], s3)
    local = local_entries(stopped["run"])
    assert set(entries) == set(local) == {"last.pt", "best.pt"}
    for name, entry in local.items():
        assert {k: v for k, v in entries[name].items() if k != "history"} == entry
        assert (stopped["run"] / "checkpoints" / name).read_bytes() == objects[entry["sha256"]]
        assert sha256(objects[entry["sha256"]]) == entry["sha256"]
    final_history = objects[entries["last.pt"]["history"]["sha256"]]
    assert final_history == (stopped["run"] / "metrics.jsonl").read_bytes()[: len(final_history)]


def test_a_sigterm_stop_with_the_store_down_says_within_its_grace_what_it_could_not_upload(runs, s3):
    down = runs["stopped_down"]
    assert down["proc"].returncode == exit_code(signal.SIGTERM), said(down["proc"])
    log = (down["run"] / "train.log").read_text()
    for text in (down["proc"].stdout + down["proc"].stderr, log):
        assert "not uploaded" in text and "last.pt" in text, text
    # It waited for the upload, retrying, for its grace (from the signal, seen at the step's
    # end), then said so; and exited soon after: not after checkpoint.upload_wait_s (600 s),
    # nor the default grace (25 s).
    waited = logged_at(log, "not uploaded") - logged_at(log, "received SIGTERM")
    assert GRACE_S - 0.5 < waited < GRACE_S + 1, waited
    assert down["stop_s"] < GRACE_S + 10, down["stop_s"]
    first = down["first_summary"]
    assert first["status"] == "preempted" and first["global_step"] == STOP_STEP, first
    assert first["remote"]["not_uploaded"] == ["best.pt", "last.pt"], first["remote"]
    assert first["remote"]["outages"] and first["remote"]["failed_attempts"] > 0, first["remote"]

    # Started again with the store back (and nothing left to train), it uploads what the stop
    # could not: the remote index lists the stop's last.pt.
    again = down["again"]
    assert again.returncode == 0, said(again)
    assert read_summary(down["run"])["remote"]["not_uploaded"] == []
    entries, objects, _ = remote_contents(down["url"], s3)
    last = (down["run"] / "checkpoints" / "last.pt").read_bytes()
    assert entries["last.pt"]["step"] == STOP_STEP and entries["last.pt"]["sha256"] == sha256(last)
    assert objects[sha256(last)] == last


def test_the_store_unreachable_at_start_refuses_the_run_in_one_line(runs):
    unreachable = runs["unreachable"]
    assert_one_line_error(unreachable["proc"], 1, "checkpoint.remote", unreachable["url"])
    checkpoints = unreachable["run"] / "checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []
    history = unreachable["run"] / "metrics.jsonl"
    assert not history.exists() or '"event": "step"' not in history.read_text()


def test_a_url_as_run_directory_is_refused_without_a_local_folder_named_like_it(runs):
    """(hydra.sweep.dir, refused by the same function, and remote_required=false, are tested in
    process: tests/unit/cli/test_launch_plan.py, tests/integration/test_remote_copy.py.)"""
    assert_one_line_error(runs["run_dir_url"]["proc"], 1, "hydra.run.dir=s3://bucket/runs/x", "checkpoint.remote")
    assert list(runs["elsewhere"].iterdir()) == []


def test_no_credentials_in_anything_the_runs_wrote_or_said(runs, s3):
    """The secret key is in every run's environment: it must be in none of their files (the
    .hydra/ record, train.log, metrics, checkpoints), their output, or the remote copies."""
    secret = SECRET.encode()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET
    looked_at = set()
    for name, left in runs.items():
        if not isinstance(left, dict) or "url" not in left:
            continue
        for folder in (left["run"], left.get("first")):
            for path in folder.rglob("*") if folder else []:
                if path.is_file() and not path.is_symlink():
                    assert secret not in path.read_bytes(), path
                    looked_at.add(path.name)
        for proc in (left["proc"], left.get("again")):
            if proc is not None:
                assert SECRET not in proc.stdout + proc.stderr, name
        if name != "unreachable":  # it never reached the store
            _, objects, index = remote_contents(left["url"], s3)
            assert all(secret not in data for data in [index, *objects.values()]), name
    assert {"config.yaml", "hydra.yaml", "overrides.yaml", "train.log", "metrics.json", "last.pt"} <= looked_at


def test_fsdp_uploads_every_file_of_both_ranks_that_the_remote_index_names(runs, s3):
    """Each file of last/ (both ranks' shards, the metadata, the train state, the manifest) is an
    object of its bytes, named in the remote index by the local entry. (A resume on two ranks
    from the download costs a second torchrun start, 10 s of this file's budget: left out.)"""
    fsdp = runs["fsdp"]
    assert fsdp["proc"].returncode == 0, said(fsdp["proc"])
    entries, objects, _ = remote_contents(fsdp["url"], s3)
    files = {p.name: p.read_bytes() for p in (fsdp["run"] / "checkpoints" / "last").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "train_state.pt"} <= set(files)
    entry = local_entries(fsdp["run"])["last"]
    assert {k: v for k, v in entries["last"].items() if k != "history"} == entry
    assert set(entry["files"]) | {"checksums.json"} == set(files)  # its manifest: the entry's sha256
    for name, data in files.items():
        digest = entry["files"][name]["sha256"] if name in entry["files"] else entry["sha256"]
        assert sha256(data) == digest and objects.get(digest) == data, name
