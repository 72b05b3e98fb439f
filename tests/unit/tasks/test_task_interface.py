"""A user's task is any class with the documented parts: one that is no Task subclass and writes
only metrics, loss, sums and metrics_from gets Task's defaults for the rest."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config

from framework.config.errors import ConfigError
from framework.engine import build
from framework.tasks.task import Task


def test_a_task_without_the_optional_parts_gets_tasks_defaults():
    cfg = compose_config("task._target_=user_modules.MinimalTask")
    task = build.build_task(cfg.task)
    assert not isinstance(task, Task)
    splits = build.build_data(cfg.data, cfg.seed, task)  # arrays: check_arrays
    assert len(splits.train) and task.model_facts(splits) == {}
    task.check_sample(splits.first, "data.source: the first training sample")
    custom = compose_config(
        "task._target_=user_modules.MinimalTask", "data=custom", "data.source._target_=user_modules.DictDigits"
    )
    build.build_data(custom.data, custom.seed, task)  # a dataset: check_sample


def test_a_task_keeps_the_optional_parts_it_writes():
    cfg = compose_config("task=dict_digits", test_conf=True)
    task = build.build_task(cfg.task)
    sample = {"image": torch.zeros(1, 8, 8), "rows": torch.zeros(8), "label": torch.tensor(1)}
    task.check_sample(sample, "here")
    assert type(task).check_sample is task.check_sample.__func__


def test_a_model_key_left_null_that_the_task_does_not_fill_is_named():
    cfg = compose_config("task._target_=user_modules.MinimalTask")  # model=cnn: input_shape, num_classes null
    task = build.build_task(cfg.task)
    facts = task.model_facts(build.build_data(cfg.data, cfg.seed, task))
    with pytest.raises(ConfigError, match=r"^model\.input_shape is null .* model_facts does not give it: set model"):
        build.build_model(cfg.model, facts)
