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

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

import framework
from framework.tasks.task import main_metric

# ---- model -------------------------------------------------------------------------------
# A model's keys that, declared and left null, are filled in from the data by build.build_model
# (and so recorded in the run's config).
FROM_DATA = ("input_shape", "num_classes", "vocab_size", "block_size")


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


@dataclass
class TransformerConfig:
    _target_: str = MISSING
    vocab_size: Optional[int] = MISSING
    block_size: Optional[int] = MISSING  # the longest sequence: the position embedding's size
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    dropout: float = MISSING
    tie_weights: bool = MISSING  # the output head shares the token embedding's matrix


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
class TextSource:
    _target_: str = MISSING
    path: Optional[str] = MISSING  # a UTF-8 text file; null: Python's help topics (pydoc_data)
    block_size: int = MISSING  # tokens (characters) per window
    val_fraction: float = MISSING
    test_fraction: float = MISSING


@dataclass
class DiabetesSource:
    _target_: str = MISSING
    standardize: bool = MISSING  # z-score inputs and target (the whole set's mean and standard deviation)


@dataclass
class DigitsDataConfig(DataConfig):
    source: DigitsSource = field(default_factory=DigitsSource)


@dataclass
class SyntheticDataConfig(DataConfig):
    source: SyntheticSource = field(default_factory=SyntheticSource)


@dataclass
class NpzDataConfig(DataConfig):
    source: NpzSource = field(default_factory=NpzSource)


@dataclass
class TextDataConfig(DataConfig):
    source: TextSource = field(default_factory=TextSource)


@dataclass
class DiabetesDataConfig(DataConfig):
    source: DiabetesSource = field(default_factory=DiabetesSource)


# ---- the rest ----------------------------------------------------------------------------
DETERMINISM_LEVELS = ("off", "seeded", "strict")


PRECISIONS = ("32", "bf16", "16-mixed")


@dataclass
class DeterminismConfig:
    level: str = MISSING
    # Intra-op CPU threads: float results depend on how many there are. null: every CPU this
    # process may use (or, on resume, the number the checkpoint recorded).
    num_threads: Optional[int] = MISSING


@dataclass
class CheckpointConfig:
    """What to write and when (see framework/checkpoint/policy.py), and how to load on resume."""

    enabled: bool = MISSING
    save_last: bool = MISSING
    monitor: Optional[str] = MISSING  # best.pt by this metric of the task; null: no best.pt
    mode: Optional[str] = MISSING  # min or max; null: the metric's direction, as the task declares it
    every_n_epochs: Optional[int] = MISSING
    every_n_steps: Optional[int] = MISSING  # may fall inside an epoch
    keep_last_n: Optional[int] = MISSING  # periodic files kept (newest by step); null keeps all
    model_only: bool = MISSING  # periodic files hold weights + config only (cheap, cannot resume)
    strict_load: bool = MISSING  # on resume, any missing/unexpected key or shape difference stops
    verify_on_resume: bool = MISSING  # validate once after restoring and compare with the recorded loss
    async_save: bool = MISSING  # snapshot at the save point, write in a background thread
    remote: Optional[str] = MISSING  # an fsspec URL every checkpoint is uploaded to (framework/checkpoint/remote.py)
    remote_required: bool = MISSING  # refuse to start when checkpoint.remote does not answer
    upload_wait_s: float = MISSING  # the run's end waits at most this long for queued uploads


@dataclass
class EmaConfig:
    decay: Optional[float] = MISSING  # null: off
    evaluate: bool = MISSING  # validate, test, choose best.pt and export with the average


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = MISSING  # validations without improvement; null: off
    monitor: Optional[str] = MISSING
    mode: Optional[str] = MISSING  # min or max; null: the metric's direction
    min_delta: float = MISSING


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
STRATEGIES = ("ddp", "fsdp")  # framework/engine/strategy.py


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
    strategy: str = MISSING  # one of STRATEGIES: how the model is spread over the ranks
    processes: int = MISSING  # from the command line: start this many through torchrun (framework/cli/launch_plan.py)
    stop_signals: Optional[List[str]] = MISSING  # null: framework/engine/preemption.py's STOP_SIGNALS
    stop_grace_s: float = MISSING  # a stop by signal waits at most this long for the checkpoint's upload
    accumulate_grad_batches: int = MISSING  # micro-batches per optimizer step
    compile: Any = MISSING  # false, true or one of COMPILE_MODES
    val_every_n_steps: Optional[int] = MISSING
    ema: EmaConfig = field(default_factory=EmaConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class Config:
    task: Any = MISSING  # framework/tasks/: what a batch means, the loss, the metrics
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    data: Any = MISSING
    determinism: DeterminismConfig = MISSING
    checkpoint: CheckpointConfig = MISSING
    # Where metrics go besides metrics.jsonl: sink name -> a section with its `_target_`
    # (framework/tracking/sinks.py), one per option of the logger group; any name fits, a user's sink too.
    logger: Dict[str, Any] = MISSING
    trainer: TrainerConfig = MISSING
    # The user's callbacks: name -> a section with its `_target_` (framework/engine/callbacks.py).
    callbacks: Dict[str, Any] = MISSING
    seed: int = MISSING
    resume: Optional[str] = MISSING
    existing_run: str = MISSING  # refuse, archive or overwrite (framework/runs/run_dir.py)
    allow_config_changes: bool = MISSING
    repeat: int = MISSING
    optimized_metric: Optional[str] = MISSING  # the final metric a job returns, for sweepers that optimize it


# group -> option -> schema. Stored as `<group>_<option>_schema`, outside any group.
SCHEMAS = {
    "model": {"mlp": MLPConfig, "cnn": CNNConfig, "transformer": TransformerConfig},
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
        "text": TextDataConfig,
        "diabetes": DiabetesDataConfig,
        "custom": DataConfig,  # any source: its keys are the user's target's arguments
    },
    "determinism": {"base": DeterminismConfig},
    "checkpoint": {"base": CheckpointConfig},
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
    # `${main_metric:${task._target_}}`: checkpoint.monitor's default follows the task (conf/checkpoint/default.yaml).
    OmegaConf.register_new_resolver("main_metric", main_metric, replace=True)
