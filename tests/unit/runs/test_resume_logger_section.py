"""A resumed run's sinks: the checkpoint's, unless the resuming command line names the logger;
a checkpoint written before sinks had targets (`logger: {tensorboard: true}`) still resumes."""

from __future__ import annotations

import pytest
from helpers import compose_config
from omegaconf import OmegaConf, open_dict

from framework.config import overrides
from framework.runs.resume import reconcile
from framework.tracking.metrics_logger import chosen_sinks


def checkpoint(*first_overrides: str, logger=None) -> dict:
    config = OmegaConf.to_container(compose_config(*first_overrides), resolve=True)
    if logger is not None:
        config["logger"] = logger  # as an older version wrote it
    return {"config": OmegaConf.to_yaml(config), "meta": {}}


def resumed(ckpt: dict, *resume_overrides: str):
    new = compose_config(*resume_overrides, hydra_node=True)
    given = overrides.given_keys(list(resume_overrides), new.hydra.runtime.choices)
    with open_dict(new):
        del new["hydra"]
    cfg, changed, follows = reconcile(new, ckpt, given)
    return OmegaConf.to_container(cfg.logger), changed, follows


MLFLOW = compose_config("logger=mlflow").logger
TENSORBOARD = compose_config("logger=tensorboard").logger
BOTH = {**TENSORBOARD, **MLFLOW}


@pytest.mark.parametrize("legacy", [True, False])
def test_the_layout_before_sinks_had_targets_resumes_as_it_was(legacy):
    logger, changed, follows = resumed(checkpoint(logger={"tensorboard": legacy}), "trainer.max_steps=9")
    assert logger == {"tensorboard": legacy} and changed == ["trainer.max_steps"] and follows
    assert list(chosen_sinks(OmegaConf.create(logger))) == (["tensorboard"] if legacy else [])


def test_the_checkpoints_sinks_stand_where_the_command_line_names_none():
    # Today's default (tensorboard) is not filled in beside the sink the first run chose.
    logger, changed, _ = resumed(checkpoint("logger=mlflow"))
    assert logger == OmegaConf.to_container(MLFLOW) and changed == []
    logger, _, _ = resumed(checkpoint("logger=none"))
    assert logger == {}


@pytest.mark.parametrize(
    "first, then, expected, changed",
    [
        (["logger=none"], "logger=[tensorboard,mlflow]", BOTH, ["logger.mlflow", "logger.tensorboard"]),
        (["logger=tensorboard"], "logger=none", {}, ["logger.tensorboard"]),
        ([], "logger=mlflow", MLFLOW, ["logger.mlflow", "logger.tensorboard"]),
    ],
)
def test_sinks_the_command_line_names_replace_the_checkpoints_whole(first, then, expected, changed):
    ckpt = checkpoint(*first) if first else checkpoint(logger={"tensorboard": True})
    logger, was_changed, follows = resumed(ckpt, then)
    assert logger == OmegaConf.to_container(OmegaConf.create(expected)) and was_changed == changed and follows


def test_a_key_of_one_sink_changes_that_sink_only():
    ckpt = checkpoint("logger=[tensorboard,mlflow]")
    logger, changed, _ = resumed(ckpt, "logger=[tensorboard,mlflow]", "logger.mlflow.run_name=again")
    assert logger["mlflow"]["run_name"] == "again" and logger["tensorboard"] == dict(TENSORBOARD.tensorboard)
    assert changed == ["logger.mlflow"]
