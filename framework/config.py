"""Typed schemas for the config, registered in Hydra's ConfigStore, and the checks Hydra cannot do.

Hydra merges each YAML option onto its schema, so a wrong type (`optimizer.lr=abc`) or an
unknown key (`trainer.foo=1`) is refused at compose time with a message that names the key.

Each value is written once, in YAML: the schemas here say which keys exist and their types, and
hold no values (every field is MISSING; tests/test_config.py fails for one that is not). What
every data option shares is in `conf/data_shared.yaml`; an option that extends another
(`checkpoint=periodic` extends `default`) lists only what it changes.

The schemas are stored as configs outside any group (`model_cnn_schema`, ...), so that
`--help` and a mistyped `model=foo` list only the real options. Model, optimizer, scheduler and
data are typed `Any` at the top level: a user's own `model/mynet.yaml` with any `_target_` and
any arguments must fit there too. The built-in options bring their typed schema through their
defaults list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

import framework
from framework.preemption import signal_problem
from framework.run_dir import EXISTING_RUN

# The config shipped inside the package (and so inside the wheel): config.yaml and the groups.
CONF_DIR = Path(__file__).resolve().parent / "conf"


class ConfigError(Exception):
    """A mistake in the user's config: reported as one short message, no traceback."""


# ---- model -------------------------------------------------------------------------------
# `input_shape` and `num_classes` left null are filled in from the data by build.build_model.
@dataclass
class MLPConfig:
    _target_: str = MISSING
    hidden: List[int] = MISSING
    dropout: float = MISSING
    input_shape: Optional[List[int]] = MISSING
    num_classes: Optional[int] = MISSING


@dataclass
class CNNConfig:
    _target_: str = MISSING
    channels: List[int] = MISSING
    dropout: float = MISSING
    input_shape: Optional[List[int]] = MISSING
    num_classes: Optional[int] = MISSING


# ---- optimizer (partial: the parameters come at build time) ------------------------------
@dataclass
class SGDConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    dampening: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING


@dataclass
class AdamWConfig(AdamConfig):
    pass


# ---- scheduler (partial: the optimizer comes at build time) ------------------------------
# Every scheduler steps once per optimizer step. Length keys left null (`T_max`,
# `total_steps`) are filled with max_epochs * steps_per_epoch: never with max_steps, which is a
# stopping point and must not bend the schedule.
@dataclass
class ConstantConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    factor: float = MISSING
    total_iters: int = MISSING


@dataclass
class StepLRConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    step_size: int = MISSING  # optimizer steps
    gamma: float = MISSING


@dataclass
class CosineConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    T_max: Optional[int] = MISSING
    eta_min: float = MISSING


@dataclass
class WarmupCosineConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    warmup_steps: int = MISSING
    total_steps: Optional[int] = MISSING
    min_lr_ratio: float = MISSING


# ---- data --------------------------------------------------------------------------------
@dataclass
class AugmentConfig:
    max_shift: int = MISSING  # pixels, in each direction (0: off)
    noise_std: float = MISSING  # Gaussian noise on every input value (0: off)


@dataclass
class DataConfig:
    source: Any = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    split_seed: int = MISSING  # the train/val/test split is a function of this seed
    on_device: bool = MISSING  # keep in-memory arrays on the training device (needs num_workers=0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class DigitsSource:
    _target_: str = MISSING


@dataclass
class SyntheticSource:
    _target_: str = MISSING
    n_samples: int = MISSING
    input_shape: List[int] = MISSING
    num_classes: int = MISSING
    noise: float = MISSING
    generator_seed: int = MISSING


@dataclass
class NpzSource:
    _target_: str = MISSING
    path: str = MISSING
    x_key: str = MISSING
    y_key: str = MISSING


@dataclass
class DigitsDataConfig(DataConfig):
    source: DigitsSource = field(default_factory=DigitsSource)


@dataclass
class SyntheticDataConfig(DataConfig):
    source: SyntheticSource = field(default_factory=SyntheticSource)


@dataclass
class NpzDataConfig(DataConfig):
    source: NpzSource = field(default_factory=NpzSource)


