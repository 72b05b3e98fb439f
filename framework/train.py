"""The training loop: build, maybe resume, train epochs (validating after each), checkpoint,
test, write the summary.

`run_locked` tells the whole story in a dozen lines. `Training` owns the built components and
has a method per step of the loop (fit, train an epoch, end it, validate, test, save, restore);
`RunRecord` keeps the run's record (metrics.json: statuses, resumes, wall time) in one place.
All state that survives a checkpoint lives in `Training.state` (framework/state.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

import framework
from framework import data as data_lib
from framework import distributed
from framework import resume as resume_lib
from framework.arguments import check_arguments
from framework.atomic import write_json_atomic
from framework.build import build_data, build_model, build_optimizer, build_scheduler
from framework.checkpoint import Checkpointer, CheckpointError
from framework.checkpoint.formats import FORMAT_VERSION
from framework.config import ConfigError, check
from framework.environment import describe
from framework.logger import MetricsLogger, Progress
from framework.preemption import StopOnSignal, signals_held
from framework.reproducibility import apply_determinism, fingerprint, gpu_note, pick_num_threads, seed_everything
from framework.run_dir import RunDirRefused, RunLock, clear_leftovers, holds_a_run, mark_as_run, refusal
from framework.state import PIECES, RNG_PIECES, TrainState, as_rank_restores_it

log = logging.getLogger("framework")
# How torch words the error of an operation that has no deterministic implementation.
NONDETERMINISTIC = "does not have a deterministic implementation"


def run(
    cfg: DictConfig,
    run_dir: Path,
    given: list[str] | None = None,
    on_accept: Callable[[bool], None] | None = None,
) -> dict:
    """Train as `cfg` says, writing everything into `run_dir`; return the final summary.

    `given`: the config keys the command line set (see framework/overrides.py). On resume only
    these may differ from the checkpoint's config; None compares every key.
    `on_accept(resumed)`: called once, when this run takes the directory (before it first
    changes anything there), or when it finds it finished already; never for a refused start.
    """
    check(cfg)  # before a handler is installed or a file written
    run_dir.mkdir(parents=True, exist_ok=True)
    # How this invocation takes signals (not part of the experiment: the command line's config).
    preemption = StopOnSignal(cfg.trainer.stop_signals)
    try:
        # One writer per run directory: under torchrun, rank 0 writes for all.
        with RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext():
            summary = run_locked(cfg, run_dir, given, preemption, on_accept)
    finally:
        preemption.close()
    # Recorded, closed and unlocked: now the handler this one replaced may requeue the job (submitit).
    preemption.hand_over()
    return summary


def run_locked(
    cfg: DictConfig,
    run_dir: Path,
    given: list[str] | None,
    preemption: StopOnSignal,
    on_accept: Callable[[bool], None] | None = None,
) -> dict:
    """The whole run: resolve the config, set up, build, maybe restore, fit, test, record."""
    record = RunRecord(run_dir, on_accept)
    cfg, resume_point, changes, follows_original = resolve_config(cfg, run_dir, given)
    if resume_point is not None and nothing_left(resume_point.ckpt, cfg):
        if record.previous.get("status") == "completed":
            record.accept(resumed=True)
            say_nothing_left(resume_point.ckpt, cfg)
            return record.previous
    device = pick_device(cfg.trainer.device)
    determinism = determinism_in_force(cfg, resume_point, device)
    seed_everything(cfg.seed)  # before anything is built: the initial weights come from the torch RNG
    log.info("framework %s; seed %d, determinism %s", framework.__version__, cfg.seed, determinism)
    record.start(cfg, determinism, device, follows_original, resumed=resume_point is not None)

    training = None
    try:
        training = Training(cfg, run_dir, device, record.summary, changes, resume_point)
        # Nothing in the run directory changes before a resumed state is restored: a failed
        # resume leaves the run it failed to resume as it was. The record and history come after.
        if resume_point is not None:
            record.add_resume(training.restore(resume_point))
        record.write()
        training.open_history(resume_point)
        stopped_by = training.fit(preemption)
        if stopped_by == "signal":
            return record.stopped(preemption.received, training, cfg.checkpoint.enabled)
        test = training.test()
        return record.completed(stopped_by, training, test, cfg)
    except BaseException as e:
        # A resume that failed before its state was restored changes nothing in the run.
        record.failed(e, write=(training is not None and training.logger is not None) or resume_point is None)
        if isinstance(e, RuntimeError) and NONDETERMINISTIC in str(e):
            op = str(e).split(NONDETERMINISTIC)[0].strip()
            raise ConfigError(
                f"determinism={cfg.determinism.level}: {op} has no deterministic implementation "
                f"on this device, so the run stopped. Relax the level with determinism=seeded "
                "(same seeds; this operation may then vary from run to run)."
            ) from e
        raise
    finally:
        if training is not None:
            training.close()


def resolve_config(
    cfg: DictConfig, run_dir: Path, given: list[str] | None
) -> tuple[DictConfig, resume_lib.ResumePoint | None, list[str], bool]:
    """The config this run uses, the checkpoint it continues from (None: a fresh start), the keys
    the command line changed, and whether the run still follows its original trajectory.
    Resuming, the checkpoint's config is the source of truth (see framework/resume.py)."""
    resume_point = None
    if distributed.is_main():
        resume_point = resume_lib.find(cfg.resume, run_dir)
        if resume_point is None and holds_a_run(run_dir):
            if cfg.resume is None:  # a run directory from a config file; the command line's is checked earlier
                raise RunDirRefused(refusal(run_dir, "hydra.run.dir"))
            # resume=auto found no checkpoint: an attempt that never saved one is replaced, not continued.
            clear_leftovers(run_dir)
    # Rank 0 picks the file; the others load that one, so no two ranks resume from different files.
    chosen = distributed.from_main(str(resume_point.path) if resume_point else None)
    if chosen is not None and resume_point is None:
        resume_point = resume_lib.find(chosen, run_dir)
    changes, follows_original = [], True
    if resume_point is not None:
        cfg, changes, follows_original = resume_lib.reconcile(cfg, resume_point.ckpt, given)
        check(cfg)
        if not same_world_size(resume_point, cfg.allow_config_changes):
            follows_original = False
        if not resume_point.ckpt["meta"].get("exact_resume", True):
            follows_original = False
            say_not_exact(resume_point)
        if noise_drawn_otherwise(resume_point.ckpt, cfg):
            follows_original = False
    check_arguments(cfg)  # before any data is loaded
    return cfg, resume_point, changes, follows_original


