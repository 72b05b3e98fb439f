"""An optimizing sweeper searches the way the task says its metric is better: Optuna minimizing r2,
or maximizing mse, is refused before any trial trains."""

from __future__ import annotations

import pytest
from helpers import compose_config

from framework.cli.jobs import check_objective
from framework.config.errors import ConfigError


def test_a_sweeper_that_optimizes_the_metric_the_wrong_way_is_refused():
    cfg = compose_config("recipe=lr_search", "task=regression", "optimized_metric=val/mse", hydra_node=True)
    with pytest.raises(ConfigError, match=r"val/mse is better lower .*direction=minimize"):
        check_objective(cfg, cfg.hydra)
    cfg = compose_config("hydra/sweeper=optuna", "task=regression", "optimized_metric=val/r2", hydra_node=True)
    with pytest.raises(ConfigError, match=r"direction=minimize, but optimized_metric=val/r2 is better higher"):
        check_objective(cfg, cfg.hydra)  # Optuna's default: minimize


def test_a_sweeper_that_optimizes_the_metric_its_way_passes():
    for overrides in (
        ["recipe=lr_search"],  # val/acc, maximize
        ["recipe=lr_search", "task=regression", "optimized_metric=val/r2"],
        ["hydra/sweeper=optuna", "task=regression", "optimized_metric=val/mae"],
        ["task=regression", "optimized_metric=val/r2"],  # the basic sweeper has no direction
    ):
        cfg = compose_config(*overrides, hydra_node=True)
        check_objective(cfg, cfg.hydra)
