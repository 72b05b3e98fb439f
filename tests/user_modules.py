"""A user's own classes, importable by tests through `_target_` (tests/ is put on PYTHONPATH)."""

import math
import os

import torch
from hydra.experimental.callback import Callback
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from framework.data.sources import load_digits


class TinyNet(nn.Module):
    """input_shape and num_classes are declared null in its config and filled from the data."""

    def __init__(self, input_shape, num_classes: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, num_classes)
        )

    def forward(self, x):
        return self.net(x)


class NoisyMLP(nn.Module):
    """A user's model whose training draws from every global random stream: dropout (torch),
    input jitter from NumPy's global RNG, and a layer skipped at random by Python's `random`.
    Exact resume must restore all three for this model to end with the same bits."""

    def __init__(self, input_shape, num_classes: int, width: int = 64, dropout: float = 0.2):
        super().__init__()
        self.flatten = nn.Flatten()
        self.inp = nn.Linear(math.prod(input_shape), width)
        self.hidden = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        import random

        import numpy as np
        import torch

        x = self.flatten(x)
        if self.training:
            jitter = np.random.standard_normal(x.shape).astype(np.float32)
            x = x + 0.05 * torch.from_numpy(jitter)
        h = self.drop(torch.relu(self.inp(x)))
        if not self.training or random.random() < 0.8:
            h = self.drop(torch.relu(self.hidden(h)))
        return self.out(h)


class UnpoolNet(nn.Module):
    """Uses max_unpool2d, which has no deterministic implementation (not even on the CPU):
    under determinism=strict torch refuses to run it."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        import torch.nn.functional as F

        pooled, indices = F.max_pool2d(x, 2, return_indices=True)
        return self.linear(F.max_unpool2d(pooled, indices, 2, output_size=x.shape[-2:]).flatten(1))


class UnseededNoiseNet(nn.Module):
    """A source of nondeterminism injected on purpose: noise from the operating system's entropy,
    which no seed controls. Its runs never reproduce."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        import os

        if self.training:
            x = x + int.from_bytes(os.urandom(2), "little") * 1e-6
        return self.linear(x.flatten(1))


class GlobalRandomDigits(Dataset):
    """The template recipe's digits, with a transform that draws from torch's global generator
    instead of framework.data.sample_generator(): what the README warns against."""

    classes = list(range(10))

    def __init__(self, max_rotation: float = 0.0, erase_prob: float = 0.0):
        self.images, self.labels = load_digits()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index] + 0.1 * torch.randn(self.images[index].shape), int(self.labels[index])


def digit_splits(keys=("train", "val")):
    """A source that returns datasets as given: the first 1,000 digits to train on, the rest to validate."""
    x, y = load_digits()
    parts = {"train": TensorDataset(x[:1000], y[:1000]), "val": TensorDataset(x[1000:], y[1000:])}
    return {k: parts[k] for k in keys}


class FailsOnOneRank(TinyNet):
    """Raises in its forward pass after `after` calls on rank `rank` (RANK from torchrun). Takes
    (and ignores) the arguments of another model's config, to stand in for it."""

    def __init__(self, input_shape, num_classes: int, rank: int = 1, after: int = 5, **other_models_arguments):
        super().__init__(input_shape, num_classes)
        self.fail_here, self.after, self.calls = int(os.environ.get("RANK", "0")) == rank, after, 0

    def forward(self, x):
        self.calls += 1
        if self.fail_here and self.calls > self.after:
            raise RuntimeError(f"this rank failed on purpose after {self.after} steps")
        return super().forward(x)


class EditsWeightsInForward(TinyNet):
    """Changes its first layer's bias in place in every forward pass in training (as some
    weight-normalising tricks do): saving in the background cannot snapshot such a model while it
    trains. Takes (and ignores) the arguments of another model's config."""

    def __init__(self, input_shape, num_classes: int, **other_models_arguments):
        super().__init__(input_shape, num_classes)

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.net[1].bias.mul_(0.999)
        return super().forward(x)