# The first version whose augmentation noise is drawn a batch at a time (other bits than before).
BATCHED_NOISE = (0, 2)


def noise_drawn_otherwise(ckpt: dict, cfg: DictConfig) -> bool:
    """Whether the checkpoint's run drew its augmentation noise otherwise than this version does."""
    written_by = str(ckpt["meta"].get("framework_version", "0"))
    older = tuple(int(part) for part in written_by.split(".")[:2] if part.isdigit()) < BATCHED_NOISE
    changed = older and bool(cfg.data.augment.noise_std)
    if changed:
        log.warning(
            "the checkpoint was written by framework %s, whose augmentation noise (data.augment.noise_std=%s) "
            "drew other values: the run goes on with this version's noise and no longer follows its original "
            "trajectory to the bit",
            written_by,
            cfg.data.augment.noise_std,
        )
    return changed


def say_not_exact(point: resume_lib.ResumePoint) -> None:
    imported = point.ckpt["meta"].get("imported", {})
    log.warning(
        "%s was imported from another program's checkpoint (%s; restored: %s): the run goes on from it, "
        "but not bit for bit: %s. The run is recorded as not following its original trajectory.",
        point.path,
        imported.get("source", "its source is not recorded"),
        ", ".join(imported.get("restored", [])),
        "; ".join(imported.get("not_exact", ["the file does not say why"])),
    )


