"""Your own task, model and dataset, for the recipe of the same name beside this file.

`python -m framework.recipe new NAME` copies the template recipe to recipes/NAME.yaml and this
file to recipes/NAME.py (the recipe's `_target_`s point at the copy): replace the classes with
yours. As written they classify the 8x8 digits. What the framework asks of them:
- the task (`task._target_`) says what a batch means: the loss to train on, the sums of an
  evaluation batch, the metrics made from them and which way each is better (docs/tasks.md);
- the model is any nn.Module; constructor arguments left null in the recipe (`input_shape`,
  `num_classes`) are filled in from the data by the task's `model_facts`;
- the dataset is map-style (`__len__`, `__getitem__(index)` -> a sample: here (image, label); a
  tuple or a dict of tensors, whatever your task reads); the framework batches, shuffles,
  splits, spreads it over workers and checkpoints the position;
- random transforms draw from `sample_generator()`: keyed by (seed, epoch, index), so the data
  at any step is the same with any number of workers, and a resumed run sees the same samples.
  Drawing from torch's, NumPy's or Python's global generators instead breaks that (README).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from framework.config.errors import ConfigError
from framework.data import load_digits, sample_generator
from framework.tasks.task import Task


class DigitClassification(Task):
    """What a batch means: cross-entropy to train on; loss and accuracy to evaluate. Change the
    parts for your experiment (a batch is what your dataset's samples collate to, on the device:
    here (images [B, 1, 8, 8], labels [B]); a dict of tensors if the samples are dicts)."""

    # What an evaluation reports, each with the way that is better ("min" or "max"): the run logs
    # them as val/NAME and test/NAME. The first is the main one: best.pt keeps the best val/loss
    # unless checkpoint.monitor names another (checkpoint.monitor=val/acc).
    metrics = {"loss": "min", "acc": "max"}

    def loss(self, model, batch):
        """The training loss of one batch: a scalar tensor, backpropagated. Draw no random numbers
        here beyond what the model draws (dropout): exact resume relies on it."""
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    def sums(self, model, batch):
        """Sums over one evaluation batch (numbers, or CPU tensors of float64 to add elementwise),
        never means: they are added over all batches in order (and over ranks), then
        `metrics_from` divides, so the metrics are exact whatever the batch size. A new metric
        adds its sum here and its value in metrics_from."""
        images, labels = batch
        logits = model(images).float()
        return {
            "loss": F.cross_entropy(logits, labels, reduction="sum").item(),
            "correct": (logits.argmax(dim=1) == labels).sum().item(),
            "count": len(labels),
        }

    def metrics_from(self, sums):
        """The metrics of a whole split, named as in `metrics`, from its sums."""
        return {"loss": sums["loss"] / sums["count"], "acc": sums["correct"] / sums["count"]}

    def check_sample(self, sample, where):
        """Called once, before training, with the first training sample: refuse data the task
        cannot train on in one line that says what is wrong (`where` names the sample)."""
        image, label = sample
        if not (isinstance(image, torch.Tensor) and image.is_floating_point() and image.dim() == 3):
            raise ConfigError(f"{where}: the image must be a float tensor [C, H, W], got {image!r:.60}")
        label = torch.as_tensor(label)
        if label.dim() != 0 or label.is_floating_point() or label < 0:
            raise ConfigError(f"{where}: the label must be a class index 0, 1, ..., got {label!r}")

    def model_facts(self, splits):
        """The model's arguments that the recipe leaves null, read from the data: `splits.first`
        is the first training sample, `splits.whole` the dataset. Only the keys the recipe's
        model section declares and leaves null are used."""
        image, _ = splits.first
        return {"input_shape": list(image.shape), "num_classes": len(splits.whole.classes)}


class DigitImages(Dataset):
    """The 8x8 handwritten digits as a map-style dataset, each image rotated by a random angle
    and, with probability `erase_prob`, a random 2x2 patch erased."""

    classes = list(range(10))

    def __init__(self, max_rotation: float = 10.0, erase_prob: float = 0.5):
        self.images, self.labels = load_digits()  # [N, 1, 8, 8] in [0, 1], [N]
        self.max_rotation, self.erase_prob = max_rotation, erase_prob

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        g = sample_generator()  # this sample's own random stream
        angle = math.radians(self.max_rotation) * (2 * torch.rand((), generator=g).item() - 1)
        image = rotate(image, angle)
        if torch.rand((), generator=g).item() < self.erase_prob:
            top, left = torch.randint(0, 7, (2,), generator=g).tolist()
            image = image.clone()
            image[:, top : top + 2, left : left + 2] = 0.0
        return image, int(self.labels[index])


def rotate(image: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a [C, H, W] image about its centre (bilinear, zero fill)."""
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).unsqueeze(0)
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image.unsqueeze(0), grid, align_corners=False).squeeze(0)


class ResidualConvNet(nn.Module):
    """A small residual CNN with batch norm: a stem, `blocks` residual blocks, global pooling."""

    def __init__(self, input_shape, num_classes: int, width: int = 32, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
            )
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))
