"""Learning-rate schedules that torch does not ship. Each steps once per optimizer step."""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Linear warm-up from 0 to the base rate over `warmup_steps`, then cosine decay to
    `min_lr_ratio * base` at `total_steps`.

    The rate is a closed-form function of the step count, so the state is a few numbers and
    a resumed run computes exactly the same rates as one that never stopped.
    """

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0, last_epoch: int = -1):
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(
                f"WarmupCosine needs total_steps >= 1 and warmup_steps >= 0, "
                f"got total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def get_lr(self):
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