class PauseBeforeLaterJobs(Callback):
    """A Hydra callback for tests: before every job but the first, says so (a file `waiting` at
    the sweep's root) and waits until the test says `go` (a file beside it), so that a signal
    lands while no job trains."""

    def on_job_start(self, config, **kwargs) -> None:
        import time
        from pathlib import Path

        if config.hydra.job.num == 0:
            return
        sweep = Path(config.hydra.sweep.dir)
        (sweep / "waiting").touch()
        deadline = time.time() + 60
        while not (sweep / "go").exists() and time.time() < deadline:
            time.sleep(0.01)


# ---- a user's own task on dict samples: two inputs and a label, a metric better higher ----
class DictDigits(Dataset):
    """The digits as dict samples {"image": [1, 8, 8], "rows": [8], "label": int64}: the image with
    keyed noise (sample_generator) and its row sums, a second input the model takes."""

    classes = list(range(10))

    def __init__(self, noise: float = 0.1):
        self.images, self.labels = load_digits()
        self.noise = noise

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from framework.data import sample_generator

        image = self.images[index] + self.noise * torch.randn(self.images[index].shape, generator=sample_generator())
        return {"image": image, "rows": image.sum(dim=(0, 2)), "label": self.labels[index]}


class TwoInputNet(nn.Module):
    """Takes (image, rows); with dropout, so that exact resume must restore the torch stream.
    Its sizes have names of its own: DictClassification.model_facts fills them."""

    def __init__(self, image_shape, num_rows: int, num_classes: int, width: int = 32, dropout: float = 0.1):
        super().__init__()
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), width), nn.ReLU())
        self.rows = nn.Linear(num_rows, width)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, image, rows):
        return self.out(self.image(image) + self.rows(rows))


class DictClassification:
    """A user's task (no base class) on DictDigits' batches: cross-entropy; metrics loss, macro F1
    and top-2 accuracy, the last two better higher. F1's per-class counts are float64 tensors that
    evaluation adds elementwise."""

    metrics = {"loss": "min", "f1": "max", "top2": "max"}

    def loss(self, model, batch):
        import torch.nn.functional as F

        return F.cross_entropy(model(batch["image"], batch["rows"]), batch["label"])

    def sums(self, model, batch):
        import torch.nn.functional as F

        logits, labels = model(batch["image"], batch["rows"]).float(), batch["label"]
        classes = logits.shape[1]
        predicted = F.one_hot(logits.argmax(dim=1), classes).double().cpu()
        actual = F.one_hot(labels, classes).double().cpu()
        return {
            "loss": F.cross_entropy(logits, labels, reduction="sum").item(),
            "top2": (logits.topk(2, dim=1).indices == labels[:, None]).any(dim=1).sum().item(),
            "true_positives": (predicted * actual).sum(0),
            "predicted": predicted.sum(0),
            "actual": actual.sum(0),
            "count": len(labels),
        }

    def metrics_from(self, sums):
        f1 = 2 * sums["true_positives"] / (sums["predicted"] + sums["actual"]).clamp(min=1)
        return {"loss": sums["loss"] / sums["count"], "f1": f1.mean().item(), "top2": sums["top2"] / sums["count"]}

    def check_sample(self, sample, where):
        from framework.config.errors import ConfigError

        if not isinstance(sample, dict) or set(sample) != {"image", "rows", "label"}:
            raise ConfigError(f"{where}: a sample must be a dict of image, rows and label")

    def model_facts(self, splits):
        first = splits.first
        return {
            "image_shape": list(first["image"].shape),
            "num_rows": len(first["rows"]),
            "num_classes": len(splits.whole.classes),
        }


