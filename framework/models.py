"""Built-in models. `input_shape` and `num_classes` come from the data (see build.build_model)."""

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Module):
    def __init__(self, input_shape, num_classes: int, hidden=(256, 256), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Same-padded 3x3 convolutions, one 2x2 max-pool, dropout, a linear classifier."""

    def __init__(self, input_shape, num_classes: int, channels=(16, 32), dropout: float = 0.25):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs image input [C, H, W], the data gives {list(input_shape)}")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            c = out
        layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout)]
        layers.append(nn.Linear(c * (h // 2) * (w // 2), num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
