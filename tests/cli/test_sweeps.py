"""Reproducibility measured: fingerprints across processes, determinism levels, seed sweeps
with real Hydra multiruns (basic, joblib and submitit-local launchers), the summary and the
reproducibility check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TEST_CONF, TESTS, read_summary, run_cli, train_in_process

QUICK = ["model=mlp", "trainer.max_epochs=1", "logger=none", "checkpoint=off"]


def fingerprint_of(run_dir: Path, *overrides: str, **kwargs) -> str:
    run_cli(run_dir, *QUICK, *overrides, **kwargs)
    return read_summary(run_dir)["fingerprint"]


def multirun(cwd: Path, *overrides: str, sweep_dir: Path | None = None, timeout=600):
    cmd = [sys.executable, "-m", "framework", *TEST_CONF, "-m", *overrides]
    if sweep_dir is not None:
        cmd.append(f"hydra.sweep.dir={sweep_dir}")
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_summary_files(sweep: Path) -> dict:
    summary = json.loads((sweep / "summary.json").read_text())
    table = (sweep / "summary.md").read_text()
    assert "| metric | n | mean | std | min | max | 95% CI |" in table
    png = (sweep / "val_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    return summary


@pytest.mark.slow
def test_fingerprints_are_identical_for_a_seed_and_differ_between_seeds(tmp_path):
    seed0 = fingerprint_of(tmp_path / "a", "seed=0")
    # In this process, another one (after whatever other tests left behind), same bits.
    assert train_in_process(tmp_path / "in", *QUICK, "seed=0")["fingerprint"] == seed0
    assert train_in_process(tmp_path / "c", *QUICK, "seed=1")["fingerprint"] != seed0
    # The batches do not depend on which worker process loads them.
    for workers in (1, 2, 4):
        assert train_in_process(tmp_path / f"w{workers}", *QUICK, f"data.num_workers={workers}")["fingerprint"] == seed0
    # strict across processes: test_jobs_in_one_process_do_not_leak_state_into_each_other.


def test_strict_puts_its_settings_in_force_and_records_them(tmp_path):
    run_cli(tmp_path / "run", *QUICK[:3], "determinism=strict")  # with checkpoints
    settings = read_summary(tmp_path / "run")["determinism"]
    assert settings == {
        "level": "strict",
        "num_threads": 1,
        "deterministic_algorithms": True,
        "cudnn_benchmark": False,
        "cudnn_deterministic": True,
        "cublas_workspace_config": ":4096:8",
        "pythonhashseed": "0",
    }
    import torch

    meta = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["meta"]
    assert meta["determinism"] == "strict" and meta["determinism_settings"] == settings


def test_strict_from_a_config_file_without_a_hash_seed_refuses_and_says_how(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "framework",
            *TEST_CONF,
            f"hydra.run.dir={tmp_path / 'run'}",
            "determinism=paranoid",
            *QUICK,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "PYTHONHASHSEED" in proc.stderr and "PYTHONHASHSEED=0 python -m framework" in proc.stderr
    with_seed = run_cli(
        tmp_path / "run2", "determinism=paranoid", *QUICK, extra_args=TEST_CONF, env={"PYTHONHASHSEED": "7"}
    )
    assert with_seed.returncode == 0 and read_summary(tmp_path / "run2")["determinism"]["pythonhashseed"] == "7"


def test_a_strict_run_resumes_without_naming_its_level_again(tmp_path, monkeypatch):
    """The level comes from the checkpoint's config, too late to fix the hash seed: the resume
    re-launches itself as the first run did (its metrics.json says strict)."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    run = tmp_path / "run"
    run_cli(run, "model=mlp", "trainer.max_epochs=2", "logger=none", "determinism=strict", "trainer.max_steps=25")
    resumed = run_cli(run, "resume=auto", "trainer.max_steps=null", check=False)
    assert resumed.returncode == 0, resumed.stderr
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["resumes"][-1]["global_step"] == 25
    assert summary["determinism"]["level"] == "strict" and summary["determinism"]["pythonhashseed"] == "0"


