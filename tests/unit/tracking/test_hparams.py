"""What tells a run from the others: the keys its command line set, and its name."""

from __future__ import annotations

from pathlib import Path

from helpers import compose_config

from framework.config import overrides
from framework.tracking.hparams import command_line_hparams, run_name


def hparams_of(*given_overrides: str, with_choices: bool = True) -> dict:
    cfg = compose_config(*given_overrides, hydra_node=True)
    choices = dict(cfg.hydra.runtime.choices)
    given = overrides.given_keys(list(given_overrides), choices)
    return command_line_hparams(cfg, given, choices if with_choices else None)


def test_the_keys_the_command_line_set_and_the_seed_not_the_whole_config():
    assert hparams_of("optimizer.lr=0.02") == {"optimizer.lr": 0.02, "seed": 0}
    assert hparams_of("seed=3", "model=mlp", "model.hidden=[8,8]", "data=synthetic") == {
        "seed": 3, "model": "mlp", "model.hidden": [8, 8], "data": "synthetic"}  # fmt: skip


def test_how_a_run_goes_on_or_is_recorded_is_not_an_hparam():
    how = ["resume=auto", "existing_run=archive", "allow_config_changes=true", "logger=[tensorboard,mlflow]"]
    assert hparams_of(*how, "trainer.max_steps=40") == {"trainer.max_steps": 40, "seed": 0}


def test_a_recipe_is_its_name_and_a_group_without_hydras_choices_its_target():
    assert hparams_of("recipe=template")["recipe"] == "template"
    assert hparams_of("optimizer=adamw", with_choices=False) == {"optimizer": "torch.optim.AdamW", "seed": 0}


def test_a_run_is_named_by_its_directory_and_its_keys():
    assert run_name(Path("outputs/2026-01-01/10-00-00-000001"), {"seed": 0}) == "10-00-00-000001 seed=0"
    sweep_job = Path("outputs/multirun/2026-01-01/10-00-00-000001/1")
    assert run_name(sweep_job, {"optimizer.lr": 0.1, "seed": 0}) == "10-00-00-000001/1 optimizer.lr=0.1 seed=0"
