"""Which arguments a component's `_target_` takes, checked before anything is built or loaded.

Every argument of a component can be set: one that its option does not list is added with a
plus, Hydra's convention for a key the config does not have (`+optimizer.amsgrad=true`). A key
that the target does not take either is refused by name, with the names it does take, before
any data is loaded (instantiating would only find it after the data).
"""

from __future__ import annotations

import inspect

from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from framework.config.errors import ConfigError

# The parts of the config that are built by calling their `_target_`.
COMPONENTS = ("task", "model", "optimizer", "scheduler", "data.source")


def accepted(target: str, partial: bool) -> list[str] | None:
    """The keyword arguments `target` takes (None: any, it has **kwargs). With `_partial_`, the
    first argument is the one the framework passes at build time (the parameters, the optimizer)."""
    params = list(inspect.signature(get_object(target)).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if partial and named and named[0].kind is named[0].POSITIONAL_OR_KEYWORD:
        named = named[1:]
    return [p.name for p in named]


def check_arguments(cfg: DictConfig) -> None:
    """Refuse a key that a component's target does not take, naming the ones it does."""
    for key in COMPONENTS:
        node = OmegaConf.select(cfg, key)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = node._target_
        try:
            names = accepted(target, bool(node.get("_partial_", False)))
        except Exception as e:  # not importable, or not a callable with a signature
            raise ConfigError(f"{key}._target_={target}: cannot import it ({e})") from e
        if names is None:
            continue
        unknown = [k for k in node if not str(k).startswith("_") and k not in names]
        if unknown:
            raise ConfigError(
                f"{key}.{unknown[0]}: {target} takes no argument {unknown[0]!r}. It takes: {', '.join(names)}"
            )


def explain_unknown_key(e: Exception) -> str | None:
    """Hydra's refusal of `section.key=value` for a key the config does not have, in our words:
    the `+` to add it when the section's target takes it; else the keys that exist. None for any
    other error."""
    cause = e.__cause__
    parent = getattr(cause, "parent_node", None)
    full_key = getattr(cause, "full_key", None)
    if not (isinstance(e, ConfigCompositionException) and str(e).startswith("Could not override")):
        return None
    if not isinstance(parent, DictConfig) or not full_key:
        return None
    section, _, name = full_key.rpartition(".")  # section "" at the top level
    target = parent.get("_target_") if "_target_" in parent else None
    if target is None:
        keys = ", ".join(str(k) for k in parent if k != "hydra")
        return f"{full_key}: no such key. The keys of {section or 'the config'}: {keys}"
    try:
        names = accepted(target, bool(parent.get("_partial_", False)))
    except Exception:
        names = []
    if names is None or name in names:
        hint = "To append to your config use "
        plus = str(e).split(hint, 1)[1].strip() if hint in str(e) else f"+{full_key}=VALUE"
        return (
            f"{full_key} is not in the {section} config, but {target} takes it: add it with a plus, {plus} "
            "(Hydra's way to add a key)"
        )
    return f"{full_key}: {target} takes no argument {name!r}. It takes: {', '.join(names)}"
