"""A real install: `pip install .` (not editable) into a fresh virtual environment, then
`python -m framework` from another directory trains. The configs and recipes travel inside the wheel."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow


def test_a_non_editable_install_trains_from_any_directory(tmp_path):
    # The wheel is built from a copy of the source, so that building leaves nothing in the checkout.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(".git", "outputs", "build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, source, ignore=ignore)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("framework-*.whl")
    # A fresh environment that can import what this one has (torch, hydra, ...), so nothing is
    # downloaded: a .pth file lists this environment's site-packages after its own. The .pth
    # files in those folders are not read, so the checkout's editable install stays out of it.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(purelib) / "outer_environment.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(source)  # the installed package must not need its source

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import framework; print(framework.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr  # the installed copy, not the checkout

    # The default training, as the README's first command runs it.
    run = subprocess.run([python, "-m", "framework"], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    (run_dir,) = (elsewhere / "outputs").glob("*/*")
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["meta"]["git_commit"] is None
    assert summary["metrics"]["test/acc"] >= 0.97
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    help_text = subprocess.run([python, "-m", "framework", "--help"], cwd=elsewhere, capture_output=True, text=True,
                               timeout=120).stdout  # fmt: skip
    assert "model: cnn, mlp" in help_text

    # The shipped recipes travel in the wheel: one runs, with its own model and dataset module.
    listed = subprocess.run([python, "-m", "framework.recipe", "list"], cwd=elsewhere, capture_output=True, text=True,
                            timeout=120).stdout  # fmt: skip
    assert {line.split()[0] for line in listed.splitlines() if line} >= {"digits_cnn", "template", "lr_search"}
    recipe_run = subprocess.run([python, "-m", "framework", "recipe=template", "trainer.max_steps=2", "logger=none",
                                 "hydra.run.dir=template_run"], cwd=elsewhere, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
    assert recipe_run.returncode == 0, recipe_run.stderr
