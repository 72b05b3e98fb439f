"""`Training` owns the built components and has a method per step of the loop (fit, train an epoch,
end it, validate, test, save, restore). All state that survives a checkpoint lives in
`Training.state` (engine/state.py)."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from framework import data as data_lib
from framework import distributed
from framework.checkpoint import Checkpointer, CheckpointError, storage
from framework.checkpoint.formats import FORMAT_VERSION
from framework.config.errors import ConfigError
from framework.engine import strategy
from framework.engine.build import build_data, build_model, build_optimizer, build_scheduler, build_task
from framework.engine.callbacks import Callbacks
from framework.engine.early_stopping import build_early_stopping
from framework.engine.ema import build_ema
from framework.engine.preemption import StopOnSignal, signals_held
from framework.engine.state import PIECES, RNG_PIECES, TrainState, as_rank_restores_it
from framework.engine.step import evaluate, mixed_precision, stop_if_not_finite, train_step
from framework.runs import resume as resume_lib
from framework.runs.reproducibility import seed_everything
from framework.tasks.task import metric_names, to_device
from framework.tracking.hparams import run_name
from framework.tracking.metrics_logger import MetricsLogger, chosen_sinks
from framework.tracking.progress import Progress
from framework.tracking.sinks import RunInfo

log = logging.getLogger("framework")


class Training:
    """The built components and the steps of the loop: fit (epochs of steps, validating after
    each), save, restore, test. All state that survives a checkpoint lives in `self.state`
    (framework/engine/state.py); what is built here follows from the config and the seed."""

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
        self.hparams = summary.get("hparams", {})  # the keys the command line set (runs/record.py)
        self.logger: MetricsLogger | None = None
        self.progress = Progress(every=t.log_every_n_steps, enabled=distributed.is_main())
        self.restore_rng_from: dict | None = None
        self.compiled = False  # whether the first step of a compiled model ran (and compiled it)

        self.task = build_task(cfg.task)
        splits = build_data(cfg.data, cfg.seed, self.task)
        check_metric_exists(cfg.get("optimized_metric"), splits)
        check_augmentation(cfg.data.augment, splits.first)
        facts = self.task.model_facts(splits)
        self.model = build_model(cfg.model, facts).to(device)
        # Same initial weights on every rank (DDP also broadcasts rank 0's; FSDP shards them);
        # then each rank its own random streams (dropout), from (seed, rank).
        if self.world_size > 1:
            seed_everything(data_lib.keyed_seed(cfg.seed, RANK_STREAMS, self.rank) % 2**63)
        self.owns_group = t.strategy == "fsdp" and strategy.one_process_group()
        # What trains: the model itself, its DistributedDataParallel wrapper, or the model sharded
        # in place (engine/strategy.py). Checkpoints hold the model's own keys: no `module.` prefix.
        self.net, self.no_sync = strategy.spread(self.model, t.strategy, device)
        if t.compile:
            # Compiled lazily, at the first step (timed there). Evaluation runs the plain module.
            # A fresh start, as a new process has: sweep jobs in one process would otherwise reuse
            # an earlier job's graphs and count towards dynamo's limit on recompiles.
            torch._dynamo.reset()
            self.net = torch.compile(self.net, **({} if t.compile is True else {"mode": t.compile}))
        self.optimizer = build_optimizer(cfg.optimizer, self.model)
        # data.batch_size is per rank and per micro-batch: each rank takes its shard of the epoch
        # in batches of it, and steps once every trainer.accumulate_grad_batches of them.
        self.batches_per_epoch = batches_per_epoch(len(splits.train), self.world_size, cfg.data.batch_size)
        self.steps_per_epoch = steps_in(self.batches_per_epoch, t.accumulate_grad_batches)
        # The schedule's length comes from max_epochs only: max_steps is a stopping point.
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, total_steps=t.max_epochs * self.steps_per_epoch)
        self.autocast, self.scaler = mixed_precision(t.precision, device)
        d, augment = cfg.data, cfg.data.augment
        kept_on = data_lib.resident_device(d.on_device, device, splits.train)
        self.train_set = data_lib.Augmented(splits.train, cfg.seed, augment.max_shift, augment.noise_std, kept_on)
        self.val_loader = data_lib.eval_loader(splits.val, t.eval_batch_size, d.num_workers, kept_on)
        self.test_loader = data_lib.eval_loader(splits.test, t.eval_batch_size, d.num_workers, kept_on)
        log.info(
            "data: %d train / %d val / %d test, %s; %d steps per epoch; device %s",
            len(splits.train),
            len(splits.val),
            len(splits.test),
            ", ".join(f"{key} {value}" for key, value in facts.items()) or "task " + cfg.task._target_,
            self.steps_per_epoch,
            device,
        )
        ema = build_ema(self.model, t.ema["decay"])
        # What validation, test, best.pt's metric and a resume's check evaluate.
        self.evaluated = ema.module if ema is not None and t.ema["evaluate"] else self.model
        early_stopping = build_early_stopping(t.early_stopping, len(splits.val))
        self.callbacks = Callbacks(cfg.get("callbacks"), self)
        self.state = TrainState(
            self.model, self.optimizer, self.scheduler, self.scaler, ema, early_stopping, self.callbacks
        )
        self.checkpointer = Checkpointer(
            cfg.checkpoint,
            storage.for_run(cfg, run_dir),
            resumed_from=resume_point.path if resume_point else None,
            state_bytes=expected_state_bytes(self.model, with_average=ema is not None),
        )
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.run_dir = run_dir
        self.uploads: dict | None = None  # the remote copy's account of its uploads (finish_saves)

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
        if not same_ranks:
            self.continue_epoch_on_other_ranks(ckpt["meta"].get("world_size", 1))
        self.restore_rng_from = ckpt if same_ranks else None
        resume = resume_record(point, self.changes)
        recorded = recorded_val_metrics(ckpt)
        if self.cfg.checkpoint.verify_on_resume and recorded:
            resume["val_check"] = check_restored_val_metrics(
                recorded, self.validate(), rebatched="trainer.eval_batch_size" in self.changes
            )
        return resume

    def continue_epoch_on_other_ranks(self, saved_world_size: int) -> None:
        """A checkpoint of another number of ranks (allow_config_changes): its position counts the
        batches each of its ranks took. Go on after as many samples of the epoch's order, so that
        the rest of the epoch is trained on (a few samples may come twice, none is skipped)."""
        state = self.state
        if not state.position:  # at an epoch's start: nothing to rescale
            return
        position = min(state.position * saved_world_size // self.world_size, self.batches_per_epoch)
        log.warning(
            "the checkpoint's epoch was at batch %d of each of its %d rank(s): on %d it goes on at batch %d; "
            "the learning-rate schedule keeps the length it had (its steps per epoch were the old number's)",
            state.position,
            saved_world_size,
            self.world_size,
            position,
        )
        # The epoch's loss sum, as a sum over the steps the new position stands for.
        accumulate = self.t.accumulate_grad_batches
        state.epoch_loss_sum *= steps_in(position, accumulate) / steps_in(state.position, accumulate)
        state.position = position

    def open_history(self, point: resume_lib.ResumePoint | None) -> None:
        """metrics.jsonl and the sinks the `logger` section chose, rewound to where a resumed run's
        checkpoint was taken."""
        step = point.ckpt["global_step"] if point else None
        main = distributed.is_main()  # one metrics.jsonl, one TensorBoard run, one MLflow run
        self.logger = MetricsLogger(
            chosen_sinks(self.cfg.get("logger")) if main else {},
            keep_lines=point.ckpt.get("metrics_lines") if point else None,
            enabled=main,
        )
        name = run_name(self.run_dir, self.hparams)
        self.logger.open(RunInfo(self.run_dir, name, yaml.safe_load(self.config_yaml), self.hparams, step))
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
        if state.early_stopping is not None and state.early_stopping.stopped:
            stopped_by = "early_stopping"  # a resumed run that had stopped early: nothing to train
        self.callbacks.call("on_fit_start")
        while state.epoch < t.max_epochs and stopped_by == "max_epochs":
            stopped_by, loss_sum, improved = self.train_epoch(preemption)
            self.end_epoch(loss_sum, improved)
            if state.early_stopping is not None and state.early_stopping.stopped:
                stopped_by = "early_stopping"
        self.checkpointer.wait()  # the last save (in the background, maybe) is durable before the run is recorded
        self.callbacks.call("on_fit_end")
        return stopped_by

    def train_epoch(self, preemption: StopOnSignal) -> tuple[str, torch.Tensor, bool]:
        """The optimizer steps of one epoch from the state's position, until its end or a stop;
        validates and saves where the config asks inside it. Returns what stopped it, the loss
        sum, and whether a validation at the stopping step improved the monitor (best.pt is then
        the stop's to write)."""
        t, state, progress = self.t, self.state, self.progress
        self.model.train()
        loss_sum = torch.tensor(state.epoch_loss_sum, dtype=torch.float64, device=self.device)
        micro = t.accumulate_grad_batches
        progress.start_epoch(state.epoch, t.max_epochs, self.steps_per_epoch, done=steps_in(state.position, micro))
        # A resumed epoch can have nothing left when allow_config_changes made the batches larger.
        state.position = min(state.position, self.batches_per_epoch)
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
            batches = iter(loader) if state.position < self.batches_per_epoch else iter(())
        if self.restore_rng_from is not None:
            # Only now: anything that creating the iterator drew must not shift the streams.
            state.restore(self.restore_rng_from, RNG_PIECES, strict=cfg.checkpoint.strict_load)
            self.restore_rng_from = None
        stopped_by, loss, improved = "max_epochs", None, False
        # A stop signal that lands among a step's micro-batches is seen after its optimizer step:
        # saves happen at optimizer steps only, so a checkpoint never holds half-added gradients.
        for micro_batches in in_groups(batches, micro):
            val, improved = None, False
            loss = self.optimizer_step(micro_batches)
            state.global_step += 1
            state.position += len(micro_batches)
            loss_sum += loss
            logged = None
            if state.global_step % t.log_every_n_steps == 0:
                logged = distributed.mean(loss.item())
                stop_if_not_finite(logged, state, t.stop_on_nonfinite_loss)
                lr = current_lr(self.optimizer)
                self.logger.log("step", state.epoch, state.global_step, {"train/loss": logged, "lr": lr})
            progress.step(state.global_step, logged, current_lr(self.optimizer))
            self.checkpointer.raise_if_failed()  # a background save that failed stops the run here
            self.callbacks.call("on_step_end")
            if t.max_steps is not None and state.global_step >= t.max_steps:
                stopped_by = "max_steps"
            if self.stop_requested(preemption):
                stopped_by = "signal"
            if state.position == self.batches_per_epoch:
                break  # the epoch's end validates and saves what is due
            if t.val_every_n_steps and state.global_step % t.val_every_n_steps == 0:
                # Before a stop breaks off too: the run resumed from its checkpoint must count this
                # validation (early stopping, best.pt, callbacks), as a run never stopped does.
                val, improved = self.validate_inside_epoch()
                if state.early_stopping is not None and state.early_stopping.stopped:
                    stopped_by = "early_stopping"
            if stopped_by != "max_epochs":
                break  # the stop validates and saves (end_epoch)
            if self.checkpointer.step_due(state.global_step) or improved:
                state.last_loss, state.epoch_loss_sum = loss.item(), loss_sum.item()
                stop_if_not_finite(state.epoch_loss_sum, state, t.stop_on_nonfinite_loss)
                self.save("step", val if val is not None else self.validate(), improved)
        progress.end_epoch()
        if loss is not None:
            state.last_loss = loss.item()
        return stopped_by, loss_sum, improved and stopped_by != "max_epochs"

    def optimizer_step(self, micro_batches: list) -> torch.Tensor:
        """One optimizer step on a group of micro-batches, the schedule's step and the average's
        update; the first step of a compiled model compiles it, and says how long that took."""
        t = self.t
        started = time.perf_counter() if t.compile and not self.compiled else None
        loss = train_step(
            self.net,
            self.task,
            [to_device(batch, self.device) for batch in micro_batches],
            self.optimizer,
            self.scaler,
            self.autocast,
            t.gradient_clip_val,
            self.checkpointer.wait_for_snapshot,
            self.no_sync,
        )
        self.scheduler.step()
        if self.state.ema is not None:
            self.state.ema.update_parameters(self.model)
        if started is not None:
            self.compiled = True
            log.info("torch.compile: the first step took %.1f s (compiling)", time.perf_counter() - started)
        return loss

    def validate_inside_epoch(self) -> tuple[dict, bool]:
        """trainer.val_every_n_steps: validate, log it, keep the best (best.pt, at the save that
        follows) and tell early stopping. Returns the metrics and whether the monitor improved."""
        state = self.state
        val = self.validate()
        self.logger.log("val", state.epoch, state.global_step, val)
        return val, self.validated(val)

    def validated(self, metrics: dict) -> bool:
        """After a validation that counts (an epoch's end, or val_every_n_steps): keep the best
        value of checkpoint.monitor, then early stopping and the callbacks see it. Returns whether
        the monitor improved (best.pt is then the next save's to write)."""
        state = self.state
        monitor = self.cfg.checkpoint.monitor
        improved = self.checkpointer.improves(metrics.get(monitor), state.best_metric)
        if improved:
            state.best_metric = metrics[monitor]
        if state.early_stopping is not None:
            state.early_stopping.update(metrics, state.global_step)
        self.callbacks.validated(metrics)
        return improved

    def stop_requested(self, preemption: StopOnSignal) -> bool:
        """Whether a stop signal came. Under torchrun the ranks must stop at one step, so they
        agree every STOP_CHECK_EVERY steps and at the epoch's last (a collective of its own:
        every step would cost a few percent of a small model's step)."""
        if self.world_size == 1:
            return preemption.stop_requested()
        state = self.state
        if state.global_step % STOP_CHECK_EVERY and state.position != self.batches_per_epoch:
            return False
        return distributed.any_rank(preemption.stop_requested())

    def end_epoch(self, loss_sum: torch.Tensor, improved_at_stop: bool = False) -> None:
        """Validate and save where the epoch ended: at its last step, or where a stop came."""
        t, state = self.t, self.state
        state.epoch_loss_sum = loss_sum.item()  # this rank's: a checkpoint keeps every rank's
        epoch_loss_sum = distributed.mean(state.epoch_loss_sum)
        stop_if_not_finite(epoch_loss_sum, state, t.stop_on_nonfinite_loss)  # before anything is saved
        steps_done = steps_in(state.position, t.accumulate_grad_batches)
        metrics = {"train/loss": epoch_loss_sum / steps_done, "lr": current_lr(self.optimizer)}
        metrics.update(self.validate())
        self.metrics = metrics
        log.info(
            "epoch %d/%d step %d %s",
            state.epoch + 1,
            t.max_epochs,
            state.global_step,
            " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        )
        if state.position == self.batches_per_epoch:
            self.logger.log("epoch", state.epoch, state.global_step, metrics)
            state.epoch += 1
            state.data_epoch, state.position, state.epoch_loss_sum = state.data_epoch + 1, 0, 0.0
            self.save("epoch", metrics, self.validated(metrics))
        else:
            # Stopped inside an epoch: checkpoint first, so that a resumed run's metrics go on
            # from here; then report the stop.
            self.save("stop", metrics, improved_at_stop)
            self.logger.log("stop", state.epoch, state.global_step, metrics)

    def validate(self) -> dict:
        return prefixed("val", self.evaluate(self.val_loader))

    def test(self) -> dict:
        test = prefixed("test", self.evaluate(self.test_loader))
        self.logger.log("test", self.state.epoch, self.state.global_step, test)
        log.info("test %s", " ".join(f"{k} {v:.4f}" for k, v in test.items()))
        return test

    def evaluate(self, loader: DataLoader) -> dict:
        # A sharded model's forward gathers each block from every rank: all ranks run every batch.
        rank, world_size = (0, 1) if self.state.sharded else (self.rank, self.world_size)
        return evaluate(self.evaluated, self.task, loader, self.device, self.autocast, rank, world_size)

    # ---- save ----------------------------------------------------------------------------
    def save(self, event: str, val: dict, improved: bool = False) -> None:
        """Every rank gives its own state (random streams, losses); the ranks the checkpoint store
        names write (rank 0, for local files); all wait until it is done."""
        every_rank = distributed.gather(self.state.own_state()) if self.world_size > 1 else None
        written = self.save_here(event, val, improved, every_rank)
        self.callbacks.call("on_save", saved=written)

    def save_here(self, event: str, val: dict, improved: bool, every_rank: list | None) -> list[str]:
        state = self.state
        return self.checkpointer.save(
            lambda kind: self.payload(kind, {k: v for k, v in val.items() if k.startswith("val/")}, every_rank),
            event=event,
            epoch=state.epoch,
            step=state.global_step,
            position=state.position,
            metric=val.get(self.cfg.checkpoint.monitor),
            improved=improved,
            copy_later=state.stepped_tensors(),  # copied in the background (async_save) before the next step
        )

    def payload(self, kind: str, val_metrics: dict, every_rank: list | None) -> dict:
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
            average = self.state.average_weights()
            return {
                "epoch": self.state.epoch,
                "global_step": self.state.global_step,
                "model_state_dict": self.state.model_weights(),
                **({"ema_state_dict": average} if average is not None else {}),  # export picks either
                "config": self.config_yaml,
                "meta": meta,
            }
        return {
            **self.state.capture(every_rank),
            "val_metrics": val_metrics,  # what the resume check compares with
            "metrics_lines": self.logger.lines,
            "config": self.config_yaml,
            "meta": meta,
        }

    def finish_saves(self, preemption: StopOnSignal) -> None:
        """The last save done, and what the store still does in the background (a remote copy's
        uploads) for at most checkpoint.upload_wait_s, or trainer.stop_grace_s from a stop signal,
        one that came before or comes while it waits: `uploads` is what it says, for the record."""
        grace_s = self.cfg.trainer.stop_grace_s
        self.uploads = self.checkpointer.finish(
            self.cfg.checkpoint.upload_wait_s, lambda: preemption.grace_left(grace_s)
        )

    def close(self, status: str = "failed") -> None:
        """`status`: the run's, as metrics.json records it (the sinks record it too)."""
        try:
            # A run ending by an error still lets the save in flight finish (or fail: said, not raised
            # over the error that ended the run; a finished run has waited already).
            self.checkpointer.close()
        except (CheckpointError, OSError) as e:
            log.error("the checkpoint being written in the background failed too: %s", e)
        finally:
            if self.logger is not None:
                self.logger.close(status)
            if self.owns_group:
                torch.distributed.destroy_process_group()


def check_metric_names(cfg: DictConfig, task) -> None:
    """checkpoint.monitor, early stopping's monitor and optimized_metric must be metrics the task
    reports; a monitor's mode, left null, is its direction (and recorded so in the run's config)."""
    reported = metric_names(task)
    stopping = cfg.trainer.early_stopping
    watched = ["checkpoint.monitor", "optimized_metric"]
    if stopping.patience is not None:
        watched.append("trainer.early_stopping.monitor")
    for key in watched:
        name = OmegaConf.select(cfg, key)
        if name is not None and name not in reported:
            raise ConfigError(
                f"{key}={name}: task {cfg.task._target_} does not report it; it reports {', '.join(reported)}"
            )
    if cfg.checkpoint.mode is None:
        cfg.checkpoint.mode = reported[cfg.checkpoint.monitor] if cfg.checkpoint.monitor is not None else "min"
    if stopping.patience is not None and stopping.mode is None:
        stopping.mode = reported[stopping.monitor]


def check_augmentation(augment: DictConfig, first) -> None:
    """Shifts and noise change a pair's input; a dict sample has no one input to change, and
    float noise would make integer inputs (token ids) floats."""
    if not (augment.max_shift or augment.noise_std):
        return
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise ConfigError(
            "data.augment shifts and adds noise to the input of (input, target) samples; the data gives "
            f"{type(first).__name__} samples: set data.augment.max_shift=0 and data.augment.noise_std=0"
        )
    if augment.noise_std and isinstance(first[0], torch.Tensor) and not first[0].is_floating_point():
        raise ConfigError(
            f"data.augment.noise_std adds float noise to the inputs; the data gives {first[0].dtype} inputs "
            "(token ids?): set data.augment.noise_std=0"
        )


def check_metric_exists(metric: str | None, splits: data_lib.Splits) -> None:
    """Before any training: the run would end without the metric a sweeper optimizes."""
    for prefix, part in (("val/", splits.val), ("test/", splits.test)):
        if metric is not None and metric.startswith(prefix) and len(part) == 0:
            raise ConfigError(
                f"optimized_metric={metric}: the {prefix[:-1]} split is empty, so the run ends without it"
            )


def batches_per_epoch(train_samples: int, world_size: int, batch_size: int) -> int:
    """Batches in an epoch: each rank's shard in batches of data.batch_size (per rank)."""
    return math.ceil(data_lib.shard_size(train_samples, world_size) / batch_size)


def steps_in(batches: int, accumulate: int) -> int:
    """Optimizer steps over `batches` micro-batches: one per `accumulate`, a short last one included."""
    return math.ceil(batches / accumulate)


def in_groups(batches, size: int):
    """Lists of `size` consecutive batches (the micro-batches of an optimizer step); the last
    list of an epoch holds what is left."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def expected_state_bytes(model: torch.nn.Module, with_average: bool = False) -> int:
    """About how large a full checkpoint of this model gets: its weights, up to two optimizer
    buffers per weight (Adam's moments), and the weights' moving average when there is one."""
    copies = 4 if with_average else 3
    return copies * sum(t.numel() * t.element_size() for t in model.state_dict().values())


# The tag of each rank's own random streams (framework/data/keyed.py: tags 1-7).
RANK_STREAMS = 8


# Under torchrun, how often the ranks agree whether a stop signal came (Training.stop_requested).
STOP_CHECK_EVERY = 5


def recorded_val_metrics(ckpt: dict) -> dict:
    """The validation metrics a checkpoint recorded when it was saved (an older version's: val/loss)."""
    if "val_metrics" in ckpt:
        return dict(ckpt["val_metrics"])
    return {"val/loss": ckpt["val_loss"]} if ckpt.get("val_loss") is not None else {}


def check_restored_val_metrics(recorded: dict, now: dict, rebatched: bool = False) -> dict:
    """Validation right after restoring must reproduce the metrics the checkpoint recorded: to the
    bit, or, when trainer.eval_batch_size changed (a sum batched otherwise rounds otherwise in its
    last bits), to float rounding."""
    exact = all(now.get(name) == value for name, value in recorded.items())
    identical = exact or (
        rebatched
        and all(
            now.get(name) is not None and math.isclose(now[name], value, rel_tol=1e-6, abs_tol=1e-9)
            for name, value in recorded.items()
        )
    )
    shown = " ".join(f"{name} {now.get(name)!r}" for name in recorded)
    if identical:
        how = "identical to the checkpoint's"
        if not exact:
            how = "equal to the checkpoint's within float rounding (trainer.eval_batch_size changed)"
        log.info("resume check: %s after restoring, %s", shown, how)
    else:
        log.warning("!" * 72)
        log.warning(
            "RESUME CHECK FAILED: after restoring, %s; the checkpoint recorded %s. The restored model is not "
            "the one that was saved, or this machine computes differently.",
            shown,
            " ".join(f"{name} {value!r}" for name, value in recorded.items()),
        )
        log.warning("!" * 72)
    return {
        "recorded": recorded,
        "after_restore": {name: now.get(name) for name in recorded},
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


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]