# ---- the rest ----------------------------------------------------------------------------
DETERMINISM_LEVELS = ("off", "seeded", "strict")
PRECISIONS = ("32", "bf16", "16-mixed")


@dataclass
class DeterminismConfig:
    level: str = MISSING
    # Intra-op CPU threads: float results depend on how many there are. null: every CPU this
    # process may use (or, on resume, the number the checkpoint recorded).
    num_threads: Optional[int] = MISSING


MONITORS = ("val/loss", "val/acc", "train/loss")
# What a run reports at its end (metrics.json "metrics"), and so what a sweep can optimize.
FINAL_METRICS = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc")


@dataclass
class CheckpointConfig:
    """What to write and when (see framework/checkpoint/policy.py), and how to load on resume."""

    enabled: bool = MISSING
    save_last: bool = MISSING
    monitor: Optional[str] = MISSING  # best.pt by this metric; null: no best.pt
    mode: str = MISSING  # min or max
    every_n_epochs: Optional[int] = MISSING
    every_n_steps: Optional[int] = MISSING  # may fall inside an epoch
    keep_last_n: Optional[int] = MISSING  # periodic files kept (newest by step); null keeps all
    model_only: bool = MISSING  # periodic files hold weights + config only (cheap, cannot resume)
    strict_load: bool = MISSING  # on resume, any missing/unexpected key or shape difference stops
    verify_on_resume: bool = MISSING  # validate once after restoring and compare with the recorded loss
    async_save: bool = MISSING  # snapshot at the save point, write in a background thread


@dataclass
class LoggerConfig:
    tensorboard: bool = MISSING


@dataclass
class TrainerConfig:
    max_epochs: int = MISSING
    max_steps: Optional[int] = MISSING  # a stopping point, not part of the schedule
    stop_on_nonfinite_loss: bool = MISSING  # a NaN or infinite train/loss stops the run before it saves
    device: str = MISSING
    precision: str = MISSING
    gradient_clip_val: Optional[float] = MISSING
    log_every_n_steps: int = MISSING
    eval_batch_size: int = MISSING
    processes: int = MISSING  # from the command line: start this many through torchrun (framework/__main__.py)
    stop_signals: Optional[List[str]] = MISSING  # null: framework/preemption.py's STOP_SIGNALS


@dataclass
class Config:
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    data: Any = MISSING
    determinism: DeterminismConfig = MISSING
    checkpoint: CheckpointConfig = MISSING
    logger: LoggerConfig = MISSING
    trainer: TrainerConfig = MISSING
    seed: int = MISSING
    resume: Optional[str] = MISSING
    existing_run: str = MISSING  # refuse, archive or overwrite (framework/run_dir.py)
    allow_config_changes: bool = MISSING
    repeat: int = MISSING
    optimized_metric: Optional[str] = MISSING  # what the task returns, for sweepers that optimize it


# group -> option -> schema. Stored as `<group>_<option>_schema`, outside any group.
SCHEMAS = {
    "model": {"mlp": MLPConfig, "cnn": CNNConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig},
    "scheduler": {
        "none": ConstantConfig,
        "step": StepLRConfig,
        "cosine": CosineConfig,
        "warmup_cosine": WarmupCosineConfig,
    },
    "data": {
        "digits": DigitsDataConfig,
        "synthetic": SyntheticDataConfig,
        "npz": NpzDataConfig,
        "custom": DataConfig,  # any source: its keys are the user's target's arguments
    },
    "determinism": {"base": DeterminismConfig},
    "checkpoint": {"base": CheckpointConfig},
    "logger": {"base": LoggerConfig},
    "trainer": {"base": TrainerConfig},
}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(name=f"{group}_{name}_schema", node=node)
    # `${framework_version:}` in the help text (conf/config.yaml): the version is written once.
    OmegaConf.register_new_resolver("framework_version", lambda: framework.__version__, replace=True)


