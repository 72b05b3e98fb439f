"""Fixtures. Helpers that tests import are in helpers.py."""

from __future__ import annotations

import subprocess

import pytest

from framework.config.folders import CONF_DIR


@pytest.fixture
def compose():
    """compose(overrides) -> the composed config, as `python -m framework` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from framework.config import schema

    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides=(): hydra_compose("config", overrides=list(overrides))


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