class MinimalTask:
    """A user's task with only the parts the loop cannot do without (no base class): the checks
    and the model's facts are Task's defaults."""

    metrics = {"loss": "min"}

    def loss(self, model, batch):
        import torch.nn.functional as F

        x, y = batch
        return F.cross_entropy(model(x), y)

    def sums(self, model, batch):
        import torch.nn.functional as F

        x, y = batch
        return {"loss": F.cross_entropy(model(x), y, reduction="sum").item(), "count": len(y)}

    def metrics_from(self, sums):
        return {"loss": sums["loss"] / sums["count"]}


class StepTally:
    """A stateful callback (engine/callbacks.py): counts optimizer steps and keeps a running sum of
    numbers drawn from its own generator, so its state has a plain value and a tensor to restore."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.steps = 0
        self.total = torch.zeros(3)

    def on_step_end(self, run) -> None:
        self.steps += 1
        self.total += self.scale * torch.rand(3, generator=run.generator())

    def state_dict(self) -> dict:
        return {"steps": self.steps, "total": self.total.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.total = state["steps"], state["total"].clone()


class CallRecorder:
    """A callback that writes down each call it gets (engine/callbacks.py): the point and what the
    run's view showed then, one JSON line a call in RUN_DIR/callback_calls.jsonl."""

    def _write(self, point: str, run) -> None:
        import json

        seen = {
            "point": point,
            "step": run.step,
            "epoch": run.epoch,
            "metrics": dict(run.metrics),
            "model": type(run.model).__name__,
            "run_dir": str(run.run_dir),
            "is_main": run.is_main,
            "saved": list(run.saved),
        }
        with open(run.run_dir / "callback_calls.jsonl", "a") as calls:
            calls.write(json.dumps(seen) + "\n")

    def on_fit_start(self, run) -> None:
        self._write("on_fit_start", run)

    def on_step_end(self, run) -> None:
        self._write("on_step_end", run)

    def on_validation_end(self, run) -> None:
        self._write("on_validation_end", run)

    def on_save(self, run) -> None:
        self._write("on_save", run)

    def on_fit_end(self, run) -> None:
        self._write("on_fit_end", run)


class RandomDraws:
    """A stateful callback that draws a number from its own generator at every step: its state is
    the steps it saw and the numbers it drew, in order."""

    def __init__(self):
        self.steps: list[int] = []
        self.draws = torch.zeros(0)

    def on_step_end(self, run) -> None:
        self.steps.append(run.step)
        self.draws = torch.cat([self.draws, torch.rand(1, generator=run.generator())])

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "draws": self.draws.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.draws = list(state["steps"]), state["draws"].clone()


class FailsAtStep:
    """A callback that raises at one optimizer step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run) -> None:
        if run.step == self.step:
            raise ValueError(f"step {run.step} is not one I like")


class SeenAt:
    """A plain Python object: torch.load(weights_only=True) does not read it back."""

    def __init__(self, step: int):
        self.step = step


class KeepsAnObject:
    """A callback whose state holds an object that a weights_only checkpoint cannot hold."""

    def __init__(self):
        self.last = SeenAt(0)

    def on_step_end(self, run) -> None:
        self.last = SeenAt(run.step)

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state["last"]


class SignalsMidAccumulation:
    """Classification's loss; at its k-th call (k from the environment variable SIGTERM_AT_LOSS_CALL,
    unset: never) it sends SIGTERM to its own process, so that the signal lands among an optimizer
    step's micro-batches at a known one. A resumed run, a new process without it, never signals."""

    metrics = {"loss": "min", "acc": "max"}

    def __init__(self):
        from framework.tasks.classification import Classification

        self.plain = Classification()
        self.calls, self.signal_at = 0, int(os.environ.get("SIGTERM_AT_LOSS_CALL", "0"))

    def loss(self, model, batch):
        import signal

        self.calls += 1
        if self.calls == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.plain.loss(model, batch)

    def sums(self, model, batch):
        return self.plain.sums(model, batch)

    def metrics_from(self, sums):
        return self.plain.metrics_from(sums)

    def model_facts(self, splits):
        return self.plain.model_facts(splits)
