"""Small user architectures outside the zoo, built the way users write them.

Importable as ``user_models:NAME`` so the CLI tests can pass them as ``--model``: a
transformer from ``nn.TransformerEncoder`` (``nn.MultiheadAttention`` inside), and CNNs
whose BatchNorms do not follow their conv in module order (pre-activation blocks, modules
declared out of order). Seeded; BatchNorm statistics are randomized so that folding a
BatchNorm into the wrong conv changes the function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _seeded(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.data.uniform_(0.5, 2, generator=g)
            m.bias.data.uniform_(-0.5, 0.5, generator=g)
    return model.eval()


_TRAINED: dict[str, dict] = {}


def trained_mlp() -> nn.Module:
    """A small MLP trained for a moment on 2,000 training images (seeded; trained once per
    process, so every call returns the same weights), accurate enough that quantizing it
    changes its top-1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    if "mlp" not in _TRAINED:
        from benchmark.data import load_split

        x, y = load_split("train")
        x, y = x[:2000], y[:2000]
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(3):
            for i in range(0, len(x), 100):
                opt.zero_grad()
                F.cross_entropy(model(x[i : i + 100]), y[i : i + 100]).backward()
                opt.step()
        _TRAINED["mlp"] = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(_TRAINED["mlp"])
    return model.eval()


class TinyTransformer(nn.Module):
    """Patch embedding (7x7 patches), two ``nn.TransformerEncoderLayer``s, a linear head."""

    distinct = True  # perturb the cloned layers apart (a trained model's are)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(1, 16, 7, stride=7)
        self.pos = nn.Parameter(0.1 * torch.randn(1, 16, 16))
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        for p in self.encoder.parameters() if self.distinct else ():
            p.data.add_(0.05 * torch.randn_like(p))  # the clones start equal
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.encoder(tokens)).mean(1))


class TinyTransformerClones(TinyTransformer):
    """Its two encoder layers hold equal weights (as freshly cloned by TransformerEncoder)."""

    distinct = False


class SharedConvNet(nn.Module):
    """One conv module applied twice (weights shared between two places in the graph)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.block(x))
        x = F.relu(self.block(x))
        return self.fc(x.mean((2, 3)))


class PreActNet(nn.Module):
    """A pre-activation residual block: each BatchNorm normalizes the *input* of a conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        _seeded(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x + y, 1).flatten(1))


class OutOfOrderNet(nn.Module):
    """Conv-BN pairs whose BatchNorms are declared in the other pair's place."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        _seeded(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class WithUnusedHead(nn.Module):
    """A classifier that also defines a head its forward pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(784, 10)
        self.unused = nn.Linear(10, 10)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class SeqFirstTransformer(nn.Module):
    """``nn.TransformerEncoderLayer`` in its default sequence-first layout: its layers'
    outputs are ``[tokens, images, features]``, not image-first."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(28, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0)
        self.head = nn.Linear(16, 10)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0].transpose(0, 1)  # [28 rows, N, 28]
        return self.head(self.encoder(self.embed(rows)).mean(0))


class StandardizedConv(nn.Conv2d):
    """A weight-standardized conv (BiT, NFNets): a ``Conv2d`` with its own ``forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def standardized_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        StandardizedConv(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        StandardizedConv(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()  # fmt: skip


def _small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip


def weight_norm_net() -> nn.Module:
    """Weight norm as ``torch.nn.utils.parametrizations`` writes it (a parametrization)."""
    model = _small_cnn()
    for i in (0, 2):
        model[i] = nn.utils.parametrizations.weight_norm(model[i])
    return model.eval()


def old_weight_norm_net() -> nn.Module:
    """Weight norm the older way (``torch.nn.utils.weight_norm``: a forward pre-hook that
    recomputes ``weight`` before every call)."""
    model = _small_cnn()
    for i in (0, 2):
        model[i] = nn.utils.weight_norm(model[i])
    return model.eval()


class HandWrittenConv(nn.Module):
    """A conv written by hand: its own ``nn.Parameter`` and ``F.conv2d``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * (2 / (9 * cin)) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


def hand_written_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        HandWrittenConv(1, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()
