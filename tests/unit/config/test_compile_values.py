"""trainer.compile: true, false or one of torch.compile's modes; anything else is refused by name."""

from __future__ import annotations

import pytest
from helpers import compose_config

from framework.config.checks import check
from framework.config.errors import ConfigError
from framework.config.schema import COMPILE_MODES


@pytest.fixture(scope="module")
def cfg():
    return compose_config()  # composed once: each test sets trainer.compile on it


@pytest.mark.parametrize("value", [True, False, *COMPILE_MODES])
def test_true_false_and_the_modes_pass(cfg, value):
    cfg.trainer.compile = value
    check(cfg)


@pytest.mark.parametrize("value", ["fast", 1, ""])
def test_any_other_value_is_refused_in_one_line_naming_the_key(cfg, value):
    cfg.trainer.compile = value
    with pytest.raises(ConfigError) as refused:
        check(cfg)
    said = str(refused.value)
    assert "trainer.compile=" in said and "max-autotune" in said and "\n" not in said


def test_the_command_line_value_reaches_the_check():
    with pytest.raises(ConfigError, match=r"trainer\.compile='fast'"):
        check(compose_config("trainer.compile=fast"))