def say_nothing_left(ckpt: dict, cfg: DictConfig) -> None:
    log.warning(
        "nothing left to train: the checkpoint is at epoch %d, step %d, and the config stops there "
        "(trainer.max_epochs=%d, trainer.max_steps=%s). The run's results are kept as they are. To go on, "
        "give trainer.max_steps=null or more epochs (trainer.max_epochs=N allow_config_changes=true).",
        ckpt["epoch"],
        ckpt["global_step"],
        cfg.trainer.max_epochs,
        cfg.trainer.max_steps,
    )


class RunRecord:
    """metrics.json: the run's status, settings, resumes, final metrics and wall time, in one
    place. A resumed run adds to the record it had (its history of resumes, its last metrics).
    Its first write is where the run takes its directory (`accept`)."""

    def __init__(self, run_dir: Path, on_accept: Callable[[bool], None] | None = None):
        self.path = run_dir / "metrics.json"
        self.started = time.time()
        self.previous = previous_summary(run_dir)
        self.summary: dict = {}
        self.resumed = False
        self.on_accept = on_accept
        self.accepted = False

    def start(self, cfg: DictConfig, determinism: dict, device: torch.device, follows: bool, resumed: bool) -> None:
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
        )

    def add_resume(self, resume: dict) -> None:
        self.summary["resumes"] = self.summary.get("resumes", []) + [resume]

    def accept(self, resumed: bool) -> None:
        """This run takes its directory: the marker that says a run of ours is here, then what
        the caller held back until now (Hydra's files: framework/hydra_files.py)."""
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

    def end(self, **fields) -> dict:
        self.summary.update(**fields, wall_time_s=round(time.time() - self.started, 3))
        self.write()
        return self.summary

    def stopped(self, signum: int, training: Training, saved: bool) -> dict:
        """A signal stopped the run at a step, with a checkpoint (when checkpoints are on)."""
        state = training.state
        summary = self.end(
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
            status="completed",
            stopped_by=stopped_by,
            epochs_completed=training.state.epoch,
            global_step=training.state.global_step,
            metrics=metrics,
            fingerprint=fingerprint(training.model.state_dict(), training.optimizer.state_dict()),
        )
        training.logger.log_hparams(OmegaConf.to_container(cfg, resolve=True), metrics, training.state.global_step)
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