def check(cfg: DictConfig) -> None:
    """Refuse what composition lets through: missing values and out-of-range choices."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(f"missing required value(s): {keys}. Set them on the command line, e.g. {missing[0]}=...")
    t = cfg.trainer
    problems = []
    det = cfg.determinism
    if det.level not in DETERMINISM_LEVELS:
        problems.append(f"determinism.level={det.level!r} is not one of {DETERMINISM_LEVELS}")
    if det.num_threads is not None and det.num_threads < 1:
        problems.append(f"determinism.num_threads={det.num_threads} must be at least 1 (or null: every CPU)")
    if det.level == "strict" and det.num_threads is None:
        problems.append(
            "determinism.num_threads=null: strict pins the number of threads (the bits depend on it); "
            "set a number, e.g. determinism.num_threads=1"
        )
    if str(t.precision) not in PRECISIONS:
        problems.append(f"trainer.precision={t.precision!r} is not one of {PRECISIONS}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device):
        problems.append(f"trainer.device={t.device!r} is not one of auto, cpu, cuda, cuda:N")
    if t.max_epochs < 1:
        problems.append(f"trainer.max_epochs={t.max_epochs} must be at least 1")
    if t.max_steps is not None and t.max_steps < 1:
        problems.append(f"trainer.max_steps={t.max_steps} must be at least 1 (or null for no limit)")
    if t.log_every_n_steps < 1:
        problems.append(f"trainer.log_every_n_steps={t.log_every_n_steps} must be at least 1")
    metric = cfg.get("optimized_metric")
    if metric is not None and metric not in FINAL_METRICS:
        problems.append(f"optimized_metric={metric!r} is not one of {FINAL_METRICS} (or null)")
    if cfg.existing_run not in EXISTING_RUN:
        problems.append(f"existing_run={cfg.existing_run!r} is not one of {EXISTING_RUN}")
    if not 0 <= cfg.seed < 2**63:
        problems.append(f"seed={cfg.seed} must be zero or positive and below 2**63")
    if t.gradient_clip_val is not None and t.gradient_clip_val <= 0:
        problems.append(f"trainer.gradient_clip_val={t.gradient_clip_val} must be positive (or null: no clipping)")
    if t.processes < 1:
        problems.append(f"trainer.processes={t.processes} must be at least 1")
    for name in t.stop_signals or []:
        problem = signal_problem(name)
        if problem:
            problems.append(f"trainer.stop_signals: {problem}")
    if t.eval_batch_size < 1:
        problems.append(f"trainer.eval_batch_size={t.eval_batch_size} must be at least 1")
    # The built-in schedulers' counts (StepLR divides by step_size at its first step).
    for key, least in (("step_size", 1), ("T_max", 1), ("total_steps", 1), ("warmup_steps", 0), ("total_iters", 0)):
        value = cfg.scheduler.get(key) if isinstance(cfg.scheduler, DictConfig) else None
        if isinstance(value, int) and value < least:
            problems.append(f"scheduler.{key}={value} must be at least {least}")
    c = cfg.checkpoint
    if c.monitor is not None and c.monitor not in MONITORS:
        problems.append(f"checkpoint.monitor={c.monitor!r} is not one of {MONITORS} (or null)")
    if c.mode not in ("min", "max"):
        problems.append(f"checkpoint.mode={c.mode!r} is not min or max")
    for key in ("every_n_epochs", "every_n_steps", "keep_last_n"):
        if c[key] is not None and c[key] < 1:
            problems.append(f"checkpoint.{key}={c[key]} must be at least 1 (or null)")
    d = cfg.data
    if d.batch_size < 1:
        problems.append(f"data.batch_size={d.batch_size} must be at least 1")
    if d.num_workers < 0:
        problems.append(f"data.num_workers={d.num_workers} must be zero or positive")
    if d.get("on_device") and d.num_workers:
        problems.append(
            "data.on_device=true cuts batches on the device in the training process: it needs "
            f"data.num_workers=0 (got {d.num_workers})"
        )
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
        problems.append(
            f"data.val_fraction={d.val_fraction} and data.test_fraction={d.test_fraction} must be in [0, 1)"
            " and leave some data for training"
        )
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                found.append(full)
            else:
                found += _missing_keys(node._get_node(key), full + ".")
    return found


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
