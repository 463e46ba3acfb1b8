"""A tiny seeded CNN shared by the allocator tests (3 quantizable layers, 28x28 inputs).

Importable as ``allocate_tiny:tiny_net`` so the CLI tests can pass it as ``--model``.
"""

from __future__ import annotations

import torch
from torch import nn


def tiny_net() -> nn.Module:
    """Conv(1->4, s2) - BN - ReLU - Conv(4->8, s2) - ReLU - pool - Linear(8->10), seed 0."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    return net.eval()