class Training:
    """The built components and the steps of the loop: fit (epochs of steps, validating after
    each), save, restore, test. All state that survives a checkpoint lives in `self.state`
    (framework/state.py); what is built here follows from the config and the seed."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        device: torch.device,
        summary: dict,
        changes: list[str],
        resume_point: resume_lib.ResumePoint | None,
    ):
        self.cfg, self.device, self.changes = cfg, device, changes
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        # Plain values: reading a DictConfig attribute costs microseconds, which the step loop
        # would pay several times a step.
        self.t = t = SimpleNamespace(**OmegaConf.to_container(cfg.trainer, resolve=True))
        self.meta = {
            **summary["meta"],
            "world_size": self.world_size,
            "seed": cfg.seed,
            "determinism": cfg.determinism.level,
            "determinism_settings": summary["determinism"],
            "follows_original_trajectory": summary["follows_original_trajectory"],
            "config_changes": changes,
        }
        # A resumed run that has nothing left to train keeps the final metrics it had.
        self.metrics = {k: v for k, v in summary.get("metrics", {}).items() if not k.startswith("test/")}
        self.logger: MetricsLogger | None = None
        self.progress = Progress(every=t.log_every_n_steps, enabled=distributed.is_main())
        self.restore_rng_from: dict | None = None

        splits = build_data(cfg.data, cfg.seed)
        check_metric_exists(cfg.get("optimized_metric"), splits)
        self.model = build_model(cfg.model, splits).to(device)
        # What trains: the model itself, or under torchrun its DistributedDataParallel wrapper
        # (checkpoints hold the model's own state dict: no `module.` prefix).
        self.net = self.model
        if self.world_size > 1:
            # Same initial weights on every rank (DDP also broadcasts rank 0's); then each rank
            # its own random streams (dropout), from (seed, rank).
            seed_everything(data_lib.keyed_seed(cfg.seed, RANK_STREAMS, self.rank) % 2**63)
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
        self.optimizer = build_optimizer(cfg.optimizer, self.model)
        # data.batch_size is per rank: each rank takes its shard of the epoch in batches of it.
        self.steps_per_epoch = steps_per_epoch(len(splits.train), self.world_size, cfg.data.batch_size)
        # The schedule's length comes from max_epochs only: max_steps is a stopping point.
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, total_steps=t.max_epochs * self.steps_per_epoch)
        self.autocast, self.scaler = mixed_precision(t.precision, device)
        d, augment = cfg.data, cfg.data.augment
        kept_on = data_lib.resident_device(d.on_device, device, splits.train)
        self.train_set = data_lib.Augmented(splits.train, cfg.seed, augment.max_shift, augment.noise_std, kept_on)
        self.val_loader = data_lib.eval_loader(splits.val, t.eval_batch_size, d.num_workers, kept_on)
        self.test_loader = data_lib.eval_loader(splits.test, t.eval_batch_size, d.num_workers, kept_on)
        log.info(
            "data: %d train / %d val / %d test, input %s, %d classes; %d steps per epoch; device %s",
            len(splits.train),
            len(splits.val),
            len(splits.test),
            splits.input_shape,
            splits.num_classes,
            self.steps_per_epoch,
            device,
        )
        self.state = TrainState(self.model, self.optimizer, self.scheduler, self.scaler)
        self.checkpointer = Checkpointer(
            cfg.checkpoint,
            run_dir / "checkpoints",
            resumed_from=resume_point.path if resume_point else None,
            state_bytes=expected_state_bytes(self.model),
        )
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.run_dir = run_dir

    # ---- restore and history -------------------------------------------------------------
    def restore(self, point: resume_lib.ResumePoint) -> dict:
        """Everything but the random streams, which come back once the resumed epoch's data
        iterator exists (creating it must not shift them). Returns the resume's record."""
        ckpt = point.ckpt
        # The state that differs per rank comes back only for the number of ranks that wrote it.
        same_ranks = ckpt["meta"].get("world_size", 1) == self.world_size
        try:
            if same_ranks and self.world_size > 1:
                ckpt = as_rank_restores_it(ckpt, self.rank)  # each rank its own streams and losses
            notes = self.state.restore(
                ckpt, [p for p in PIECES if p not in RNG_PIECES], strict=self.cfg.checkpoint.strict_load
            )
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            raise CheckpointError(
                f"cannot resume from {point.path}: {e}. "
                "checkpoint.strict_load=false loads what fits and reports the rest."
            ) from e
        for note in notes:
            log.warning("non-strict load: %s", note)
        self.restore_rng_from = ckpt if same_ranks else None
        resume = resume_record(point, self.changes)
        if self.cfg.checkpoint.verify_on_resume and ckpt.get("val_loss") is not None:
            resume["val_check"] = check_restored_val_loss(
                ckpt["val_loss"],
                self.evaluate(self.val_loader).get("loss"),
                rebatched="trainer.eval_batch_size" in self.changes,
            )
        return resume

    def open_history(self, point: resume_lib.ResumePoint | None) -> None:
        """metrics.jsonl and TensorBoard, cut back to where a resumed run's checkpoint was taken."""
        step = point.ckpt["global_step"] if point else None
        self.logger = MetricsLogger(
            self.run_dir,
            tensorboard=self.cfg.logger.tensorboard,
            keep_lines=point.ckpt.get("metrics_lines") if point else None,
            resume_step=step,
            enabled=distributed.is_main(),  # one metrics.jsonl, one TensorBoard run
        )
        self.logger.log_config(self.config_yaml, step or 0)

    # ---- fit -----------------------------------------------------------------------------
    def fit(self, preemption: StopOnSignal) -> str:
        """Train epochs until max_epochs, max_steps or a stop signal; return which one stopped it."""
        t, state = self.t, self.state
        stopped_by = "max_epochs"
        if t.max_steps is not None and state.global_step >= t.max_steps:
            stopped_by = "max_steps"  # already there: a resumed run whose config stops it at this step
            log.warning(
                "trainer.max_steps=%d is reached already (step %d): nothing to train. To go on, give "
                "trainer.max_steps=null (or a larger number) with the resume.",
                t.max_steps,
                state.global_step,
            )
        while state.epoch < t.max_epochs and stopped_by == "max_epochs":
            stopped_by, loss_sum = self.train_epoch(preemption)
            self.end_epoch(loss_sum)
        self.checkpointer.wait()  # the last save (in the background, maybe) is durable before the run is recorded
        return stopped_by

    def train_epoch(self, preemption: StopOnSignal) -> tuple[str, torch.Tensor]:
        """The steps of one epoch from the state's position, until its end or a stop; saves
        the step checkpoints that fall inside it. Returns what stopped it and the loss sum."""
        t, state, progress = self.t, self.state, self.progress
        self.model.train()
        loss_sum = torch.tensor(state.epoch_loss_sum, dtype=torch.float64, device=self.device)
        progress.start_epoch(state.epoch, t.max_epochs, self.steps_per_epoch, done=state.position)
        # A resumed epoch can have nothing left when allow_config_changes made the batches larger.
        state.position = min(state.position, self.steps_per_epoch)
        cfg = self.cfg
        loader = data_lib.train_loader(
            self.train_set,
            cfg.data.batch_size,
            cfg.data.num_workers,
            cfg.seed,
            state.data_epoch,
            state.position,
            rank=self.rank,
            world_size=self.world_size,
        )
        with signals_held():  # its workers start here
            batches = iter(loader) if state.position < self.steps_per_epoch else iter(())
        if self.restore_rng_from is not None:
            # Only now: anything that creating the iterator drew must not shift the streams.
            state.restore(self.restore_rng_from, RNG_PIECES, strict=cfg.checkpoint.strict_load)
            self.restore_rng_from = None
        stopped_by, loss = "max_epochs", None
        for x, y in batches:
            loss = train_step(
                self.net,
                x.to(self.device),
                y.to(self.device),
                self.optimizer,
                self.scaler,
                self.autocast,
                t.gradient_clip_val,
                self.checkpointer.wait_for_snapshot,
            )
            self.scheduler.step()
            state.global_step += 1
            state.position += 1
            loss_sum += loss
            logged = None
            if state.global_step % t.log_every_n_steps == 0:
                logged = distributed.mean(loss.item())
                stop_if_not_finite(logged, state, t.stop_on_nonfinite_loss)
                lr = current_lr(self.optimizer)
                self.logger.log("step", state.epoch, state.global_step, {"train/loss": logged, "lr": lr})
            progress.step(state.global_step, logged, current_lr(self.optimizer))
            self.checkpointer.raise_if_failed()  # a background save that failed stops the run here
            if t.max_steps is not None and state.global_step >= t.max_steps:
                stopped_by = "max_steps"
            if self.stop_requested(preemption):
                stopped_by = "signal"
            if state.position == self.steps_per_epoch or stopped_by != "max_epochs":
                break  # the epoch end or the stop saves what is due
            if self.checkpointer.step_due(state.global_step):
                state.last_loss, state.epoch_loss_sum = loss.item(), loss_sum.item()
                stop_if_not_finite(state.epoch_loss_sum, state, t.stop_on_nonfinite_loss)
                self.save("step", self.validate())
        progress.end_epoch()
        if loss is not None:
            state.last_loss = loss.item()
        return stopped_by, loss_sum

    def stop_requested(self, preemption: StopOnSignal) -> bool:
        """Whether a stop signal came. Under torchrun the ranks must stop at one step, so they
        agree every STOP_CHECK_EVERY steps and at the epoch's last (a collective of its own:
        every step would cost a few percent of a small model's step)."""
        if self.world_size == 1:
            return preemption.stop_requested()
        state = self.state
        if state.global_step % STOP_CHECK_EVERY and state.position != self.steps_per_epoch:
            return False
        return distributed.any_rank(preemption.stop_requested())

    def end_epoch(self, loss_sum: torch.Tensor) -> None:
        """Validate and save where the epoch ended: at its last step, or where a stop came."""
        t, state = self.t, self.state
        state.epoch_loss_sum = loss_sum.item()  # this rank's: a checkpoint keeps every rank's
        epoch_loss_sum = distributed.mean(state.epoch_loss_sum)
        stop_if_not_finite(epoch_loss_sum, state, t.stop_on_nonfinite_loss)  # before anything is saved
        metrics = {"train/loss": epoch_loss_sum / state.position, "lr": current_lr(self.optimizer)}
        metrics.update(self.validate())
        self.metrics = metrics
        log.info(
            "epoch %d/%d step %d %s",
            state.epoch + 1,
            t.max_epochs,
            state.global_step,
            " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        )
        if state.position == self.steps_per_epoch:
            self.logger.log("epoch", state.epoch, state.global_step, metrics)
            state.epoch += 1
            state.data_epoch, state.position, state.epoch_loss_sum = state.data_epoch + 1, 0, 0.0
            monitor = self.cfg.checkpoint.monitor
            improved = self.checkpointer.improves(metrics.get(monitor), state.best_metric)
            if improved:
                state.best_metric = metrics[monitor]
            self.save("epoch", metrics, improved)
        else:
            # Stopped inside an epoch: checkpoint first, so that a resumed run's metrics go on
            # from here; then report the stop.
            self.save("stop", metrics)
            self.logger.log("stop", state.epoch, state.global_step, metrics)

    def validate(self) -> dict:
        return prefixed("val", self.evaluate(self.val_loader))

    def test(self) -> dict:
        test = prefixed("test", self.evaluate(self.test_loader))
        self.logger.log("test", self.state.epoch, self.state.global_step, test)
        log.info("test %s", " ".join(f"{k} {v:.4f}" for k, v in test.items()))
        return test

    def evaluate(self, loader: DataLoader) -> dict:
        return evaluate(self.model, loader, self.device, self.autocast, self.rank, self.world_size)

    # ---- save ----------------------------------------------------------------------------
    def save(self, event: str, val: dict, improved: bool = False) -> None:
        """Every rank gives its own state (random streams, losses); rank 0 writes; all wait until
        it is done."""
        every_rank = distributed.gather(self.state.own_state()) if self.world_size > 1 else None
        if distributed.is_main():
            self.save_here(event, val, improved, every_rank)
        distributed.barrier()

    def save_here(self, event: str, val: dict, improved: bool, every_rank: list | None) -> None:
        state = self.state
        self.checkpointer.save(
            lambda kind: self.payload(kind, val.get("val/loss"), every_rank),
            event=event,
            epoch=state.epoch,
            step=state.global_step,
            position=state.position,
            metric=val.get(self.cfg.checkpoint.monitor),
            improved=improved,
            copy_later=state.stepped_tensors(),  # copied in the background (async_save) before the next step
        )

    def payload(self, kind: str, val_loss: float | None, every_rank: list | None) -> dict:
        """What a checkpoint holds: everything to resume ("full"), or the weights ("model").
        `every_rank`: under torchrun, each rank's own state (None: this process's only)."""
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "origin": "trained",
            "exact_resume": True,  # everything a bit-exact continuation needs is in it
            **self.meta,
            "timestamp": datetime.now(timezone.utc).isoformat(),
        }
        if kind == "model":
            return {
                "epoch": self.state.epoch,
                "global_step": self.state.global_step,
                "model_state_dict": self.state.model_weights(),
                "config": self.config_yaml,
                "meta": meta,
            }
        return {
            **self.state.capture(every_rank),
            "val_loss": val_loss,
            "metrics_lines": self.logger.lines,
            "config": self.config_yaml,
            "meta": meta,
        }

    def close(self) -> None:
        try:
            # A run ending by an error still lets the save in flight finish (or fail: said, not raised
            # over the error that ended the run; a finished run has waited already).
            self.checkpointer.close()
        except (CheckpointError, OSError) as e:
            log.error("the checkpoint being written in the background failed too: %s", e)
        finally:
            if self.logger is not None:
                self.logger.close()


