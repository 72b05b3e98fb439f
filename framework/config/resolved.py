"""A resolved config as a checkpoint stores it (YAML text) and as flat `a.b.c` keys."""

from __future__ import annotations

import yaml
from omegaconf import DictConfig, OmegaConf

from framework.config.errors import ConfigError


def config_from_text(text: object, where: str) -> DictConfig:
    """A checkpoint's config (YAML text), parsed with limits: a file from elsewhere can hold an
    alias bomb (a few hundred bytes whose aliases expand without end) or nesting deep enough to
    exhaust the stack. The framework writes neither, so such a config is refused."""
    if not isinstance(text, str) or len(text) > 2**20:
        raise ConfigError(f"{where}: its config is not YAML text of at most 1 MiB")
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events: nothing is expanded
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{where}: its config uses YAML aliases, which the framework never writes")
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > 64:
                raise ConfigError(f"{where}: its config is nested deeper than any the framework writes")
        cfg = OmegaConf.create(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: its config is not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{where}: its config is not a mapping of keys to values")
    return cfg


def flatten(tree, prefix: str = "") -> dict:
    """A plain config tree as dotted keys: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}.
    Lists are values; an empty section is kept as one key whose value is {}."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if tree else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}
