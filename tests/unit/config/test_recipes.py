"""Recipes compose: each holds only what differs from the defaults, the command line beats it,
it stands for the whole config on resume, and the Datasets it names come split."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config
from omegaconf import OmegaConf

from framework.config import recipes as recipe_lib
from framework.config.errors import ConfigError
from framework.config.overrides import given_keys
from framework.config.resolved import flatten

SHIPPED = ["digits_cnn", "template", "seed_study", "lr_search", "char_lm", "regression"]


@pytest.mark.parametrize("name", SHIPPED)
def test_a_recipe_holds_only_what_differs_from_the_defaults(name):
    """Each value it sets differs from what its options would give without it."""
    body = OmegaConf.to_container(recipe_lib.read(recipe_lib.find_all()[name]))
    # `- override /model: cnn` reads as {"override /model": "cnn"}
    choices = {k.removeprefix("override /"): v for entry in body.pop("defaults", []) for k, v in entry.items()}
    body.pop("hydra", None)
    groups = [f"{g}={o}" for g, o in choices.items() if o is not None and not g.startswith("hydra/")]
    plain = flatten(OmegaConf.to_container(compose_config(*groups)))
    own = tuple(f"{g}." for g, o in choices.items() if o is None)  # a section of its own: nothing to differ from
    same = {k: v for k, v in flatten(body).items() if k in plain and plain[k] == v and not k.startswith(own)}
    assert same == {}


def test_the_recipe_beats_the_defaults_and_the_command_line_beats_the_recipe():
    cfg = compose_config("recipe=digits_cnn")
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == 3.0e-3
    assert cfg.scheduler.warmup_steps == 100 and cfg.trainer.max_epochs == 40
    cfg = compose_config("recipe=digits_cnn", "optimizer.lr=0.5", "scheduler.warmup_steps=7")
    assert cfg.optimizer.lr == 0.5 and cfg.scheduler.warmup_steps == 7 and cfg.trainer.max_epochs == 40


def test_a_recipe_given_on_resume_stands_for_the_whole_config():
    assert given_keys(["recipe=digits_cnn", "trainer.max_steps=null"], {"recipe": "digits_cnn"}) == [
        "",
        "trainer.max_steps",
    ]


def test_datasets_come_split_by_the_seed_or_as_given(tmp_path):
    from framework.engine import build

    cfg = compose_config("recipe=template")
    task = build.build_task(cfg.task)
    splits = build.build_data(cfg.data, cfg.seed, task)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1257, 270, 270)
    assert task.model_facts(splits) == {"input_shape": [1, 8, 8], "num_classes": 10}
    first = splits.val[0][0]
    assert torch.equal(first, splits.val[0][0])  # a random transform draws the same in validation

    cfg = compose_config("data=custom", "data.source._target_=user_modules.digit_splits")
    splits = build.build_data(cfg.data, cfg.seed, task)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1000, 797, 0)
    bad = compose_config("data=custom", "data.source._target_=user_modules.digit_splits", "+data.source.keys=[train]")
    with pytest.raises(ConfigError, match="must have 'train' and 'val'"):
        build.build_data(bad.data, bad.seed, task)