def check_metric_exists(metric: str | None, splits: data_lib.Splits) -> None:
    """Before any training: the run would end without the metric a sweeper optimizes."""
    for prefix, part in (("val/", splits.val), ("test/", splits.test)):
        if metric is not None and metric.startswith(prefix) and len(part) == 0:
            raise ConfigError(
                f"optimized_metric={metric}: the {prefix[:-1]} split is empty, so the run ends without it"
            )


def nothing_left(ckpt: dict, cfg: DictConfig) -> bool:
    """Whether a resumed run's config stops it where its checkpoint already is."""
    max_steps = cfg.trainer.max_steps
    return ckpt["epoch"] >= cfg.trainer.max_epochs or (max_steps is not None and ckpt["global_step"] >= max_steps)


def steps_per_epoch(train_samples: int, world_size: int, batch_size: int) -> int:
    """Optimizer steps in an epoch: each rank's shard in batches of data.batch_size (per rank)."""
    return math.ceil(data_lib.shard_size(train_samples, world_size) / batch_size)


def expected_state_bytes(model: torch.nn.Module) -> int:
    """About how large a full checkpoint of this model gets: its weights and up to two optimizer
    buffers per weight (Adam's moments)."""
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


# The tag of each rank's own random streams (data.py's tags are 1-7).
RANK_STREAMS = 8
# Under torchrun, how often the ranks agree whether a stop signal came (Training.stop_requested).
STOP_CHECK_EVERY = 5


