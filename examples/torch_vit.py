"""A Vision Transformer written the way most PyTorch users write one, as an example of
*your own model* (README, "Your own model"): ``nn.TransformerEncoder`` with pre-norm
``nn.TransformerEncoderLayer`` blocks (``nn.MultiheadAttention`` inside), GELU, a class
token, 4x4 patches. It is not in EMQ's zoo and no campaign has searched on it.

From this folder::

    emq train --model torch_vit:make --out torch_vit.pt --epochs 10 --optimizer adamw \\
        --lr 2e-3 --weight-decay 0.05
    emq bench build --model torch_vit:make --checkpoint torch_vit.pt --configs 250 \\
        --out torch_vit.sqlite
    emq score --model torch_vit:make --checkpoint torch_vit.pt --bench torch_vit.sqlite
"""

from __future__ import annotations

import torch
from torch import nn


class TorchViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128,
                 patch: int = 4, num_classes: int = 10) -> None:  # fmt: skip
        super().__init__()
        tokens = (28 // patch) ** 2
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


def make() -> nn.Module:
    """The example model with its seeded initial weights."""
    torch.manual_seed(0)
    return TorchViT()
