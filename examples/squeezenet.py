"""A small SqueezeNet (Iandola et al. 2016, v1.1 layout) written the usual PyTorch way, as a
fifth example of *your own model* (README, "Your own model"): Fire modules — a 1x1
"squeeze" convolution feeding a 1x1 and a 3x3 "expand" convolution side by side, whose
outputs are concatenated — no BatchNorm anywhere (every convolution keeps its bias, nothing
to fold), and no Linear layer: the classifier is a 1x1 convolution to the ten classes
followed by global average pooling. Not in EMQ's zoo; no campaign searched on it, and it
was added after the default proxy and its combination were chosen, to check them.

From this folder::

    emq train --model squeezenet:make --out squeezenet.pt --epochs 12 --optimizer adamw \\
        --lr 2e-3 --weight-decay 0.01
    emq bench build --model squeezenet:make --checkpoint squeezenet.pt --configs 250 \\
        --out squeezenet.sqlite
    emq score --model squeezenet:make --checkpoint squeezenet.pt --bench squeezenet.sqlite
"""

from __future__ import annotations

import torch
from torch import nn


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1(s)), self.relu(self.expand3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14x14
            Fire(32, 16, 32),
            Fire(64, 16, 32),
            nn.MaxPool2d(2),  # 7x7
            Fire(64, 24, 48),
            Fire(96, 24, 48),
            Fire(96, 32, 64),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(128, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.features(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def make() -> nn.Module:
    return SqueezeNet()