def same_world_size(point: resume_lib.ResumePoint, allowed: bool) -> bool:
    """A checkpoint continues exactly only with the number of ranks that wrote it: the data
    order (each rank's shard) and the random streams (one per rank) depend on it."""
    saved, now = point.ckpt["meta"].get("world_size", 1), distributed.world_size()
    if saved == now:
        return True
    if not allowed:
        raise ConfigError(
            f"{point.path} was written by {saved} process(es), this run has {now}: the data order and the "
            "random streams cannot continue exactly. Resume with the same number of processes, or give "
            "allow_config_changes=true to continue from its model, optimizer and scheduler on a new trajectory."
        )
    log.warning(
        "resuming a %d-process checkpoint on %d: model, optimizer and scheduler are restored; the data order and "
        "the random streams cannot continue exactly, and the run no longer follows its original trajectory",
        saved,
        now,
    )
    return False


class RunStopped(Exception):
    """The run cannot go on meaningfully (a non-finite loss): one line, exit 1, status failed."""


def stop_if_not_finite(loss: float, state: TrainState, stop: bool) -> None:
    """A NaN or infinite train/loss (a step's, or the epoch's running sum) stops the run before
    it saves or logs that state as if it were fine."""
    if stop and not math.isfinite(loss):
        raise RunStopped(
            f"train/loss is {loss} at step {state.global_step} (epoch {state.epoch + 1}): the run stopped before "
            "saving that state. Lower optimizer.lr, set trainer.gradient_clip_val or check the data; "
            "trainer.stop_on_nonfinite_loss=false goes on regardless."
        )


