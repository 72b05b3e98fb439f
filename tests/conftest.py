"""Fixtures. Helpers that tests import are in helpers.py."""

from __future__ import annotations

import pytest

from framework.config import CONF_DIR


@pytest.fixture
def compose():
    """compose(overrides) -> the composed config, as `python -m framework` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from framework import config

    config.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides=(): hydra_compose("config", overrides=list(overrides))
