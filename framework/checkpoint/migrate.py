"""`python -m framework.ckpt migrate SRC DST [overrides]`: bring a checkpoint to this framework.

Two kinds of SRC:
- an older file of ours: formats.py's steps bring it to the current format;
- another program's training checkpoint in the layout most tutorials write: `epoch`,
  `model_state_dict`, `optimizer_state_dict`, maybe `scheduler_state_dict`, `loss`, and maybe
  the random streams as `torch.get_rng_state()`, `np.random.get_state()` and `random.getstate()`
  return them, under any key names. The overrides (as for a run: `model=cnn optimizer=sgd`) say
  which experiment it belongs to; its weights must fit that model, its optimizer state that
  optimizer. The result is a full checkpoint that a run resumes from, marked as imported and not
  bit-exact: the file has no data position (the run continues at the start of the epoch after
  the last one it finished), and whatever streams it lacks are seeded from the config's seed.

Nothing is unpickled beyond torch.load(weights_only=True) unless the user names the file with
`--unpickle-numpy SRC`, which lets NumPy arrays, dtypes and scalars from that one file be
unpickled (what `np.random.get_state()` holds), and nothing else. No file is ever loaded with
weights_only=False.
"""

from __future__ import annotations

import importlib
import logging
import math
import random
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import framework
from framework.checkpoint import formats, io, storage
from framework.checkpoint.errors import CheckpointError, ForeignCheckpoint, UnsafeCheckpoint
from framework.config.checks import check
from framework.config.errors import ConfigError
from framework.engine.state import TrainState, load_model_weights, optimizer_mismatch
from framework.runs.environment import describe
from framework.runs.reproducibility import seed_everything

log = logging.getLogger("framework")

# What --unpickle-numpy lets through: NumPy's arrays, dtypes and scalars, under the names NumPy 1
# (numpy.core) and NumPy 2 (numpy._core) pickle them with.
NUMPY_GLOBALS = re.compile(r"numpy\.(ndarray|dtype|dtypes\.\w+DType|_?core\.multiarray\.(_reconstruct|scalar))")
# Where a tutorial keeps the weights and the optimizer, by the names seen in the wild.
MODEL_KEYS = ("model_state_dict", "state_dict", "model")
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer")
SCHEDULER_KEYS = ("scheduler_state_dict", "lr_scheduler_state_dict", "scheduler")
# The size of torch's CPU generator state (a uint8 tensor) and of Python's Mersenne Twister.
TORCH_RNG_BYTES = torch.get_rng_state().numel()
PYTHON_RNG_WORDS = len(random.getstate()[1])
# More kinds than np.random.get_state() and NumPy arrays of every dtype ever need.
MAX_NUMPY_GLOBALS = 16


class DoesNotFit(CheckpointError):
    """The file's state does not fit the experiment the overrides describe."""


