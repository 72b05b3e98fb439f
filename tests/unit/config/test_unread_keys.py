"""Keys that nothing reads are refused before anything runs (framework/config/checks.py)."""

from __future__ import annotations

import pytest
from helpers import compose_config
from omegaconf import OmegaConf

from framework.config.checks import check, unread_keys
from framework.config.errors import ConfigError


@pytest.mark.parametrize(
    "override, section",
    [
        ("+trainer.accumulate_grad=4", "trainer"),
        ("+trainer.ema_decay=0.9", "trainer"),
        ("+checkpoint.patience=3", "checkpoint"),
        ("+determinism.threads=2", "determinism"),
        ("+data.root=/data", "data"),
        ("+data.augment.rotate=10", "data.augment"),
    ],
)
def test_a_key_added_to_a_section_without_a_target_is_refused_with_the_sections_keys(override, section):
    key = override[1:].split("=")[0]
    with pytest.raises(ConfigError) as refused:
        check(compose_config(override))
    message = str(refused.value)
    assert message.startswith(f"{key}: no such key; nothing reads it. The keys of {section}: ")
    assert "\n" not in message
    known = message.split(f"The keys of {section}: ")[1].split(", ")
    assert set(known) == set(OmegaConf.select(compose_config(), section).keys()) and key.split(".")[-1] not in known


def test_a_top_level_key_is_refused_with_the_configs_keys():
    with pytest.raises(ConfigError, match=r"^seeds: no such key; nothing reads it. The keys of the config: task, "):
        check(compose_config("+seeds=3"))


def test_every_unread_key_is_named_in_one_line():
    cfg = compose_config("+trainer.ema_decay=0.9", "+checkpoint.patience=3")
    assert sorted(key for key, _ in unread_keys(cfg)) == ["checkpoint.patience", "trainer.ema_decay"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["optimizer=adam", "+optimizer.amsgrad=true"],  # a real argument of torch.optim.Adam: its target takes it
        ["+model.bias=true"],  # left to the target's signature (target_arguments.check_arguments)
        ["recipe=digits_cnn"],
        ["recipe=template"],
        ["recipe=seed_study"],
        # A key that an interpolation reads, absolute or relative.
        ["+data_dir=/data", "data=npz", "data.source.path=${data_dir}/x.npz"],
        ["+data.folder=/data", "data=npz", "data.source.path=${..folder}/x.npz"],
    ],
)
def test_what_the_framework_or_a_target_reads_is_accepted(overrides):
    assert unread_keys(compose_config(*overrides)) == []


@pytest.mark.parametrize("model", ["noisy", "unpool", "unseeded"])
def test_the_tests_own_options_are_accepted(model):
    assert unread_keys(compose_config(f"model={model}", "determinism=paranoid", test_conf=True)) == []


def test_a_checkpoints_config_may_hold_a_key_an_older_version_read():
    cfg = OmegaConf.create(OmegaConf.to_yaml(compose_config()))  # as a checkpoint's config is read
    cfg.trainer.retired_option = 1
    with pytest.raises(ConfigError, match="trainer.retired_option: no such key"):
        check(cfg)
    check(cfg, every_key_read=False)