def test_setting_the_hash_seed_inside_a_running_interpreter_is_not_enough():
    code = (
        "import os; os.environ['PYTHONHASHSEED'] = '0'\n"
        "from framework.reproducibility import hash_seed_in_force; print(hash_seed_in_force())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "False"


def test_an_op_without_a_deterministic_implementation_is_named_under_strict(tmp_path):
    proc = run_cli(
        tmp_path / "strict", "model=unpool", "determinism=strict", *QUICK[1:], extra_args=TEST_CONF, check=False
    )
    assert proc.returncode == 1
    assert "max_unpooling2d_forward_out has no deterministic implementation" in proc.stderr
    assert "determinism=seeded" in proc.stderr and "Traceback" not in proc.stderr
    run_cli(tmp_path / "seeded", "model=unpool", "determinism=seeded", *QUICK[1:], extra_args=TEST_CONF)


@pytest.mark.slow
def test_a_basic_multirun_of_three_seeds_is_summarized(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(ROOT, "seed=0,1,2", *QUICK, "trainer.max_epochs=2", sweep_dir=sweep)
    assert proc.returncode == 0, proc.stderr
    summary = assert_summary_files(sweep)
    assert (summary["jobs"], summary["completed"], summary["failed"]) == (3, 3, 0)
    acc = summary["metrics"]["test/acc"]
    values = [r["metrics"]["test/acc"] for r in summary["runs"]]
    assert acc["n"] == 3 and acc["min"] == min(values) and acc["max"] == max(values)
    assert acc["ci95_low"] < acc["mean"] < acc["ci95_high"]
    assert sorted(r["seed"] for r in summary["runs"]) == [0, 1, 2]
    assert len({r["fingerprint"] for r in summary["runs"]}) == 3
    table = (sweep / "summary.md").read_text()
    for r in summary["runs"]:
        assert r["fingerprint"][:16] in table
    assert summary["reproducibility_checked"] is False

    # The same summary, rebuilt from disk by the command.
    for name in ("summary.json", "summary.md", "val_curves.png"):
        (sweep / name).unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "framework.sweep", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads((sweep / "summary.json").read_text())["metrics"] == summary["metrics"]


@pytest.mark.slow
def test_jobs_in_one_process_do_not_leak_state_into_each_other(tmp_path):
    # The basic launcher runs both jobs in one process: strict must not stay on for the second,
    # and each job's randomness must start from its own seed.
    sweep = tmp_path / "sweep"
    # Hydra's sweep syntax: the strict re-launch (PYTHONHASHSEED) must see strict inside it.
    proc = multirun(ROOT, "determinism=choice(strict,seeded)", "seed=0", *QUICK, sweep_dir=sweep)
    assert proc.returncode == 0, proc.stderr
    first, second = (read_summary(sweep / str(i)) for i in (0, 1))
    assert first["determinism"]["deterministic_algorithms"] is True
    assert second["determinism"]["deterministic_algorithms"] is False
    # strict pins one thread; the seeded job after it is back to every CPU.
    assert first["determinism"]["num_threads"] == 1
    assert first["determinism"]["pythonhashseed"] == os.environ.get("PYTHONHASHSEED", "0")  # re-launched
    assert second["determinism"]["num_threads"] == len(os.sched_getaffinity(0))
    assert first["fingerprint"] == fingerprint_of(tmp_path / "alone1", "seed=0", "determinism.num_threads=1")
    assert second["fingerprint"] == fingerprint_of(tmp_path / "alone", "seed=0")


@pytest.mark.slow
def test_a_sweep_with_a_failing_job_still_summarizes_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(ROOT, "seed=0", "optimizer.lr=0.1,-1,0.05", *QUICK, sweep_dir=sweep)
    assert proc.returncode == 1  # a failed job makes the sweep fail, after the summary
    assert "1 of 3 jobs failed" in proc.stderr
    summary = assert_summary_files(sweep)
    assert (summary["completed"], summary["failed"]) == (2, 1)
    failed = next(r for r in summary["runs"] if r["status"] == "failed")
    assert "Invalid learning rate" in failed["error"]
    # A configuration per learning rate: the two that completed are not pooled.
    assert [c["metrics"].get("test/acc", {}).get("n") for c in summary["configurations"]] == [1, None, 1]
    assert "Failed jobs:" in (sweep / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_and_cluster_launchers_produce_the_summary(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    extra = (
        ["hydra/launcher=parallel"]
        if launcher == "joblib"
        else ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    )
    proc = multirun(ROOT, "seed=0,1", *QUICK, *extra, sweep_dir=sweep)
    assert proc.returncode == 0, proc.stderr
    summary = assert_summary_files(sweep)
    assert (summary["jobs"], summary["completed"]) == (2, 2)
    # Each seed lands on the same bits as in a separate single run.
    assert next(r for r in summary["runs"] if r["seed"] == 0)["fingerprint"] == fingerprint_of(
        tmp_path / "alone", "seed=0"
    )


@pytest.mark.slow
def test_reproducibility_check_passes_when_deterministic_and_fails_when_not(tmp_path):
    good = multirun(ROOT, "seed=0,1", "repeat=0,1", *QUICK, sweep_dir=tmp_path / "good")
    assert good.returncode == 0, good.stderr
    summary = json.loads((tmp_path / "good" / "summary.json").read_text())
    assert summary["all_reproduce"] is True and len(summary["reproducibility"]) == 2
    assert all(r["runs"] == 2 and r["reproduces"] for r in summary["reproducibility"])
    assert summary["metrics"]["test/acc"]["n"] == 2  # identical repeats are not counted twice
    assert "every seed reproduces" in (tmp_path / "good" / "summary.md").read_text()

    bad = multirun(ROOT, "seed=0", "repeat=0,1", *QUICK, "model=unseeded", sweep_dir=tmp_path / "bad")
    assert bad.returncode == 1
    assert "did not reproduce" in bad.stderr
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["all_reproduce"] is False
    assert len(summary["reproducibility"]) == 1 and not summary["reproducibility"][0]["reproduces"]
    rebuilt = subprocess.run(
        [sys.executable, "-m", "framework.sweep", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120
    )
    assert rebuilt.returncode == 1 and "did not reproduce" in rebuilt.stderr


@pytest.mark.slow
def test_two_sweeps_started_together_get_their_own_directories(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "framework", "-m", "seed=0", *QUICK, "trainer.max_steps=2"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    assert all((s / "summary.md").is_file() and (s / "0" / "metrics.json").is_file() for s in sweeps)


def test_sweep_command_says_when_a_folder_is_not_a_sweep(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "framework.sweep", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "holds no sweep jobs" in proc.stderr


def test_ci_interval_uses_students_t():
    from framework.runs.sweep_summary import statistics_of

    d = statistics_of([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["std"] == 1.0
    assert d["ci95_high"] - d["mean"] == pytest.approx(4.302653 / 3**0.5, rel=1e-6)


def test_the_reproducibility_check_names_what_the_runs_records_say_differs(tmp_path):
    """Repeats that disagree: the summary names a thread-count difference, and a GPU under seeded."""
    import yaml

    from framework.runs.sweep_summary import summarize, verdict

    def job(sweep: Path, number: int, repeat: int, fingerprint: str, num_threads: int, level: str, device: str):
        folder = sweep / str(number)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0", f"repeat={repeat}"]))
        record = {"status": "completed", "seed": 0, "metrics": {"test/acc": 0.9}, "fingerprint": fingerprint,
                  "determinism": {"level": level, "num_threads": num_threads}, "device": device,
                  "meta": {"torch_version": "2.13.0"}}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(record))

    threads = tmp_path / "threads"
    job(threads, 0, 0, "aa", 1, "seeded", "cpu")
    job(threads, 1, 1, "bb", 2, "seeded", "cpu")
    summary = summarize(threads)
    (group,) = summary["reproducibility"]
    assert not group["reproduces"]
    assert group["possible_causes"] == [
        "num_threads differs (1, 2): float results depend on the number of intra-op threads"
    ]
    assert "num_threads differs (1, 2)" in (threads / "summary.md").read_text()
    assert "num_threads differs" in verdict(summary)[1]

    gpu = tmp_path / "gpu"
    job(gpu, 0, 0, "aa", 1, "seeded", "cuda:0")
    job(gpu, 1, 1, "bb", 1, "seeded", "cuda:0")
    (group,) = summarize(gpu)["reproducibility"]
    assert len(group["possible_causes"]) == 1
    assert "determinism=seeded on a GPU is not bitwise" in group["possible_causes"][0]
    assert "determinism=strict is bitwise on a GPU" in group["possible_causes"][0]

    identical = tmp_path / "identical"
    job(identical, 0, 0, "aa", 1, "seeded", "cuda:0")
    job(identical, 1, 1, "aa", 1, "seeded", "cuda:0")
    (group,) = summarize(identical)["reproducibility"]
    assert group["reproduces"] and group["possible_causes"] == []
