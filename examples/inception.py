"""A small GoogLeNet-style Inception net (Szegedy et al. 2015) written the usual PyTorch way,
as a third example of *your own model* (README, "Your own model"): every block runs four
branches side by side on the same input (1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max-pool then
1x1) and concatenates them, so each layer's error reaches the output through siblings it
never feeds. Not in EMQ's zoo; no campaign searched on it, and nothing in EMQ was chosen by
looking at it.

From this folder::

    emq train --model inception:make --out inception.pt --epochs 5
    emq bench build --model inception:make --checkpoint inception.pt --configs 250 \\
        --out inception.sqlite
    emq score --model inception:make --checkpoint inception.pt --bench inception.sqlite
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    def __init__(self, cin: int, c1: int, c3: tuple[int, int], c5: tuple[int, int], cp: int):
        super().__init__()
        self.branch1 = conv_bn(cin, c1, 1)
        self.branch3 = nn.Sequential(conv_bn(cin, c3[0], 1), conv_bn(c3[0], c3[1], 3))
        self.branch5 = nn.Sequential(conv_bn(cin, c5[0], 1), conv_bn(c5[0], c5[1], 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch3, self.branch5, self.branch_pool)
        return torch.cat([b(x) for b in branches], 1)


class SmallInception(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, 32, 3)
        self.block1 = Inception(32, 16, (16, 24), (8, 12), 12)  # 64 channels, 28x28
        self.block2 = Inception(64, 32, (32, 48), (16, 24), 24)  # 128, 14x14
        self.block3 = Inception(128, 48, (48, 72), (24, 36), 36)  # 192, 7x7
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(192, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.stem(x))
        x = self.block2(self.pool(x))
        x = self.block3(self.pool(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make() -> nn.Module:
    return SmallInception()
