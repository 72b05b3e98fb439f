"""The Task plug point: the loop never names a loss or a metric, the task does.

A task is any class that `task._target_` names, with these methods (subclassing `Task` is
optional; it gives the defaults below):

    metrics                         {name: "min" or "max"}, on the class: what an evaluation
                                    reports, and which way is better (checkpoint.monitor's mode
                                    follows it); the first is the main one, best.pt's by default
    loss(model, batch)              the training loss, a scalar tensor to backpropagate
    sums(model, batch)              {name: number}: sums over one evaluation batch (a loss
                                    summed over samples, correct predictions, a count, ...)
    metrics_from(sums)              {metric: value} from the sums added over a whole split
    check_arrays(inputs, targets)   arrays a source returned, checked and converted
    check_sample(sample, where)     one sample of a dataset (the first one), checked
    model_facts(splits)             {model key: value} the model may take from the data

A batch is what the loader gives: a tuple (inputs, target) or a dict of tensors, already on the
device. The sums of each batch are added in batch order over batches and ranks, then
`metrics_from` divides: one process and several ranks give the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from framework.config.errors import ConfigError

# The metric every run reports while training, whatever its task: the mean training loss.
TRAIN_LOSS = "train/loss"


class Task:
    """Defaults for the optional parts; `loss`, `sums`, `metrics_from` and `metrics` are the task's."""

    metrics: dict[str, str] = {}

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def sums(self, model: torch.nn.Module, batch) -> dict[str, float]:
        raise NotImplementedError

    def metrics_from(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def check_arrays(self, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Arrays [N, ...] and [N, ...] of the same length, as tensors."""
        try:
            inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"data.source must return two arrays (inputs, targets): {e}") from e
        if len(targets) == 0:
            raise ConfigError("data.source: the data set is empty")
        if inputs.dim() < 1 or len(inputs) != len(targets):
            raise ConfigError(f"data.source: {len(inputs)} inputs but {len(targets)} targets")
        return inputs, targets

    def check_sample(self, sample, where: str) -> None:
        """Nothing to check by default."""

    def model_facts(self, splits) -> dict:
        """Nothing the model takes from the data by default."""
        return {}


def to_device(batch, device: torch.device):
    """A batch moved whole: tensors in tuples, lists and dicts, at any depth; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def samples_in(batch) -> int:
    """How many samples a batch holds: the first dimension of its first tensor (a loss that is a
    mean over samples, or over tokens of equal-length windows, counts by it in accumulation)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        count = samples_in(value)
        if count:
            return count
    return 0


def pair(batch, task: str, where: str | None = None) -> tuple:
    """The (inputs, target) of a tuple batch; a dict batch needs a task of the user's own.
    `where`: the sample being checked, named in the refusal."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    kind = "a dict" if isinstance(batch, Mapping) else type(batch).__name__
    raise ConfigError(
        f"{where + ': ' if where else ''}task={task} takes samples (inputs, target); the data gives {kind}: "
        "write a task of your own (task._target_) that says what the model is called with"
    )


def main_metric(target: str) -> str:
    """val/ and the first metric the task class declares: what best.pt is chosen by unless
    checkpoint.monitor says otherwise."""
    from hydra.utils import get_class

    try:
        metrics = getattr(get_class(target), "metrics", None)
    except Exception as e:  # the run refuses the target by name before it trains (config/target_arguments.py)
        raise ConfigError(f"task._target_={target}: cannot import it ({e})") from e
    if not isinstance(metrics, Mapping) or not metrics:
        raise ConfigError(
            f"task._target_={target}: declare `metrics` on the class ({{name: 'min' or 'max'}}), "
            "or set checkpoint.monitor"
        )
    return f"val/{next(iter(metrics))}"


def metric_names(task) -> dict[str, str]:
    """Every metric a run of this task can report, with its direction: train/loss, and each
    declared metric under val/ and test/."""
    names = {TRAIN_LOSS: "min"}
    for split in ("val", "test"):
        names.update({f"{split}/{name}": direction for name, direction in task.metrics.items()})
    return names


# What a task may leave out, with Task's default in its place (a class that is no Task subclass too).
OPTIONAL_PARTS = ("check_arrays", "check_sample", "model_facts")


def with_defaults(task):
    """The task, with Task's default for each optional part it does not have."""
    for name in OPTIONAL_PARTS:
        if not callable(getattr(task, name, None)):
            setattr(task, name, getattr(Task, name).__get__(task))
    return task


def check_declared(task, target: str) -> None:
    """A task's metric directions are min or max, and it has the methods the loop calls."""
    missing = [name for name in ("loss", "sums", "metrics_from") if not callable(getattr(task, name, None))]
    metrics = getattr(task, "metrics", None)
    if missing:
        raise ConfigError(f"task._target_={target} has no {', '.join(missing)}: see framework/tasks/task.py")
    if not isinstance(metrics, Mapping) or not metrics:
        raise ConfigError(f"task._target_={target}: `metrics` must be a dict {{name: 'min' or 'max'}}")
    bad = {name: d for name, d in metrics.items() if d not in ("min", "max")}
    if bad:
        raise ConfigError(f"task._target_={target}: metric directions must be 'min' or 'max', got {bad}")
