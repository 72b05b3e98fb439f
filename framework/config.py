"""Typed schemas for the config, registered in Hydra's ConfigStore.

Hydra merges each YAML option onto its schema, so a wrong type (`optimizer.lr=abc`) or an
unknown key (`trainer.foo=1`) is refused at compose time with a message that names the key.
Schemas live in the `schema/...` groups so that `model=foo` lists only the real options.

Model, optimizer, scheduler and data are typed `Any` at the top level: a user's own
`conf/model/mynet.yaml` with any `_target_` and any arguments must fit there too. The built-in
options bring their own typed schema through their defaults list.

Checks that Hydra cannot do at compose time (missing values, allowed choices) are in `check`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(Exception):
    """A mistake in the user's config: reported as one short message, no traceback."""


# ---- model -------------------------------------------------------------------------------
# `input_shape` and `num_classes` left null are filled in from the data by build.build_model.
@dataclass
class MLPConfig:
    _target_: str = "framework.models.MLP"
    hidden: List[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.2
    input_shape: Optional[List[int]] = None
    num_classes: Optional[int] = None


@dataclass
class CNNConfig:
    _target_: str = "framework.models.CNN"
    channels: List[int] = field(default_factory=lambda: [16, 32])
    dropout: float = 0.25
    input_shape: Optional[List[int]] = None
    num_classes: Optional[int] = None


# ---- optimizer (partial: the parameters come at build time) ------------------------------
@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.9
    dampening: float = 0.0
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 1e-2


# ---- scheduler (partial: the optimizer comes at build time) ------------------------------
# Every scheduler steps once per optimizer step. Length keys left null (`T_max`,
# `total_steps`) are filled with max_epochs * steps_per_epoch: never with max_steps, which is a
# stopping point and must not bend the schedule.
@dataclass
class ConstantConfig:
    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    _partial_: bool = True
    # factor 1 for 0 steps: the learning rate never changes. A real scheduler object keeps the
    # loop and the checkpoint the same whether or not a schedule is chosen.
    factor: float = 1.0
    total_iters: int = 0


@dataclass
class StepLRConfig:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = 200  # optimizer steps
    gamma: float = 0.5


@dataclass
class CosineConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: Optional[int] = None
    eta_min: float = 0.0


@dataclass
class WarmupCosineConfig:
    _target_: str = "framework.schedulers.WarmupCosine"
    _partial_: bool = True
    warmup_steps: int = 50
    total_steps: Optional[int] = None
    min_lr_ratio: float = 0.0


# ---- data --------------------------------------------------------------------------------
@dataclass
class AugmentConfig:
    # Shift each image by up to this many pixels in each direction (0 turns it off).
    max_shift: int = 1
    # Standard deviation of Gaussian noise added to every input value (0 turns it off).
    noise_std: float = 0.0


@dataclass
class DataConfig:
    source: Any = MISSING
    batch_size: int = 64
    num_workers: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # The train/val/test split is a function of this seed (by default the run's seed).
    split_seed: int = "${seed}"  # type: ignore[assignment]
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class DigitsSource:
    _target_: str = "framework.data.load_digits"


@dataclass
class SyntheticSource:
    _target_: str = "framework.data.make_synthetic"
    n_samples: int = 2000
    input_shape: List[int] = field(default_factory=lambda: [1, 8, 8])
    num_classes: int = 10
    noise: float = 1.0
    # Fixed by default so that a seed sweep varies the training, not the data set itself.
    generator_seed: int = 0


@dataclass
class NpzSource:
    _target_: str = "framework.data.load_npz"
    path: str = MISSING
    x_key: str = "x"
    y_key: str = "y"


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
    level: str = "seeded"


MONITORS = ("val/loss", "val/acc", "train/loss")


@dataclass
class CheckpointConfig:
    """What to write and when (see framework/checkpoint/policy.py), and how to load on resume."""

    enabled: bool = True
    save_last: bool = True
    monitor: Optional[str] = "val/loss"  # best.pt by this metric; null: no best.pt
    mode: str = "min"  # min or max
    every_n_epochs: Optional[int] = None
    every_n_steps: Optional[int] = None  # may fall inside an epoch
    keep_last_n: Optional[int] = None  # periodic files kept (newest by step); null keeps all
    model_only: bool = False  # periodic files hold weights + config only (cheap, cannot resume)
    strict_load: bool = True  # on resume, any missing/unexpected key or shape difference stops
    verify_on_resume: bool = True  # validate once after restoring and compare with the recorded loss


@dataclass
class LoggerConfig:
    tensorboard: bool = True


@dataclass
class TrainerConfig:
    max_epochs: int = 30
    # A stopping point, not part of the schedule: null trains all max_epochs.
    max_steps: Optional[int] = None
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "32"  # 32, bf16, 16-mixed
    gradient_clip_val: Optional[float] = None  # max global gradient norm; null is off
    log_every_n_steps: int = 10
    eval_batch_size: int = 512


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
    seed: int = 0
    # null: start fresh; auto: continue from the newest valid checkpoint in hydra.run.dir if there
    # is one; or a run directory or checkpoint file to continue from.
    resume: Optional[str] = None
    # Let a resumed run change keys that alter the trajectory (e.g. extend max_epochs).
    allow_config_changes: bool = False
    # Changes nothing in training. Sweep it (`repeat=0,1`) to run every configuration more than
    # once: the sweep summary then checks that the repeats have identical fingerprints.
    repeat: int = 0


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    schemas = {
        "model": {"mlp": MLPConfig, "cnn": CNNConfig},
        "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig},
        "scheduler": {
            "none": ConstantConfig,
            "step": StepLRConfig,
            "cosine": CosineConfig,
            "warmup_cosine": WarmupCosineConfig,
        },
        "data": {"digits": DigitsDataConfig, "synthetic": SyntheticDataConfig, "npz": NpzDataConfig},
        "determinism": {"base": DeterminismConfig},
        "checkpoint": {"base": CheckpointConfig},
        "logger": {"base": LoggerConfig},
        "trainer": {"base": TrainerConfig},
    }
    for group, options in schemas.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def check(cfg: DictConfig) -> None:
    """Refuse what composition lets through: missing values and out-of-range choices."""
    missing = sorted(_missing_keys(cfg))
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(f"missing required value(s): {keys}. Set them on the command line, e.g. {missing[0]}=...")
    t = cfg.trainer
    problems = []
    if cfg.determinism.level not in DETERMINISM_LEVELS:
        problems.append(f"determinism.level={cfg.determinism.level!r} is not one of {DETERMINISM_LEVELS}")
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
    if cfg.seed < 0:
        problems.append(f"seed={cfg.seed} must be zero or positive")
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
