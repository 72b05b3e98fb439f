"""Resuming: which checkpoint to continue from, and which config the continued run uses.

The checkpoint's embedded config is the source of truth: a resumed run needs none of the
original overrides. The resuming command line may change what cannot alter the trajectory
(logging, checkpoint policy, the max_steps stopping point, loader workers, whose batches do not
depend on their number). Any other key it gives that differs is refused with the list of
differing keys, unless `allow_config_changes=true`; the run then records that it no longer
follows the original trajectory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from framework.checkpoint import CheckpointError, sharded, storage
from framework.checkpoint.storage import CheckpointStore
from framework.config.errors import ConfigError
from framework.config.resolved import config_from_text, flatten
from framework.config.schema import FROM_DATA
from framework.config.target_arguments import COMPONENTS
from framework.runs import layout

log = logging.getLogger("framework")

# Keys (or whole sections) that a resumed run may change freely.
SAFE_TO_CHANGE = (
    "logger",
    "checkpoint",
    "trainer.max_steps",
    "trainer.processes",  # the number a checkpoint continues with is checked as its world size
    "trainer.stop_signals",
    "trainer.stop_grace_s",
    "optimized_metric",
    "trainer.log_every_n_steps",
    "trainer.eval_batch_size",
    "data.num_workers",
    "callbacks",  # they watch; a callback's state the checkpoint lacks starts fresh
)
# How this invocation resumes, not what the experiment is: never compared.
NOT_COMPARED = ("resume", "allow_config_changes", "repeat", "existing_run")
# Keys a run fills in when left null, and records: the model's from the data (engine/build.py),
# the monitors' modes from the task's direction (engine/training.py check_metric_names).
FILLED_FROM_DATA = (*(f"model.{key}" for key in FROM_DATA), "checkpoint.mode", "trainer.early_stopping.mode")
# Scheduler keys that, left null, are filled from max_epochs: then max_epochs shapes the schedule.
LENGTH_KEYS = ("T_max", "total_steps")


@dataclass
class ResumePoint:
    path: Path
    ckpt: dict


def find(resume: str | None, run_dir: Path, cfg: DictConfig | None = None) -> ResumePoint | None:
    """The checkpoint that `resume` (null, auto, a run directory or a file) points at. `cfg`:
    the run's config, which chooses its checkpoint store (framework/checkpoint/storage.py)."""
    if resume is None:
        return None
    if resume == "auto":
        store = storage.for_run(cfg, run_dir)
        if store.empty():
            log.info("resume=auto: no checkpoint in %s, starting fresh", store)
            return None
        return newest_valid(store)
    path = Path(resume).expanduser()
    if path.is_dir() and not sharded.is_checkpoint_directory(path):
        return newest_valid(storage.for_folder(layout.checkpoints_in(path), cfg))
    if not (path.is_file() or path.is_dir()):
        raise ConfigError(f"resume={resume}: no such checkpoint file or run directory")
    try:
        ckpt, passed = storage.for_folder(path.parent, cfg).read(path.name)
    except CheckpointError as e:
        raise ConfigError(f"resume={resume}: {e}") from e
    log.info("resuming from %s (epoch %d, step %d); checked: %s", path, ckpt["epoch"], ckpt["global_step"], passed)
    if ckpt["meta"]["kind"] != "full":
        raise ConfigError(
            f"resume={resume}: a model-only checkpoint (weights and config) cannot continue "
            f"training; resume from a full one such as {layout.LAST}"
        )
    return ResumePoint(path, ckpt)


def newest_valid(store: CheckpointStore) -> ResumePoint:
    """The most recent full checkpoint in `store` that passes its check and loads safely."""
    rejected = []
    for name in store.newest_first():
        try:
            ckpt, passed = store.read(name)
        except CheckpointError as e:
            log.warning("skipping %s: %s", name, e)
            rejected.append(f"{name} ({e})")
            continue
        if ckpt["meta"]["kind"] != "full":
            continue
        path = store.where(name)
        log.info(
            "resuming from %s (epoch %d, step %d): the most recent save that passes its check; checked: %s",
            path,
            ckpt["epoch"],
            ckpt["global_step"],
            passed,
        )
        return ResumePoint(path, ckpt)
    detail = "; ".join(rejected) if rejected else "none found"
    raise ConfigError(f"no valid full checkpoint to resume from in {store}: {detail}")


