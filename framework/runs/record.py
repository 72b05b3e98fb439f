"""metrics.json, the run record: statuses, settings, the task's metrics, resumes, final metrics, wall time."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from framework import distributed
from framework.atomic import write_json_atomic
from framework.engine.build import build_task
from framework.engine.training import Training
from framework.runs.environment import describe
from framework.runs.layout import RunLayout
from framework.runs.reproducibility import fingerprint
from framework.runs.run_dir import mark_as_run
from framework.tasks.classification import Classification
from framework.tasks.task import metric_names
from framework.tracking.hparams import command_line_hparams, hydra_choices

log = logging.getLogger("framework")


class RunRecord:
    """metrics.json: the run's status, settings, resumes, final metrics and wall time, in one
    place. A resumed run adds to the record it had (its history of resumes, its last metrics).
    Its first write is where the run takes its directory (`accept`)."""

    def __init__(self, run_dir: Path, on_accept: Callable[[bool], None] | None = None):
        self.path = RunLayout(run_dir).record
        self.started = time.time()
        self.previous = previous_summary(run_dir)
        self.summary: dict = {}
        self.resumed = False
        self.on_accept = on_accept
        self.accepted = False

    def start(
        self,
        cfg: DictConfig,
        determinism: dict,
        device: torch.device,
        follows: bool,
        resumed: bool,
        given: list[str] | None = None,
    ) -> None:
        """`given`: the keys the command line set (framework/config/overrides.given_keys)."""
        self.resumed = resumed
        self.summary = dict(self.previous) if resumed else {}
        self.summary.update(
            status="running",
            seed=cfg.seed,
            determinism=determinism,
            device=str(device),
            meta=describe(),
            follows_original_trajectory=follows,
            optimized_metric=cfg.get("optimized_metric"),
            task=task_entry(cfg),
        )
        if "hparams" not in self.summary:
            # What tells this run from others (TensorBoard's HParams, MLflow's run name): the first
            # command line's keys, which a resumed run keeps (its own says how to go on).
            self.summary["hparams"] = command_line_hparams(cfg, given, hydra_choices())

    def add_resume(self, resume: dict) -> None:
        self.summary["resumes"] = self.summary.get("resumes", []) + [resume]

    def accept(self, resumed: bool) -> None:
        """This run takes its directory: the marker that says a run of ours is here, then what
        the caller held back until now (Hydra's files: framework/cli/hydra_files.py)."""
        if self.accepted or not distributed.is_main():
            return
        self.accepted = True
        mark_as_run(self.path.parent)
        if self.on_accept is not None:
            self.on_accept(resumed)

    def write(self) -> None:
        if distributed.is_main():
            self.accept(self.resumed)
            write_json_atomic(self.path, self.summary)

    def end(self, training: Training, **fields) -> dict:
        if training.uploads is not None:  # checkpoint.remote: what was uploaded, what was not, the outages
            fields["remote"] = training.uploads
        self.summary.update(**fields, wall_time_s=round(time.time() - self.started, 3))
        self.write()
        return self.summary

    def stopped(self, signum: int, training: Training, saved: bool) -> dict:
        """A signal stopped the run at a step, with a checkpoint (when checkpoints are on)."""
        state = training.state
        summary = self.end(
            training,
            status="interrupted" if signum == signal.SIGINT else "preempted",
            stopped_by="signal",
            signal=signal.Signals(signum).name,
            epochs_completed=state.epoch,
            global_step=state.global_step,
            metrics=training.metrics,
        )
        if saved:
            log.warning(
                "%s at step %d; continue with resume=auto (or resume=%s)",
                summary["status"],
                state.global_step,
                self.path.parent,
            )
        else:
            log.warning(
                "%s at step %d; nothing was saved (checkpoint=off): a rerun starts over",
                summary["status"],
                state.global_step,
            )
        return summary

    def completed(self, stopped_by: str, training: Training, test: dict, cfg: DictConfig) -> dict:
        metrics = {**training.metrics, **test}
        summary = self.end(
            training,
            status="completed",
            stopped_by=stopped_by,
            epochs_completed=training.state.epoch,
            global_step=training.state.global_step,
            metrics=metrics,
            fingerprint=fingerprint(*training.state.whole_state(), *averaged(training)),
        )
        training.logger.log_final(metrics, summary["hparams"], training.state.global_step)
        log.info("done in %.1fs: %s", summary["wall_time_s"], self.path)
        return summary

    def failed(self, error: BaseException, write: bool) -> None:
        self.summary.update(
            status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
            error=f"{type(error).__name__}: {error}",
            wall_time_s=round(time.time() - self.started, 3),
        )
        if write:
            self.write()


def task_entry(cfg: DictConfig) -> dict:
    """The record's `task`: its class and every metric a run of it reports with its direction
    ("min" or "max": which way is better), so that a reader of a finished run (the sweep summary,
    a tracker) needs neither the config nor the user's task to know them. A list, in the task's
    declared order: metrics.json's keys are sorted."""
    metrics = metric_names(build_task(cfg.task))
    return {"target": cfg.task._target_, "metrics": [{"name": k, "direction": d} for k, d in metrics.items()]}


def recorded_metrics(summary: dict) -> dict[str, str]:
    """{metric: "min" or "max"} of the task a run's record names, in its order; a record written
    before tasks were recorded is a classifier's, the only task there was."""
    task = summary.get("task")
    if isinstance(task, dict) and isinstance(task.get("metrics"), list):
        return {m["name"]: m["direction"] for m in task["metrics"] if isinstance(m, dict) and "name" in m}
    return metric_names(Classification)


def previous_summary(run_dir: Path) -> dict:
    """The run's earlier metrics.json (its history of resumes, its last metrics), so that a
    resumed run adds to it rather than starting a new one."""
    try:
        old = json.loads(RunLayout(run_dir).record.read_text())
    except (OSError, ValueError):
        return {}
    old.pop("error", None)
    return old


def averaged(training: Training) -> list[dict]:
    """The moving average's state, when the run keeps one: part of the final state the fingerprint
    covers (a run without one keeps the fingerprint it always had)."""
    average = training.state.average_weights()
    return [average] if average is not None else []
