"""A small MLP-Mixer (Tolstikhin et al. 2021) written the usual PyTorch way, as a fourth
example of *your own model* (README, "Your own model"): a patch embedding, then blocks that
mix the 7x7 tokens with an MLP applied across tokens (``nn.Linear`` on the transposed
``[N, C, T]`` tensor) and the channels with an MLP across channels, each after a LayerNorm
and added back; GELU, no convolutions after the stem, no attention, no BatchNorm. Not in
EMQ's zoo; no campaign searched on it, and it was added after the default proxy's
combination was chosen (README, "The joint combination"), to check that choice.

From this folder::

    emq train --model mixer:make --out mixer.pt --epochs 10 --optimizer adamw \\
        --lr 2e-3 --weight-decay 0.05 --no-augment
    emq bench build --model mixer:make --checkpoint mixer.pt --configs 250 --out mixer.sqlite
    emq score --model mixer:make --checkpoint mixer.pt --bench mixer.sqlite
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_fc1 = nn.Linear(tokens, token_hidden)
        self.token_fc2 = nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_fc1 = nn.Linear(dim, channel_hidden)
        self.channel_fc2 = nn.Linear(channel_hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, T, C]
        y = self.norm1(x).transpose(1, 2)  # [N, C, T]: mix across tokens
        x = x + self.token_fc2(F.gelu(self.token_fc1(y))).transpose(1, 2)
        return x + self.channel_fc2(F.gelu(self.channel_fc1(self.norm2(x))))


class Mixer(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, patch: int = 4, num_classes: int = 10,
                 token_hidden: int = 64, channel_hidden: int = 128) -> None:  # fmt: skip
        super().__init__()
        tokens = (28 // patch) ** 2
        self.stem = nn.Conv2d(1, dim, patch, stride=patch)
        self.blocks = nn.Sequential(
            *[MixerBlock(tokens, dim, token_hidden, channel_hidden) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # [N, T, C]
        return self.head(self.norm(self.blocks(x)).mean(1))


def make() -> nn.Module:
    """The example model with its seeded initial weights."""
    torch.manual_seed(0)
    return Mixer()
