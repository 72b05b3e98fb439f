"""Your own model and your own dataset, for the recipe of the same name beside this file.

`python -m framework.recipe new NAME` copies the template recipe to recipes/NAME.yaml and this
file to recipes/NAME.py (the recipe's `_target_`s point at the copy): replace the classes with
yours. What the framework
asks of them:
- the model is any nn.Module; constructor arguments left null in the recipe (`input_shape`,
  `num_classes`) are filled in from the data;
- the dataset is map-style (`__len__`, `__getitem__(index) -> (input tensor, integer label)`);
  the framework batches, shuffles, splits, spreads it over workers and checkpoints the position.
  It says how many classes there are with a `classes` (or `num_classes`) attribute;
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

from framework.data import load_digits, sample_generator


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
