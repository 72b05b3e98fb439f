"""The training loop: build, train epochs (validating after each), test, write the summary.

Everything a run does is in `run`, top to bottom. The steps it calls are small functions in
this file or in a module named for what it does.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from framework import data as data_lib
from framework.build import build_data, build_model, build_optimizer, build_scheduler
from framework.config import ConfigError, check
from framework.environment import describe
from framework.logger import MetricsLogger, Progress, write_json_atomic
from framework.reproducibility import apply_determinism, fingerprint, seed_everything

log = logging.getLogger("framework")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as `cfg` says, writing everything into `run_dir`; return the final summary."""
    check(cfg)
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer

    # Seed before anything is built: the model's initial weights come from the torch RNG.
    determinism = apply_determinism(cfg.determinism.level)
    seed_everything(cfg.seed)
    log.info("seed %d, determinism %s", cfg.seed, determinism)

    summary = {"status": "running", "seed": cfg.seed, "determinism": determinism, "meta": describe()}
    write_json_atomic(run_dir / "metrics.json", summary)
    logger = MetricsLogger(run_dir, tensorboard=cfg.logger.tensorboard)
    try:
        device = pick_device(t.device)
        splits = build_data(cfg.data)
        model = build_model(cfg.model, splits).to(device)
        optimizer = build_optimizer(cfg.optimizer, model)
        steps_per_epoch = math.ceil(len(splits.train) / cfg.data.batch_size)
        # The schedule's length comes from max_epochs only: max_steps is a stopping point.
        scheduler = build_scheduler(cfg.scheduler, optimizer, total_steps=t.max_epochs * steps_per_epoch)
        autocast, scaler = mixed_precision(t.precision, device)
        train_set = data_lib.Augmented(splits.train, cfg.seed, cfg.data.augment.max_shift,
                                       cfg.data.augment.noise_std)
        val_loader = data_lib.eval_loader(splits.val, t.eval_batch_size, cfg.data.num_workers)
        test_loader = data_lib.eval_loader(splits.test, t.eval_batch_size, cfg.data.num_workers)
        log.info("data: %d train / %d val / %d test, input %s, %d classes; %d steps per epoch; device %s",
                 len(splits.train), len(splits.val), len(splits.test), splits.input_shape,
                 splits.num_classes, steps_per_epoch, device)

        epoch, global_step = 0, 0
        progress = Progress(every=t.log_every_n_steps)
        stopped_by = "max_epochs"
        metrics: dict = {}
        while epoch < t.max_epochs and stopped_by != "max_steps":
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            steps_this_epoch = 0
            progress.start_epoch(epoch, t.max_epochs, steps_per_epoch, done=0)
            loader = data_lib.train_loader(train_set, cfg.data.batch_size, cfg.data.num_workers,
                                           cfg.seed, epoch)
            for x, y in loader:
                loss = train_step(model, x.to(device), y.to(device), optimizer, scaler, autocast,
                                  t.gradient_clip_val)
                scheduler.step()
                global_step += 1
                steps_this_epoch += 1
                loss_sum += loss
                logged = None
                if global_step % t.log_every_n_steps == 0:
                    logged = loss.item()
                    logger.log("step", epoch, global_step, {"train/loss": logged, "lr": current_lr(optimizer)})
                progress.step(global_step, logged, current_lr(optimizer))
                if t.max_steps is not None and global_step >= t.max_steps:
                    stopped_by = "max_steps"
                    break
            progress.end_epoch()

            metrics = {"train/loss": (loss_sum / steps_this_epoch).item(), "lr": current_lr(optimizer)}
            metrics.update(prefixed("val", evaluate(model, val_loader, device, autocast)))
            # A stop inside an epoch still validates, but is logged as a stop, not an epoch.
            finished_epoch = steps_this_epoch == steps_per_epoch
            logger.log("epoch" if finished_epoch else "stop", epoch, global_step, metrics)
            log.info("epoch %d/%d step %d %s", epoch + 1, t.max_epochs, global_step,
                     " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if finished_epoch:
                epoch += 1

        test = prefixed("test", evaluate(model, test_loader, device, autocast))
        logger.log("test", epoch, global_step, test)
        metrics.update(test)
        log.info("test %s", " ".join(f"{k} {v:.4f}" for k, v in test.items()))

        summary.update(
            status="completed",
            stopped_by=stopped_by,
            epochs_completed=epoch,
            global_step=global_step,
            metrics=metrics,
            fingerprint=fingerprint(model.state_dict(), optimizer.state_dict()),
            wall_time_s=round(time.time() - started, 3),
        )
        write_json_atomic(run_dir / "metrics.json", summary)
        log.info("done in %.1fs: %s", summary["wall_time_s"], run_dir / "metrics.json")
        return summary
    except BaseException as e:
        summary.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                       error=f"{type(e).__name__}: {e}", wall_time_s=round(time.time() - started, 3))
        write_json_atomic(run_dir / "metrics.json", summary)
        raise
    finally:
        logger.close()


def train_step(model, x, y, optimizer, scaler, autocast, clip_norm) -> torch.Tensor:
    with autocast():
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_norm:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@torch.no_grad()
def evaluate(model, loader, device, autocast) -> dict:
    """Mean loss and accuracy over a whole split (empty dict for an empty split)."""
    if len(loader.dataset) == 0:
        return {}
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
    model.train()
    n = len(loader.dataset)
    return {"loss": loss_sum / n, "acc": correct / n}


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def current_lr(optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but this machine has no CUDA device; "
                          "use trainer.device=cpu or trainer.device=auto")
    return torch.device(name)


def mixed_precision(precision: str, device: torch.device):
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