def reconcile(new: DictConfig, ckpt: dict, given: list[str] | None = None) -> tuple[DictConfig, list[str], bool]:
    """The config the resumed run uses, the changed keys, and whether it still follows the
    original trajectory.

    The checkpoint's config is the source of truth. Only what the resuming command line gives
    may differ from it: `given` holds the config keys its overrides touch (a key, a group's whole
    section, or "" for everything; None compares everything). A default composed afresh is not
    the user's wish: it may have changed since, or the first run may have overridden it.
    """
    old = config_from_text(ckpt["config"], "the checkpoint")
    old_flat = sinks_whole(OmegaConf.to_container(old, resolve=True))
    new_flat = sinks_whole(OmegaConf.to_container(new, resolve=True))

    def is_given(key: str) -> bool:
        return given is None or any(g == "" or key == g or key.startswith(g + ".") for g in given)

    keys = sorted(k for k in old_flat.keys() | new_flat.keys() if k not in NOT_COMPARED)
    changed = [
        k
        for k in keys
        if is_given(k) and old_flat.get(k, _ABSENT) != new_flat.get(k, _ABSENT) and not from_the_data(k, new_flat)
    ]
    # Keys this version has and the checkpoint's config lacks: an older version wrote it. Not
    # inside a component, whose keys are those of the option the run chose, not of today's default,
    # unless the checkpoint has no such component at all (an older version's run had no `task`).
    filled = [
        k for k in keys if k not in old_flat and not is_given(k) and (not in_component(k) or component_absent(k, old))
    ]
    unsafe = [k for k in changed if not is_safe(k, old)]
    describe = [f"{k}: {old_flat.get(k, '<absent>')!r} -> {new_flat.get(k, '<absent>')!r}" for k in unsafe]
    if unsafe and not new.allow_config_changes:
        raise ConfigError(
            "resuming with a config that changes the trajectory; the checkpoint's config is the "
            "source of truth. Differing keys: "
            + "; ".join(describe)
            + ". Drop these overrides, or pass allow_config_changes=true to continue with them "
            "(the run is then recorded as no longer following the original trajectory)."
        )
    follows = ckpt["meta"].get("follows_original_trajectory", True) and not unsafe
    if unsafe:
        log.warning(
            "allow_config_changes=true: continuing with changed keys %s; this run no longer "
            "follows its original trajectory",
            "; ".join(describe),
        )
    for key in filled:
        log.warning("the checkpoint's config has no %s (an older version wrote it): using %r", key, new_flat[key])
    merged = old
    for key in changed + filled + [k for k in NOT_COMPARED if k in new_flat]:
        if key in new_flat:
            OmegaConf.update(merged, key, new_flat[key], force_add=True, merge=not is_sink(key))
        else:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(merged, parent) if parent else merged
            node.pop(leaf, None)
    return merged, changed, follows


def from_the_data(key: str, new_flat: dict) -> bool:
    """A key that the command line leaves null, "from the data" (or from the task): the checkpoint
    records the value the run filled in, which stands; a different one given is a change. A
    model's key may be any that its task's model_facts fills, not only FROM_DATA's."""
    filled = key in FILLED_FROM_DATA or key.startswith("model.")
    return filled and new_flat.get(key, _ABSENT) is None


def component_absent(key: str, old: DictConfig) -> bool:
    return not is_sink(key) and not any(
        (key == c or key.startswith(c + ".")) and OmegaConf.select(old, c) is not None for c in COMPONENTS
    )


def in_component(key: str) -> bool:
    return is_sink(key) or any(key == c or key.startswith(c + ".") for c in COMPONENTS)


def sinks_whole(tree: dict) -> dict:
    """The config's flat keys, but a metric sink (`logger.NAME`) is one key whose value is its whole
    section: the sinks a run has are the options it chose, each with its arguments, and a sink
    given on the command line replaces the checkpoint's whole. An older version's layout
    (`logger: {tensorboard: true}`) compares and resumes as it is (tracking/metrics_logger.py
    reads it)."""
    sinks = tree.pop("logger", None) or {}
    return {**flatten(tree), **{f"logger.{name}": node for name, node in sinks.items()}}


def is_sink(key: str) -> bool:
    return key.startswith("logger.")


def is_safe(key: str, old: DictConfig) -> bool:
    if any(key == s or key.startswith(s + ".") for s in SAFE_TO_CHANGE):
        return True
    if key == "trainer.val_every_n_steps":
        # Validation draws no random numbers, so the weights follow the same trajectory; but with
        # early stopping on, which validations count decides where the run ends.
        return OmegaConf.select(old, "trainer.early_stopping.patience", default=None) is None
    if key == "trainer.max_epochs":
        # Safe unless the schedule's length is derived from it.
        scheduler = old.get("scheduler") or {}
        return not any(k in scheduler and scheduler[k] is None for k in LENGTH_KEYS)
    return False


_ABSENT = object()
