"""The console: a progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("framework")


class Progress:
    """A tqdm bar per epoch on a terminal; a log line every `every` steps when not a terminal."""

    def __init__(self, every: int, enabled: bool = True):
        self.every, self.enabled = every, enabled
        self.bar = None
        self.tty = sys.stderr.isatty() and enabled

    def start_epoch(self, epoch: int, max_epochs: int, total: int, done: int) -> None:
        self.epoch, self.max_epochs = epoch, max_epochs
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=done, desc=f"epoch {epoch + 1}/{max_epochs}", leave=False, dynamic_ncols=True
            )

    def step(self, global_step: int, loss: float | None, lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", refresh=False)
        elif loss is not None:
            log.info(
                "epoch %d/%d step %d train/loss %.4f lr %.4g", self.epoch + 1, self.max_epochs, global_step, loss, lr
            )

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