def migrate(src: Path, dst: Path, overrides: list[str], unpickle_numpy: Path | None, epochs_done: int | None) -> str:
    """Write SRC, brought to this framework's current format, to DST; return what was done, in
    one line. Raises a CheckpointError (one of errors.py's kinds, or DoesNotFit) or ConfigError."""
    src = newest_by_number(src) if src.is_dir() else src
    if dst.exists():
        raise CheckpointError(f"{dst} exists already: give another DST (migrate never overwrites)")
    raw = load_source(src, unpickle_numpy)
    if isinstance(raw, dict) and isinstance(raw.get("meta"), dict):
        if overrides or epochs_done is not None:
            raise ConfigError(
                f"{src} is a checkpoint of this framework: it carries its config, so overrides and --epochs-done do "
                "not apply (a resume takes the overrides it allows)"
            )
        return upgrade_ours(src, dst, raw["meta"].get("format_version"))
    if isinstance(raw, dict) and weights_in(raw) is not None:
        return import_theirs(src, raw, dst, overrides, epochs_done)
    keys = ", ".join(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
    raise ForeignCheckpoint(
        f"{src} is neither a checkpoint of this framework nor a training checkpoint with the model's weights under "
        f"one of {', '.join(MODEL_KEYS)} (it has: {keys})"
    )


def newest_by_number(folder: Path) -> Path:
    """The file of a folder of `checkpoint_epoch_N.pt`-like files with the largest N: by number,
    not by name (`epoch_10` comes after `epoch_9`)."""
    numbered = []
    for path in folder.iterdir():
        found = re.findall(r"\d+", path.stem)
        if path.is_file() and path.suffix in (".pt", ".pth", ".tar", ".ckpt") and found:
            numbered.append((int(found[-1]), path.name, path))
    if not numbered:
        raise CheckpointError(f"{folder} has no checkpoint file with a number in its name (checkpoint_epoch_N.pt)")
    newest = max(numbered)[2]
    log.info("%s: taking %s, the highest-numbered of %d files", folder, newest.name, len(numbered))
    return newest


def load_source(src: Path, unpickle_numpy: Path | None) -> object:
    """SRC loaded with weights_only=True, NumPy's objects allowed only when the user named SRC."""
    try:
        return io.safe_load(src)
    except UnsafeCheckpoint as e:
        refuse_beyond_numpy(src, e.needs)
        if unpickle_numpy is None or not same_file(unpickle_numpy, src):
            raise UnsafeCheckpoint(
                f"{src} holds NumPy objects ({', '.join(e.needs)}; np.random.get_state() returns such), which "
                f"torch.load(weights_only=True) does not read. If you trust the file, give --unpickle-numpy {src}: "
                "it lets NumPy arrays, dtypes and scalars from that file be unpickled, and nothing else",
                e.needs,
            ) from None
        allowed = list(e.needs)
    # A dtype is rebuilt as an instance of its class (numpy.dtypes.UInt32DType, ...), which the
    # opcode scan does not list: every dtype class is let through with the named globals.
    dtype_classes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    for _ in range(MAX_NUMPY_GLOBALS):
        with torch.serialization.safe_globals([numpy_global(src, name) for name in allowed] + dtype_classes):
            try:
                return io.safe_load(src)
            except UnsafeCheckpoint as e:  # torch's older format names one object at a time
                refuse_beyond_numpy(src, e.needs)
                allowed += [name for name in e.needs if name not in allowed]
    raise UnsafeCheckpoint(f"{src} pickles more than {MAX_NUMPY_GLOBALS} kinds of NumPy object", allowed)


def refuse_beyond_numpy(src: Path, needs: list[str]) -> None:
    beyond_numpy = [name for name in needs if not NUMPY_GLOBALS.fullmatch(name)]
    if beyond_numpy:
        raise UnsafeCheckpoint(
            f"{src} pickles {', '.join(beyond_numpy)}: the framework never unpickles such objects. Load it in "
            "your own code and save the state as tensors, numbers, strings, lists and dicts",
            beyond_numpy,
        ) from None


def same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def numpy_global(src: Path, name: str) -> tuple[object, str]:
    """The NumPy object SRC's pickle names `name`, as torch's allow-list takes it (object, name)."""
    module, _, attribute = name.rpartition(".")
    module = module.replace("numpy.core", "numpy._core") if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else module
    try:
        return getattr(importlib.import_module(module), attribute), name
    except (ImportError, AttributeError):  # a name of NumPy's form that this NumPy does not have
        raise UnsafeCheckpoint(
            f"{src} pickles {name}, which NumPy {np.__version__} does not have: nothing of it was unpickled",
            [name],
        ) from None


# ---- an older file of ours ------------------------------------------------------------------
def upgrade_ours(src: Path, dst: Path, version: object) -> str:
    ckpt, _ = storage.for_folder(src.parent).read(src.name)  # checked, then upgraded in memory in order
    if version == formats.FORMAT_VERSION:
        return f"{src} is already in format {version}, the current one: nothing to migrate"
    io.write({k: v for k, v in ckpt.items() if k != "integrity"}, dst)
    return f"{src}: format {version} -> {formats.FORMAT_VERSION}, written to {dst}"


# ---- another program's checkpoint ---------------------------------------------------------
def weights_in(raw: dict) -> dict | None:
    for key in MODEL_KEYS:
        value = raw.get(key)
        if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return value
    return None


def first_of(raw: dict, keys: tuple[str, ...]) -> dict | None:
    return next((raw[k] for k in keys if isinstance(raw.get(k), dict)), None)


def import_theirs(src: Path, raw: dict, dst: Path, overrides: list[str], epochs_done: int | None) -> str:
    cfg = experiment_config(overrides)
    state, steps_per_epoch = build_state(cfg)
    restored, not_exact = ["model weights"], []
    try:
        load_model_weights(state.model, weights_in(raw), strict=True)
    except RuntimeError as e:
        raise DoesNotFit(f"{src} does not fit model={describe_choice(cfg.model)}: {e}") from None
    restored += restore_optimizer(src, raw, state.optimizer, cfg, not_exact)

    state.epoch = completed_epochs(src, raw, epochs_done)
    state.data_epoch, state.position = state.epoch, 0
    state.global_step = state.epoch * steps_per_epoch
    state.last_loss = as_number(raw.get("loss"))
    not_exact.append(
        f"the file has no data position: the run continues at the start of epoch {state.epoch + 1} "
        "in this framework's data order"
    )
    restored += restore_scheduler(src, raw, state, cfg, not_exact)
    restored += restore_streams(raw, cfg.seed, not_exact)

    imported = {
        "source": str(src.resolve()),
        "sha256": io.sha256_of(src),
        "keys": sorted(map(str, raw)),
        "restored": restored,
        "not_exact": not_exact,
    }
    payload = {
        **state.capture(),
        "val_metrics": {},
        "metrics_lines": 0,
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "meta": imported_meta(cfg, imported),
    }
    io.write(payload, dst)
    return (
        f"{src}: imported as epoch {state.epoch}, step {state.global_step} of this experiment "
        f"({', '.join(restored)}), written to {dst}. Not bit-exact: {'; '.join(not_exact)}"
    )


def experiment_config(overrides: list[str]) -> DictConfig:
    """The resolved config `python -m framework OVERRIDES` would run with."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from framework.config import recipes, schema

    schema.register()
    recipes.register()
    try:
        with initialize_config_dir(config_dir=str(Path(framework.__file__).parent / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"overrides {' '.join(overrides)}: {' '.join(str(e).split())}") from None
    check(cfg)
    return cfg


def build_state(cfg: DictConfig) -> tuple[TrainState, int]:
    """The experiment's components, built as a fresh run builds them (same seed, same order), and
    its number of steps per epoch on one process."""
    from framework.engine.build import build_data, build_model, build_optimizer, build_scheduler, build_task
    from framework.engine.step import mixed_precision
    from framework.engine.training import batches_per_epoch, steps_in

    seed_everything(cfg.seed)
    task = build_task(cfg.task)
    splits = build_data(cfg.data, cfg.seed, task)
    model = build_model(cfg.model, task.model_facts(splits))
    optimizer = build_optimizer(cfg.optimizer, model)
    batches = batches_per_epoch(len(splits.train), 1, cfg.data.batch_size)
    steps = steps_in(batches, cfg.trainer.accumulate_grad_batches)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps=cfg.trainer.max_epochs * steps)
    _, scaler = mixed_precision(cfg.trainer.precision, torch.device("cpu"))
    return TrainState(model, optimizer, scheduler, scaler), steps


def describe_choice(node: DictConfig) -> str:
    return str(node.get("_target_", "?")).rpartition(".")[2]


def restore_optimizer(src: Path, raw: dict, optimizer: torch.optim.Optimizer, cfg: DictConfig, not_exact: list) -> list:
    saved = first_of(raw, OPTIMIZER_KEYS)
    if saved is None:
        not_exact.append("the file has no optimizer state: the optimizer starts fresh")
        return []
    chosen = f"optimizer={describe_choice(cfg.optimizer)}"
    problem = optimizer_mismatch(optimizer, saved) or differing_settings(optimizer, saved)
    if problem is None:
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as e:
            problem = str(e)
    if problem is not None:
        raise DoesNotFit(f"{src}'s optimizer state does not fit {chosen}: {problem}")
    return ["optimizer state"]


def differing_settings(optimizer: torch.optim.Optimizer, saved: dict) -> str | None:
    """The optimizer's settings (other than the learning rate, which a schedule moves) must be
    the config's: the embedded config has to say what the run really trains with."""
    built, theirs = optimizer.param_groups[0], (saved.get("param_groups") or [{}])[0]
    ignored = {"params", "lr", "initial_lr"}
    other_kind = sorted((built.keys() ^ theirs.keys()) - ignored)
    if other_kind:
        return f"it has other settings ({', '.join(other_kind)} on one side only): choose the optimizer it was"
    differ = [f"optimizer.{k}={theirs[k]!r}" for k in sorted(built.keys() - ignored) if theirs[k] != built[k]]
    if differ:
        return f"its settings differ from the config's: give {' '.join(differ)}"
    return None


def restore_scheduler(src: Path, raw: dict, state: TrainState, cfg: DictConfig, not_exact: list) -> list:
    saved = first_of(raw, SCHEDULER_KEYS)
    if saved is None:
        # The learning rate then follows this framework's schedule from the step it imports at.
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": meant so
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state.global_step):
                state.scheduler.step()
        not_exact.append(f"the file has no scheduler state: the schedule is this config's, at step {state.global_step}")
        return []
    own = state.scheduler.state_dict()
    if set(saved) != set(own):
        raise DoesNotFit(
            f"{src}'s scheduler state does not fit scheduler={describe_choice(cfg.scheduler)}: it has "
            f"{', '.join(sorted(saved))}; this scheduler has {', '.join(sorted(own))}"
        )
    state.scheduler.load_state_dict(saved)
    return ["scheduler state"]


