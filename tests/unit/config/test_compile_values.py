"""trainer.compile: true, false or one of torch.compile's modes; anything else is refused by name."""

from __future__ import annotations

import pytest
from helpers import compose_config

from framework.config.checks import check
from framework.config.errors import ConfigError
from framework.config.schema import COMPILE_MODES


@pytest.mark.parametrize("value", ["true", "false", *COMPILE_MODES])
def test_true_false_and_the_modes_pass(value):
    check(compose_config(f"trainer.compile={value}"))


@pytest.mark.parametrize("value", ["fast", "1", "''"])
def test_any_other_value_is_refused_in_one_line_naming_the_key(value):
    with pytest.raises(ConfigError) as refused:
        check(compose_config(f"trainer.compile={value}"))
    said = str(refused.value)
    assert "trainer.compile=" in said and "max-autotune" in said and "\n" not in said