def determinism_in_force(cfg: DictConfig, resume_point: resume_lib.ResumePoint | None, device: torch.device) -> dict:
    """Put the level and the thread count in force (a resumed run keeps the count it ran with);
    return the settings in force, and say what a user must know about them."""
    recorded = resume_point.ckpt["meta"].get("determinism_settings", {}) if resume_point else {}
    num_threads, threads_from = pick_num_threads(cfg.determinism.num_threads, recorded.get("num_threads"))
    settings = apply_determinism(cfg.determinism.level, num_threads)
    log.info("%d intra-op threads (%s): the bits depend on it", num_threads, threads_from)
    if os.environ.get("OMP_NUM_THREADS", str(num_threads)) != str(num_threads):
        log.info(
            "OMP_NUM_THREADS=%s is not what sets the thread count: determinism.num_threads does "
            "(a launcher may set OMP_NUM_THREADS, and the bits must not follow it)",
            os.environ["OMP_NUM_THREADS"],
        )
    note = gpu_note(cfg.determinism.level, str(device))
    if note:
        log.warning(note)
    return settings


def train_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast: Callable[[], contextlib.AbstractContextManager],
    clip_norm: float | None,
    before_update: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """One optimizer step. `before_update` runs just before the weights change: a save in the
    background may still be copying them (Checkpointer.wait_for_snapshot)."""
    with autocast():
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_norm:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    before_update()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Mean loss and accuracy over a whole split (empty dict for an empty split).

    Draws no random numbers (eval mode, a loader with its own generator), so validating at any
    point leaves the training trajectory untouched. Under torchrun rank r computes batches r,
    r + W, ...; the per-batch sums are gathered and added in batch order, as one process adds
    them: the result is the one process's, to the bit.
    """
    if len(loader.dataset) == 0:
        return {}
    model.eval()
    sums = []
    with signals_held():  # its workers start here
        batches = iter(loader)
    for i, (x, y) in enumerate(batches):
        if i % world_size != rank:
            continue
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        sums.append(
            (i, F.cross_entropy(logits.float(), y, reduction="sum").item(), (logits.argmax(dim=1) == y).sum().item())
        )
    model.train()
    if world_size > 1:
        sums = sorted(s for part in distributed.gather(sums) for s in part)
    loss_sum, correct = 0.0, 0
    for _, batch_loss, batch_correct in sums:
        loss_sum += batch_loss
        correct += batch_correct
    n = len(loader.dataset)
    return {"loss": loss_sum / n, "acc": correct / n}


def check_restored_val_loss(recorded: float, now: float | None, rebatched: bool = False) -> dict:
    """Validation right after restoring must reproduce the loss the checkpoint recorded: to the
    bit, or, when trainer.eval_batch_size changed (a sum batched otherwise rounds otherwise in its
    last bits), to float rounding."""
    identical = now == recorded
    if rebatched and now is not None and not identical:
        identical = math.isclose(now, recorded, rel_tol=1e-6, abs_tol=1e-9)
    if identical:
        how = "identical to the checkpoint's"
        if now != recorded:
            how = "equal to the checkpoint's within float rounding (trainer.eval_batch_size changed)"
        log.info("resume check: val/loss %.10g after restoring, %s", now, how)
    else:
        log.warning("!" * 72)
        log.warning(
            "RESUME CHECK FAILED: val/loss after restoring is %r, the checkpoint recorded %r "
            "(difference %.3g). The restored model is not the one that was saved, or this "
            "machine computes differently.",
            now,
            recorded,
            (now or 0.0) - recorded,
        )
        log.warning("!" * 72)
    return {
        "recorded_val_loss": recorded,
        "val_loss_after_restore": now,
        "identical": identical,
        "rebatched": rebatched,
    }


def resume_record(point: resume_lib.ResumePoint, changes: list[str]) -> dict:
    return {
        "from": str(point.path),
        "epoch": point.ckpt["epoch"],
        "global_step": point.ckpt["global_step"],
        "position": point.ckpt["loader_state"]["position"],
        "changed_keys": changes,
        "exact": point.ckpt["meta"].get("exact_resume", True),  # False: an imported checkpoint
        "time": datetime.now(timezone.utc).isoformat(),
    }


def previous_summary(run_dir: Path) -> dict:
    """The run's earlier metrics.json (its history of resumes, its last metrics), so that a
    resumed run adds to it rather than starting a new one."""
    try:
        old = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    old.pop("error", None)
    return old


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but this machine has no CUDA device; use trainer.device=cpu or trainer.device=auto"
        )
    return torch.device(name)


def mixed_precision(
    precision: str, device: torch.device
) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler]:
    """An autocast context factory and a gradient scaler for the chosen precision.

    The scaler only scales for 16-mixed (float16 gradients underflow without it); otherwise it
    is disabled and passes every call straight through, so the loop is the same for all three.
    """
    precision = str(precision)
    if precision == "32":
        return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler
