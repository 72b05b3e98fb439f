"""Recipes in process: each shipped one trains; a Dataset with a keyed transform gives the same bits
with any number of loader workers; the metric a search optimizes is checked before training."""

from __future__ import annotations

import pytest
from helpers import compose_config, train_in_process

from framework.cli.jobs import check_objective
from framework.config import recipes as recipe_lib
from framework.config.errors import ConfigError

SHIPPED = ["digits_cnn", "template", "seed_study", "lr_search", "char_lm", "regression"]
# A step or two is enough to show that a recipe builds and trains.
SHORT = ["trainer.max_steps=2", "logger=none", "checkpoint=off"]
# Cheaper still, building the same: char_lm would validate and test on 360 windows of 128 characters.
SMALLER = {"char_lm": ["data.val_fraction=0.01", "data.test_fraction=0.01"]}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_composes_and_trains(tmp_path, name):
    recipe = recipe_lib.find_all()[name]
    assert recipe.shipped
    what_for, command = recipe.comment_lines()[:2]
    assert what_for and command == f"python -m framework recipe={name}"
    summary = train_in_process(tmp_path / "run", f"recipe={name}", *SHORT, *SMALLER.get(name, []))
    assert summary["status"] == "completed" and summary["global_step"] == 2


def test_a_dataset_with_a_keyed_transform_gives_the_same_bits_with_0_and_2_workers(tmp_path):
    def fingerprint(source: str, workers: int) -> str:
        run = tmp_path / f"{source}-{workers}"
        overrides = ["recipe=template", "trainer.max_steps=6", f"data.num_workers={workers}", *SHORT[1:]]
        summary = train_in_process(run, *overrides, f"data.source._target_={source}")
        return summary["fingerprint"]

    keyed = "framework.recipes.template.DigitImages"
    assert fingerprint(keyed, 0) == fingerprint(keyed, 2)
    # The control: a transform drawing from torch's global generator follows the worker count.
    unkeyed = "user_modules.GlobalRandomDigits"
    assert fingerprint(unkeyed, 0) != fingerprint(unkeyed, 2)


def test_the_metric_to_optimize_is_refused_before_training_when_it_cannot_exist(tmp_path):
    refused = "optimized_metric=val/accuracy: task .* does not report it; it reports train/loss, val/"
    with pytest.raises(ConfigError, match=refused):
        train_in_process(tmp_path / "a", "optimized_metric=val/accuracy", *SHORT)
    with pytest.raises(ConfigError, match="the val split is empty"):
        train_in_process(tmp_path / "b", "optimized_metric=val/acc", "data.val_fraction=0", *SHORT)
    assert not (tmp_path / "b/metrics.jsonl").exists()  # no step was trained
    cfg = compose_config("recipe=lr_search", "optimized_metric=null", hydra_node=True)
    with pytest.raises(ConfigError, match="optimizes the value each job returns"):
        check_objective(cfg, cfg.hydra)
