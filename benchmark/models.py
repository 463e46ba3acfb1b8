"""Model zoo: small networks for 1x28x28 Fashion-MNIST inputs.

Adding a model is one function decorated with ``@register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MODELS: dict[str, Callable[[], nn.Module]] = {}


def register(name: str):
    """Register a model factory under ``name``."""

    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        MODELS[name] = fn
        return fn

    return deco


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block with the parameter-free (option A) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = x[:, :, :: self.stride, :: self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2) for one input channel."""

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Small(nn.Module):
    """A small MobileNetV2-style network for 28x28 inputs."""

    # (expansion, out channels, repeats, first stride)
    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 1), (4, 64, 2, 2), (4, 96, 1, 1))

    def __init__(self, num_classes: int = 10, last: int = 256):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(1, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
        ]
        cin = 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("resnet20")
def resnet20() -> nn.Module:
    """CIFAR-style ResNet-20 (20 quantizable layers)."""
    return ResNet(20)


@register("mobilenetv2")
def mobilenetv2() -> nn.Module:
    """Small MobileNetV2-style net (inverted residuals, depthwise convs, ReLU6)."""
    return MobileNetV2Small()


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a zoo model, else raise a clear error."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    return name


def checkpoint_path(name: str) -> Path:
    """Path of the shipped checkpoint of a zoo model."""
    return CHECKPOINT_DIR / f"{check_model_name(name)}.pt"


def load_state(model: nn.Module, path: Path | str) -> nn.Module:
    """Load a state_dict safely (``weights_only=True``); clear error when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"checkpoint {path} cannot be read as a state_dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} does not hold a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])
        raise ValueError(f"checkpoint {path} does not fit the model: {first}") from None
    return model


def load_model(name: str, checkpoint: Path | str | None = None) -> nn.Module:
    """Build a zoo model and load its shipped (or given) checkpoint, in eval mode."""
    model = MODELS[check_model_name(name)]()
    load_state(model, checkpoint or checkpoint_path(name))
    return model.eval()
