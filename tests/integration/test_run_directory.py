"""existing_run=archive and =overwrite act only on a run of ours (framework.runs.run_dir.make_room)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import (
    tree,
)

from framework.runs.run_dir import RunDirRefused, make_room

TINY = ["model=mlp", "trainer.max_steps=2", "logger=none"]


@pytest.fixture
def finished_run(trained_run) -> Path:
    """A finished run (shared by the whole test session: copy_of_run it to change it)."""
    return trained_run(*TINY)


def copy_of_run(finished_run: Path, folder: Path) -> Path:
    shutil.copytree(finished_run, folder, dirs_exist_ok=True)
    return folder


def home_folder(finished_run, tmp_path, small_disk):
    return copy_of_run(finished_run, tmp_path / "home"), "it is the home folder or the root of a file system"


def mount_point(finished_run, tmp_path, small_disk):
    return copy_of_run(finished_run, small_disk("64m", 1000)), "it is the home folder or the root of a file system"


def not_a_run_of_ours(finished_run, tmp_path, small_disk):
    folder = tmp_path / "theirs"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "train.py").write_text("precious")
    (folder / "metrics.json").write_text('{"status": "completed"}')  # another tool's
    return folder, "it has no .framework-run file"


def run_with_a_file_of_the_user(finished_run, tmp_path, small_disk):
    folder = copy_of_run(finished_run, tmp_path / "run")
    (folder / "notes.txt").write_text("precious")
    return folder, "it holds what no run writes (notes.txt): move that out first"


def link_to_a_run(finished_run, tmp_path, small_disk):
    link = tmp_path / "link"
    link.symlink_to(copy_of_run(finished_run, tmp_path / "run"))
    return link, "it is a symbolic link"


@pytest.mark.parametrize(
    "make", [home_folder, mount_point, not_a_run_of_ours, run_with_a_file_of_the_user, link_to_a_run]
)
@pytest.mark.parametrize("policy", ["archive", "overwrite"])
def test_existing_run_acts_only_on_a_run_of_ours(finished_run, tmp_path, small_disk, monkeypatch, make, policy):
    folder, says = make(finished_run, tmp_path, small_disk)
    (tmp_path / "sentinel").write_text("precious")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    before, inside = tree(tmp_path), tree(folder)
    with pytest.raises(RunDirRefused) as refused:
        make_room(folder, policy)
    assert str(refused.value).startswith(f"existing_run={policy} leaves hydra.run.dir={folder} as it is: {says}")
    assert tree(tmp_path) == before and tree(folder) == inside
