"""The metric sink: the one interface every place a run's metrics go implements.

metrics.jsonl is always on (jsonl_sink.py); the `logger` config group adds others, each a section
with a `_target_` (tensorboard_sink.py, mlflow_sink.py, or a class of your own), several at once
with `logger=[tensorboard,mlflow]`. The loop talks to them all through metrics_logger.MetricsLogger.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("framework")


@dataclass(frozen=True)
class RunInfo:
    """What a sink learns of the run when it opens."""

    run_dir: Path
    name: str  # tells this run from the others: the run directory's name and the keys its command line set
    config: dict  # the resolved config, as plain values
    hparams: dict  # the keys the command line (or the sweep) set, and the seed, with their values
    resume_step: int | None  # the checkpoint's step a resumed run goes on from; None for a fresh start


class MetricSink:
    """Where a run's metrics go. A sink of your own: a class with these methods (subclass this one
    for the defaults), named in a config section with its arguments,

        logger:
          mine:
            _target_: my_package.MySink   # built with the section's other keys as arguments
            endpoint: https://...

    or on the command line `+logger.mine._target_=my_package.MySink`. The constructor only keeps
    its arguments (it is also called once to check them before the run starts); `open` starts.
    Only the process of rank 0 builds sinks. The calls, in order:

    - `open(run)`: the run starts or resumes (`run.resume_step` is set for a resumed run).
    - `rewind(step)`: a resumed run goes on from its checkpoint at `step`: forget or hide what was
      logged after it (a run killed after its last checkpoint logged steps that are trained again).
      Return False if it cannot; the run then says so in its log.
    - `log_config(config_yaml, step)`: the resolved config, at the step the run starts from.
    - `log(event, epoch, step, metrics)`: `event` is "step" (every trainer.log_every_n_steps),
      "epoch" (an epoch's end, with its validation), "val" (a validation inside an epoch,
      trainer.val_every_n_steps), "stop" (a stop inside an epoch) or "test";
      `step` is the global step; `metrics` maps names (`train/loss`, `lr`, `val/acc`, ...) to floats.
    - `log_final(metrics, hparams, step)`: a completed run's final metrics (as metrics.json holds
      them) and the keys its command line set; metrics.json is written by then.
    - `close(status)`: always, last; `status` is metrics.json's ("completed", "preempted",
      "interrupted", "failed").
    """

    def open(self, run: RunInfo) -> None:
        self.run = run

    def rewind(self, step: int) -> bool:
        return False

    def log_config(self, config_yaml: str, step: int) -> None:
        pass

    def log(self, event: str, epoch: int, step: int, metrics: dict) -> None:
        pass

    def log_final(self, metrics: dict, hparams: dict, step: int) -> None:
        pass

    def close(self, status: str) -> None:
        pass


def scalar_tag(event: str, name: str) -> str:
    """A metric's name in a sink's series: an epoch's mean train/loss is a curve of its own."""
    return "train/loss_epoch" if name == "train/loss" and event in ("epoch", "stop") else name


def per_step(event: str, name: str) -> bool:
    """Whether a sink with one series per name takes this value: the learning rate of an epoch's
    end is logged with the steps already."""
    return not (event in ("epoch", "stop") and name == "lr")


def final_tags(metrics: dict) -> dict:
    """The final metrics under the series names whose last points they are."""
    return {scalar_tag("epoch", k): v for k, v in metrics.items() if per_step("epoch", k)}


def plain_value(value):
    """A config value as trackers take it: numbers, strings and booleans; null and lists as YAML spells them."""
    if value is None:
        return "null"
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
