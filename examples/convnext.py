"""A small ConvNeXt (Liu et al. 2022) written the usual PyTorch way, as a second example of
*your own model* (README, "Your own model"): 7x7 depthwise convs, LayerNorm over channels in
channels-last layout, pointwise ``nn.Linear`` layers on 4-d ``[N, H, W, C]`` tensors, GELU,
layer scale, patchify stem and strided downsampling. Not in EMQ's zoo; no campaign searched
on it.

From this folder::

    emq train --model convnext:make --out convnext.pt --epochs 8 --optimizer adamw \\
        --lr 2e-3 --weight-decay 0.05
    emq bench build --model convnext:make --checkpoint convnext.pt --configs 250 \\
        --out convnext.sqlite
    emq score --model convnext:make --checkpoint convnext.pt --bench convnext.sqlite
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # [N, H, W, C]
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a ``[N, C, H, W]`` tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims: tuple[int, int] = (32, 64), depths: tuple[int, int] = (2, 2),
                 num_classes: int = 10) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, dims[0], 2, stride=2), ChannelNorm(dims[0]))
        self.stage1 = nn.Sequential(*[Block(dims[0]) for _ in range(depths[0])])
        self.down = nn.Sequential(ChannelNorm(dims[0]), nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = nn.Sequential(*[Block(dims[1]) for _ in range(depths[1])])
        self.norm = nn.LayerNorm(dims[1], eps=1e-6)
        self.head = nn.Linear(dims[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


def make() -> nn.Module:
    """The example model with its seeded initial weights."""
    torch.manual_seed(0)
    return ConvNeXt()