def completed_epochs(src: Path, raw: dict, given: int | None) -> int:
    """How many epochs the file's run finished: --epochs-done, else its `epoch` (the count the
    PyTorch tutorial saves), else the number in its name."""
    if given is not None:
        return given
    epoch = as_number(raw.get("epoch"))
    if epoch is None:
        found = re.findall(r"\d+", src.stem)
        if not found:
            raise CheckpointError(f"{src} has no `epoch` and no number in its name: give --epochs-done N")
        epoch = int(found[-1])
    if epoch < 0 or epoch != int(epoch):
        raise CheckpointError(f"{src} has epoch {epoch!r}, not a count: give --epochs-done N")
    return int(epoch)


def as_number(value: object) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value):
        return value.item() if isinstance(value, np.number) else value
    return None


def restore_streams(raw: dict, seed: int, not_exact: list) -> list:
    """Put the file's random streams in place, whatever their keys; the ones it lacks stay as
    a fresh run of this seed has them after building."""
    found = {}
    for value in raw.values():
        if isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.numel() == TORCH_RNG_BYTES:
            found.setdefault("torch", value)
        elif is_numpy_state(value):
            found.setdefault("numpy", value)
        elif is_python_state(value):
            found.setdefault("python", value)
    if "torch" in found:
        torch.set_rng_state(found["torch"])
    if "numpy" in found:
        np.random.set_state(found["numpy"])
    if "python" in found:
        version, internal, gauss_next = found["python"]
        random.setstate((version, tuple(internal), gauss_next))
    missing = [name for name in ("torch", "numpy", "python") if name not in found]
    if missing:
        not_exact.append(f"the file has no {', '.join(missing)} random stream(s): seeded from seed {seed}")
    return [f"{name} random stream" for name in found]


def is_numpy_state(value: object) -> bool:
    """np.random.get_state()'s tuple or its dict form (legacy=False), for the Mersenne Twister."""
    if isinstance(value, dict):
        return value.get("bit_generator") == "MT19937" and isinstance(value.get("state"), dict)
    return isinstance(value, tuple) and len(value) == 5 and value[0] == "MT19937"


def is_python_state(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and isinstance(value[1], (tuple, list))
        and len(value[1]) == PYTHON_RNG_WORDS
    )


def imported_meta(cfg: DictConfig, imported: dict) -> dict:
    return {
        "format_version": formats.FORMAT_VERSION,
        "kind": "full",
        "origin": "imported",
        "exact_resume": False,
        **describe(),
        "world_size": 1,
        "seed": cfg.seed,
        "determinism": cfg.determinism.level,
        "follows_original_trajectory": False,
        "config_changes": [],
        "imported": imported,
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }
