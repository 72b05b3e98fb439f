"""Helpers shared by the tests: the real command line, and reading what a run leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from framework.checkpoint import Checkpointer, formats
from framework.config.folders import CONF_DIR
from framework.config.schema import CheckpointConfig
from framework.engine.state import TrainState

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
TESTS = ROOT / "tests"
DATA = TESTS / "data"  # files kept as they are: a checkpoint written by an older version
# The tests' own config folder (models that draw from every RNG, a strict level from a file).
TEST_CONF = ["--config-dir", str(TESTS / "conf")]

# Short runs on the real default data: one epoch of digits is 20 steps.
QUICK = ["trainer.max_epochs=1", "logger=none"]


def run_cli(run_dir: Path, *overrides: str, extra_args=(), env=None, timeout=300, check=True, preexec_fn=None):
    """`python -m framework hydra.run.dir=RUN_DIR OVERRIDES...` in a fresh process."""
    cmd = [sys.executable, "-m", "framework", *extra_args, f"hydra.run.dir={run_dir}", *overrides]
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env, preexec_fn=preexec_fn
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def start_cli(run_dir: Path, *overrides: str, extra_args=(), env=None, **popen) -> subprocess.Popen:
    """`python -m framework ...` started in the background (to be signalled or killed)."""
    cmd = [sys.executable, "-m", "framework", *extra_args, f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, **popen)


def run_in(cwd: Path, *args: str, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    """`python -m framework ARGS` started in `cwd` (no hydra.run.dir added)."""
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    cmd = [sys.executable, "-m", "framework", *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300, **popen)


def start_in(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m framework ARGS` started in `cwd`, in the background."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    cmd = [sys.executable, "-m", "framework", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def refused_in_one_line(proc: subprocess.CompletedProcess, says: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr, proc.stderr


TOGETHER_TIMEOUT = 60  # seconds; each command run_together starts needs a few


def run_together(*commands, cwd=ROOT, env=None) -> list[subprocess.CompletedProcess]:
    """Each `python -m ARGS...`, all started at once (each pays for its own interpreter), with the
    framework of this checkout whatever the folder they run in, and no recipes folder of the caller's.
    A command that hangs (a named pipe opened, say) fails the test after TOGETHER_TIMEOUT s."""
    full_env = {k: v for k, v in os.environ.items() if k != "FRAMEWORK_RECIPES"}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    started = [
        (args, subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=cwd, env=full_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for args in commands
    ]  # fmt: skip
    deadline = time.monotonic() + TOGETHER_TIMEOUT
    done = []
    try:
        for args, proc in started:
            out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m {' '.join(map(str, args))} still runs after {TOGETHER_TIMEOUT} s: it hangs")
    finally:
        for _, proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def finish_together(started: dict, timeout: float = 300) -> dict[object, subprocess.CompletedProcess]:
    """Each process of `started` (name -> a process with text pipes, from start_cli, start_in or
    Popen, all started before this is called, so that their interpreters start side by side on
    every CPU), waited for: name -> its result, as subprocess.run gives it. One still running after
    `timeout` s fails the test, and none is left running."""
    deadline = time.monotonic() + timeout
    done = {}
    try:
        for name, proc in started.items():
            out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, started[name].args))} still runs after {timeout} s: it hangs")
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *named: str) -> None:
    said = f"python -m {' '.join(map(str, proc.args))} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert proc.returncode == code, said
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, said
    assert proc.stderr.startswith("Error: ") and all(word in proc.stderr for word in named), said


def tree(folder: Path) -> dict:
    """Every file below `folder` (links as links), with its bytes: what must not change."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[path.relative_to(folder)] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[path.relative_to(folder)] = path.read_bytes()
    return found


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    """Until metrics.jsonl has a line for `step` (fails if the run ends first)."""
    history = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and f'"step": {step},' in history.read_text():
            return
        time.sleep(0.002)
    pytest.fail(f"the run ended or stalled before step {step} (exit {proc.poll()})")


def thread_states(pid: int) -> set[str]:
    """The state letter of each thread of a process (/proc): T for stopped."""
    states = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.add(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            pass  # a thread that ended meanwhile
    return states


def wait_until_stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process has stopped itself (SIGSTOP, FRAMEWORK_TEST_STOP_AT): every thread in state
    T. The main thread shows T first; a background writer may still be running then."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if thread_states(proc.pid) == {"T"}:
            return
        time.sleep(0.01)
    pytest.fail(f"process {proc.pid} never reached the boundary (exit {proc.poll()})")


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def read_jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compose_config(*overrides: str, test_conf: bool = False, hydra_node: bool = False):
    """The config `python -m framework OVERRIDES...` composes, through Hydra's compose API
    (with `hydra_node`, Hydra's own settings too, as the run sees them in HydraConfig)."""
    from hydra import compose, initialize_config_dir

    from framework.config import recipes, schema

    schema.register()
    recipes.register()
    if test_conf:  # the tests' own config folder, as --config-dir adds it
        overrides = (f"hydra.searchpath=[file://{TESTS / 'conf'}]", *overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


def train_in_process(run_dir: Path, *overrides: str, test_conf: bool = False) -> dict:
    """Train in this process, as `python -m framework hydra.run.dir=RUN_DIR OVERRIDES...` would:
    for what the config does, without paying for a new interpreter."""
    from omegaconf import open_dict

    from framework.config import overrides as overrides_lib
    from framework.engine.run import run

    cfg = compose_config(*overrides, test_conf=test_conf, hydra_node=True)
    given = overrides_lib.given_keys(list(overrides), cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return run(cfg, run_dir, given=given)


def install_checkout(folder: Path) -> Path:
    """`pip install .` (not editable) of this checkout into a fresh virtual environment under `folder`;
    returns its python. The wheel is built from a copy of the source, so that building leaves nothing
    in the checkout, and the copy is deleted: the installed package must not need its source."""
    import shutil
    import site
    import venv

    source = folder / "source"
    ignore = shutil.ignore_patterns(".git", "outputs", "build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, source, ignore=ignore)
    wheels = folder / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("framework-*.whl")
    # A fresh environment that can import what this one has (torch, hydra, ...), so nothing is
    # downloaded: a .pth file lists this environment's site-packages after its own. The .pth
    # files in those folders are not read, so the checkout's editable install stays out of it.
    env_dir = folder / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # this environment's pip installs into it (--python)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(purelib) / "outer_environment.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(source)
    return python


def read_tensorboard(run_dir: Path) -> dict:
    """What TensorBoard's own reader finds in a run: scalars, the config text, the hparams."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    found = {"events": events, "text": None, "hparams": None, "metric_tags": None, "status": None}
    if "config/text_summary" in events.Tags()["tensors"]:
        found["text"] = [t.tensor_proto.string_val[0].decode() for t in events.Tensors("config/text_summary")]
    for content in events.PluginTagToContent("hparams").values():
        data = HParamsPluginData.FromString(content)
        if data.HasField("experiment"):
            found["metric_tags"] = [m.name.tag for m in data.experiment.metric_infos]
        if data.HasField("session_start_info"):
            found["hparams"] = {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}
        if data.HasField("session_end_info"):
            found["status"] = data.session_end_info.status
    return found


# What a tutorial's loop trains: the framework's MLP on synthetic data, SGD as the config has it.
THEIRS = ["model=mlp", "model.hidden=[32]", "data=synthetic", "data.source.n_samples=400", "trainer.max_epochs=4",
          "logger=none"]  # fmt: skip


def tutorial_checkpoint(path, epoch: int, with_streams: bool, prefix: str = "") -> dict:
    """What the PyTorch tutorial's loop saves after training THEIRS a little: weights (maybe
    DDP/compile-prefixed), optimizer state, epoch and loss, and maybe the random streams as torch,
    NumPy and Python return them."""
    import random

    import numpy as np
    import torch

    from framework.checkpoint.migrate import build_state, experiment_config

    state, _ = build_state(experiment_config(THEIRS))
    model, optimizer = state.model, state.optimizer
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 1, 8, 8)).logsumexp(1).mean().backward()
        optimizer.step()
    saved = {
        "epoch": epoch,
        "model_state_dict": {prefix + k: v for k, v in model.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": 0.25,
    }
    if with_streams:
        saved.update(rng=torch.get_rng_state(), np_rng=np.random.get_state(), py_rng=random.getstate())
    torch.save(saved, path)
    return saved


def flip_middle_byte(path):
    """One byte changed in the tensor data: the zip still opens, the contents no longer match."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- a checkpoint policy over a tiny model, without training ----
def make_state() -> TrainState:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return TrainState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))


def payload_maker(state: TrainState):
    def make(kind: str) -> dict:
        meta = {"format_version": formats.FORMAT_VERSION, "kind": kind}
        if kind == "model":
            return {
                "epoch": state.epoch,
                "global_step": state.global_step,
                "model_state_dict": state.model_weights(),
                "config": "seed: 0\n",
                "meta": meta,
            }
        return {**state.capture(), "config": "seed: 0\n", "meta": meta}

    return make


def checkpointer(tmp_path, resumed_from=None, **policy) -> Checkpointer:
    """The `checkpoint=default` policy (its YAML: the values are written there only), with changes."""
    return Checkpointer(default_policy(**policy), tmp_path / "checkpoints", resumed_from=resumed_from)


def default_policy(**changes):
    """conf/checkpoint/default.yaml, with the monitor and mode a classification run puts in force."""
    default = OmegaConf.load(CONF / "checkpoint" / "default.yaml")
    default.pop("defaults")
    default.update(monitor="val/loss", mode="min")
    return OmegaConf.merge(OmegaConf.structured(CheckpointConfig), default, changes)
