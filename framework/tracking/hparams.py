"""What tells a run from the others: the keys its command line (or its sweep) set, and its name."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

# How an invocation runs or records, not what it trains: never an hparam.
NOT_HPARAMS = ("resume", "existing_run", "allow_config_changes", "logger")


def command_line_hparams(cfg: DictConfig, given: list[str] | None, choices: dict | None = None) -> dict:
    """The keys the command line set, with their values, and the seed: {"optimizer.lr": 0.02, "seed": 0}.

    `given`: the keys the overrides touch (framework/config/overrides.given_keys). A group's
    option (`optimizer=adamw`) is the option's name from `choices` (Hydra's runtime choices; a
    run without Hydra has none, and then the section's `_target_` stands for it); a recipe is
    `recipe` with its name.
    """
    choices = choices or {}
    found = {}
    for key in given or []:
        if key == "":  # a recipe, or an option placed at the top level: its keys are not known one by one
            if choices.get("recipe"):
                found["recipe"] = choices["recipe"]
            continue
        if key in NOT_HPARAMS or key.split(".")[0] in NOT_HPARAMS:
            continue
        if key in choices:
            chosen = choices[key]
            found[key] = list(chosen) if isinstance(chosen, (list, tuple, ListConfig)) else chosen
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):
            if "_target_" in value:
                found[key] = value._target_
        elif isinstance(value, ListConfig):
            found[key] = OmegaConf.to_container(value, resolve=True)
        else:
            found[key] = value
    found["seed"] = cfg.seed
    return found


def hydra_choices() -> dict:
    """The options Hydra composed this run from (empty for a run without Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return OmegaConf.to_container(HydraConfig.get().runtime.choices, resolve=True)


def run_name(run_dir: Path, hparams: dict) -> str:
    """The run directory's name, with its sweep's for a sweep job (whose own is its number), and
    the keys its command line set: `14-02-11-123456/0 optimizer.lr=0.02 seed=0`."""
    label = f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name
    return " ".join([label, *(f"{k}={v}" for k, v in hparams.items())])
