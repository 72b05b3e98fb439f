"""Early stopping (`trainer.early_stopping`): the run ends, completed, once the monitored metric
has not improved by more than `min_delta` for `patience` validations in a row.

Validations are those at epoch ends and, with `trainer.val_every_n_steps`, those inside epochs.
Its state (the best value, where it was seen, the validations since, whether it stopped) is a
piece of TrainState: a resumed run counts on from where the checkpoint was taken, and a run that
stopped early has nothing left to train.
"""

from __future__ import annotations

import logging
import math

from framework.config.errors import ConfigError

log = logging.getLogger("framework")


class EarlyStopping:
    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0  # validations in a row without an improvement
        self.stopped = False

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False  # a NaN never becomes the best, or nothing after it could improve on it
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metrics: dict, step: int) -> bool:
        """After a validation: whether the run should stop now."""
        value = metrics.get(self.monitor)
        if value is None or self.stopped:
            return self.stopped
        if self.improves(value):
            self.best, self.best_step, self.bad_validations = value, step, 0
        else:
            self.bad_validations += 1
        if self.bad_validations >= self.patience:
            self.stopped = True
            best = "none: every value was NaN" if self.best is None else f"{self.best:.6g} at step {self.best_step}"
            log.info(
                "early stopping at step %d: %s has not improved by more than %g for %d validations (best %s)",
                step,
                self.monitor,
                self.min_delta,
                self.bad_validations,
                best,
            )
        return self.stopped

    def state_dict(self) -> dict:
        return {
            "monitor": self.monitor,
            "best": self.best,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
            "stopped": self.stopped,
        }

    def load_state_dict(self, saved: dict) -> None:
        self.best, self.best_step = saved["best"], saved["best_step"]
        self.bad_validations, self.stopped = saved["bad_validations"], saved["stopped"]


def build_early_stopping(section: dict, val_samples: int) -> EarlyStopping | None:
    """From the trainer.early_stopping section (its mode filled in already); None: off."""
    if section["patience"] is None:
        return None
    check_monitor(section["monitor"], val_samples)
    return EarlyStopping(section["monitor"], section["mode"], section["patience"], section["min_delta"])


def stopped_early(ckpt: dict) -> bool:
    """Whether a checkpoint's run had stopped early when it was saved."""
    return bool((ckpt.get("early_stopping") or {}).get("stopped"))


def check_monitor(monitor: str, val_samples: int) -> None:
    """Early stopping sees the validations' metrics (val/..., and train/loss at epoch ends): refuse,
    before training, a monitor it would never see, which would let the run go on to its end."""
    key = f"trainer.early_stopping.monitor={monitor}"
    if monitor.startswith("test/"):
        raise ConfigError(
            f"{key}: early stopping watches the validations (val/... metrics, or train/loss at epoch ends); "
            "the test split is evaluated once, after training. Watch a val/ metric."
        )
    if monitor.startswith("val/") and val_samples == 0:
        raise ConfigError(
            f"{key}: the validation split is empty, so early stopping would never see it. Give "
            "data.val_fraction a share of the data, or trainer.early_stopping.patience=null."
        )
