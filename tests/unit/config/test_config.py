"""Every option of every group composes and builds; the typed schema refuses bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from helpers import CONF, compose_config
from omegaconf import MISSING, OmegaConf

from framework import data
from framework.config import schema
from framework.config.checks import check
from framework.config.errors import ConfigError
from framework.config.target_arguments import check_arguments
from framework.engine import build

GROUPS = ["task", "model", "optimizer", "scheduler", "data", "determinism", "checkpoint", "logger", "trainer"]


# Options that need a task, data or model of their kind to build with.
PARTNERS = {
    "task=regression": ["data=diabetes", "model=mlp"],
    "task=language_model": ["data=text", "model=transformer"],
    "data=diabetes": ["task=regression", "model=mlp"],
    "data=text": ["task=language_model", "model=transformer"],
    "model=transformer": ["task=language_model", "data=text"],
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_options_the_design_names():
    assert options("task") == ["classification", "language_model", "regression"]
    assert options("model") == ["cnn", "mlp", "transformer"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "step", "warmup_cosine"]
    assert options("data") == ["custom", "diabetes", "digits", "npz", "synthetic", "text"]
    assert options("determinism") == ["off", "seeded", "strict"]
    assert {"tensorboard", "none"} <= set(options("logger"))
    assert "off" in options("checkpoint")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_builds(compose, tmp_path, group, option):
    overrides = [f"{group}={option}", *PARTNERS.get(f"{group}={option}", [])]
    if option == "npz":
        path = tmp_path / "arrays.npz"
        import numpy as np

        np.savez(path, x=np.random.rand(40, 1, 4, 4).astype("float32"), y=np.arange(40) % 3)
        overrides.append(f"data.source.path={path}")
    if option == "custom":  # any target: here, one that returns arrays
        overrides.append("data.source._target_=framework.data.load_digits")
    cfg = compose(overrides)
    check(cfg)
    task = build.build_task(cfg.task)
    splits = build.build_data(cfg.data, cfg.seed, task)
    model = build.build_model(cfg.model, task.model_facts(splits))
    optimizer = build.build_optimizer(cfg.optimizer, model)
    scheduler = build.build_scheduler(cfg.scheduler, optimizer, total_steps=100)
    assert isinstance(model, torch.nn.Module)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    batch = next(iter(data.eval_loader(splits.train, 8, 0)))
    assert torch.isfinite(task.loss(model, batch))
    assert set(task.metrics_from(task.sums(model, batch))) == set(task.metrics)


def test_the_chosen_option_is_what_gets_built(compose):
    cfg = compose(["model=mlp", "model.hidden=[7]", "optimizer=adamw", "optimizer.lr=0.003", "scheduler=cosine"])
    task = build.build_task(cfg.task)
    splits = build.build_data(cfg.data, cfg.seed, task)
    model = build.build_model(cfg.model, task.model_facts(splits))
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [7, 10]
    optimizer = build.build_optimizer(cfg.optimizer, model)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["lr"] == 0.003
    scheduler = build.build_scheduler(cfg.scheduler, optimizer, total_steps=123)
    # T_max left null in the config is the whole run's length.
    assert type(scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR and scheduler.T_max == 123


def test_a_wrong_type_is_refused_at_compose_time(compose):
    with pytest.raises(Exception, match="optimizer.lr"):
        compose(["optimizer.lr=abc"])


def test_missing_values_are_listed_by_key(compose):
    cfg = compose(["data=npz"])
    with pytest.raises(ConfigError, match=r"data\.source\.path"):
        check(cfg)


def test_out_of_range_choices_are_refused(compose):
    for override, key in [
        ("trainer.precision=64", "trainer.precision"),
        ("determinism.level=max", "determinism.level"),
        ("trainer.device=tpu", "trainer.device"),
        ("data.val_fraction=0.9", "data.val_fraction"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check(compose([override]))


def test_split_is_fixed_by_the_seed(compose):
    def held_out_images(seed):
        cfg = compose([f"seed={seed}"])
        splits = build.build_data(cfg.data, seed, build.build_task(cfg.task))
        return splits.test.tensors[0]

    assert torch.equal(held_out_images(3), held_out_images(3))
    assert not torch.equal(held_out_images(3), held_out_images(4))
    cfg = compose(["seed=5"])
    assert OmegaConf.to_container(cfg.data, resolve=True)["split_seed"] == 5


def test_an_added_argument_reaches_the_component(compose):
    cfg = compose(["optimizer=adamw", "+optimizer.amsgrad=true", "+model.foo=1"])
    with pytest.raises(ConfigError, match=r"model\.foo: framework\.models\.CNN takes no argument 'foo'"):
        check_arguments(cfg)
    cfg = compose(["optimizer=adamw", "+optimizer.amsgrad=true"])
    check_arguments(cfg)
    task = build.build_task(cfg.task)
    model = build.build_model(cfg.model, task.model_facts(build.build_data(cfg.data, cfg.seed, task)))
    assert build.build_optimizer(cfg.optimizer, model).defaults["amsgrad"] is True


# ---- each value written once ------------------------------------------------------------------
def test_the_schemas_hold_types_not_values():
    """A default written in a dataclass and again in YAML can drift apart; the YAML is the one place."""

    def leaves(schema, prefix=""):
        for f in dataclasses.fields(schema):
            if dataclasses.is_dataclass(f.type) or f.default_factory is not dataclasses.MISSING:
                yield from leaves(f.default_factory, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", f.default

    schemas = [schema.Config] + [s for options in schema.SCHEMAS.values() for s in options.values()]
    written = [(s.__name__, key, value) for s in schemas for key, value in leaves(s) if value != MISSING]
    assert written == []


def test_an_option_that_extends_another_repeats_none_of_its_values():
    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    def values_of(path):
        raw = yaml.safe_load(path.read_text()) or {}
        return raw.pop("defaults", []), flat(raw)

    for path in sorted(CONF.glob("*/*.yaml")):
        defaults, own = values_of(path)
        for base in (d for d in defaults if isinstance(d, str) and d != "_self_" and not d.endswith("_schema@_here_")):
            base_path = (
                CONF / f"{base.strip('/').split('@')[0]}.yaml" if base.startswith("/") else path.parent / f"{base}.yaml"
            )
            _, inherited = values_of(base_path)
            repeated = {k: v for k, v in own.items() if k in inherited and inherited[k] == v}
            assert repeated == {}, f"{path.relative_to(CONF)} repeats {base}: {repeated}"


def test_the_slurm_launcher_for_multi_process_jobs_composes():
    cfg = compose_config("hydra/launcher=slurm_ddp", hydra_node=True)
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.max_num_timeout == 3
