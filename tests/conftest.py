"""Fixtures, and the test tiers. Helpers that tests import are in helpers.py.

Tiers: tests/unit (mirrors the package: no training, no subprocess), tests/integration (training
in this process) and tests/cli (subprocesses: the command line, torchrun, multirun, pip install).
Every test under tests/cli is marked `slow`, as is any other test marked `@pytest.mark.slow`.

Which slow tests run:
- `pytest` (or a folder outside tests/cli, e.g. `pytest tests/unit`): none; they are deselected.
- `pytest --all`: all of them (the full suite, what CI runs).
- `pytest tests/cli` (or a folder inside it), a test file or a test id: every slow test the
  argument names, since naming it is asking for it.
- `-m` with an expression that mentions `slow`: that expression decides.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from framework.config.folders import CONF_DIR

# OpenMP threads waiting for work sleep rather than spin, in this process and every one a test
# starts: processes side by side on 2 CPUs (two commands, a run and its loader workers) stop
# burning each other's time (5-7% of the CPU on a quiet machine, a quarter or more on a busy
# one). Set before torch is imported (OpenMP reads it once); the thread count, and so the bits,
# stay as configured.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SLOW_TIER = Path(__file__).resolve().parent / "cli"
_LEFT_OUT = pytest.StashKey[int]()  # how many slow tests a run left out, for its summary line


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="run the slow tier (tests/cli and @slow tests) too")


def _named_explicitly(path: Path, args: list[Path]) -> bool:
    """Whether a command-line argument names this test's file, or a folder at or under tests/cli holding it."""
    for arg in args:
        if arg == path:
            return True
        if arg.is_dir() and arg.is_relative_to(SLOW_TIER) and path.is_relative_to(arg):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.is_relative_to(SLOW_TIER):
            item.add_marker(pytest.mark.slow)
    if config.getoption("all") or "slow" in (config.getoption("markexpr") or ""):
        return
    args = [(config.invocation_params.dir / a.split("::")[0]).resolve() for a in config.args]
    kept, left_out = [], []
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        (left_out if slow and not _named_explicitly(item.path, args) else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
        config.stash[_LEFT_OUT] = len(left_out)


MAX_WORKERS = 8  # each holds torch (~0.4 GB) and starts training processes of its own


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this process may use (as determinism.num_threads=null counts them)."""
    return min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: its count goes to the controller
        session.config.workeroutput["left_out"] = session.config.stash.get(_LEFT_OUT, 0)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """The controller: every worker collects every test, so any one's count of those left out is the run's."""
    node.config.stash[_LEFT_OUT] = getattr(node, "workeroutput", {}).get("left_out", 0)


def pytest_terminal_summary(terminalreporter, config):
    if config.stash.get(_LEFT_OUT, 0):
        terminalreporter.write_line(
            f"{config.stash[_LEFT_OUT]} slow tests left out (the tests/cli tier and @slow): `pytest --all` runs them"
        )


@pytest.fixture
def compose():
    """compose(overrides) -> the composed config, as `python -m framework` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from framework.config import schema

    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides=(): hydra_compose("config", overrides=list(overrides))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """trained_run(*overrides, test_conf=False) -> the folder of a finished run trained in process
    with those overrides, trained once per test session: every test asking for the same overrides
    gets the same folder. Never change it: a test that does copies it (shutil.copytree) first."""
    from helpers import train_in_process

    cache = {}

    def get(*overrides: str, test_conf: bool = False) -> Path:
        key = (overrides, test_conf)
        if key not in cache:
            run = tmp_path_factory.mktemp("trained") / "run"
            train_in_process(run, *overrides, test_conf=test_conf)
            cache[key] = run
        return cache[key]

    return get


@pytest.fixture(scope="session")
def cli_trained_run(tmp_path_factory):
    """cli_trained_run(*overrides) -> the folder of a finished run trained by `python -m framework`
    (Hydra's .hydra/ record and train.log too), once per test session, shared as trained_run's are."""
    from helpers import run_cli

    cache = {}

    def get(*overrides: str) -> Path:
        if overrides not in cache:
            run = tmp_path_factory.mktemp("cli_trained") / "run"
            run_cli(run, *overrides)
            cache[overrides] = run
        return cache[overrides]

    return get


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """A non-editable install of this checkout in a fresh virtual environment, and the default
    training run by it as the README's first command runs it (`python -m framework`, from a folder
    outside the checkout), once per test session: its `python`, `env_dir`, `elsewhere` (the folder
    it ran from), `proc` (its finished process) and `run_dir`. Never change the run directory."""
    from types import SimpleNamespace

    from helpers import install_checkout

    folder = tmp_path_factory.mktemp("installed")
    python = install_checkout(folder)
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([python, "-m", "framework"], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (elsewhere / "outputs").glob("*/*")
    return SimpleNamespace(python=python, env_dir=folder / "venv", elsewhere=elsewhere, proc=proc, run_dir=run_dir)


@pytest.fixture
def small_disk(tmp_path):
    """A real, small file system (tmpfs): mount(size, inodes) -> its folder."""
    mounted = []

    def mount(size: str, inodes: int):
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(folder)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def s3():
    """A real S3 server (moto's) on 127.0.0.1 for this test module: tests/s3_server.py. Its
    endpoint and credentials are in this process's environment while the module runs (runs in
    process read them as a user's would); subprocesses get `s3.env`."""
    from s3_server import S3Server

    server = S3Server()
    try:
        with server.in_environment():
            yield server
    finally:
        server.stop()
