"""Model zoo: small networks for 1x28x28 Fashion-MNIST inputs.

Adding a model is one function decorated with ``@register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MODELS: dict[str, Callable[[], nn.Module]] = {}
# Per-model training settings that differ from ``benchmark.train.TrainConfig``'s defaults.
TRAIN_RECIPES: dict[str, dict] = {}


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; every module's training flag restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def register(name: str, **train_recipe):
    """Register a model factory under ``name``, with its training settings (if not default)."""

    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        MODELS[name] = fn
        TRAIN_RECIPES[name] = dict(train_recipe)
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


class ConvBN(nn.Sequential):
    """Conv2d → BatchNorm2d (→ activation): the post-activation unit BN folding expects."""

    def __init__(
        self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ):  # fmt: skip
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class VGGSmall(nn.Module):
    """Plain VGG-style CNN: stacked 3x3 conv/BN/ReLU, max pooling, two FC layers."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += [ConvBN(cin, w), ConvBN(w, w), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin * 3 * 3, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 reduce, 3x3 grouped conv (cardinality), 1x1 expand."""

    def __init__(self, cin: int, cout: int, stride: int, width: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvBN(cin, width, 1),
            ConvBN(width, width, 3, stride, groups=groups),
            ConvBN(width, cout, 1, act=None),
        )
        self.shortcut = (
            ConvBN(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + short)


class ResNeXtSmall(nn.Module):
    """A small ResNeXt (Xie et al. 2017): grouped 3x3 convs, projection shortcuts."""

    # (out channels, bottleneck width, stride)
    SETTINGS = ((48, 32, 2), (96, 64, 2), (192, 64, 1))

    def __init__(self, num_classes: int = 10, groups: int = 8):
        super().__init__()
        self.stem = ConvBN(1, 24)
        blocks, cin = [], 24
        for cout, width, stride in self.SETTINGS:
            blocks.append(ResNeXtBlock(cin, cout, stride, width, groups))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of ``groups`` groups."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two branches (stride 2), then shuffle."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        split = stride == 1 and cin == cout  # else a downsampling unit: two branches
        branch_in = cin // 2 if split else cin
        self.branch = nn.Sequential(
            ConvBN(branch_in, half, 1),
            ConvBN(half, half, 3, stride, groups=half, act=None),
            ConvBN(half, half, 1),
        )
        self.proj = (
            nn.Sequential(ConvBN(cin, cin, 3, stride, groups=cin, act=None), ConvBN(cin, half, 1))
            if not split
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            keep, x = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch(x)], 1)
        else:
            out = torch.cat([self.proj(x), self.branch(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Small(nn.Module):
    """A small ShuffleNetV2 (Ma et al. 2018): channel split, shuffle, depthwise convs."""

    # (out channels, units, first stride)
    SETTINGS = ((48, 2, 1), (96, 3, 2), (192, 2, 1))

    def __init__(self, num_classes: int = 10, last: int = 256):
        super().__init__()
        self.stem = ConvBN(1, 24, stride=2)  # 28x28 -> 14x14, as ImageNet stems do
        units, cin = [], 24
        for cout, n, stride in self.SETTINGS:
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.units = nn.Sequential(*units)
        self.head = ConvBN(cin, last, 1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.units(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite: global pool, 1x1 reduce (SiLU), 1x1 expand, sigmoid gate."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class MBConv(nn.Module):
    """EfficientNet/MnasNet block: expand, kxk depthwise (SiLU), squeeze-excite, project."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBN(cin, hidden, 1, act=nn.SiLU))
        layers += [
            ConvBN(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcite(hidden, max(4, cin // 4)),
            ConvBN(hidden, cout, 1, act=None),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class EfficientNetSmall(nn.Module):
    """A small EfficientNet-B0/MnasNet-style net: MBConv with SE, SiLU, 3x3 and 5x5 depthwise."""

    # (expansion, out channels, repeats, first stride, kernel)
    SETTINGS = ((1, 16, 1, 1, 3), (4, 24, 2, 2, 3), (4, 40, 2, 1, 5), (4, 64, 1, 1, 5))

    def __init__(self, num_classes: int = 10, last: int = 256):
        super().__init__()
        layers: list[nn.Module] = [ConvBN(1, 16, stride=2, act=nn.SiLU)]  # 28 -> 14
        cin = 16
        for t, c, n, s, k in self.SETTINGS:
            for i in range(n):
                layers.append(MBConv(cin, c, k, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBN(cin, last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    """DenseNet-BC layer (conv-BN-ReLU order): 1x1 bottleneck, 3x3 conv, concatenated."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(ConvBN(cin, 4 * growth, 1), ConvBN(4 * growth, growth, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNetSmall(nn.Module):
    """A small DenseNet-BC (Huang et al. 2017): feature concatenation, 1x1 transitions."""

    def __init__(self, num_classes: int = 10, growth: int = 8, layers: tuple = (4, 4, 4)):
        super().__init__()
        mods: list[nn.Module] = [ConvBN(1, 2 * growth, stride=2)]  # 28x28 -> 14x14
        c = 2 * growth
        for i, n in enumerate(layers):
            for _ in range(n):
                mods.append(DenseLayer(c, growth))
                c += growth
            if i < len(layers) - 1:
                mods += [ConvBN(c, c // 2, 1), nn.AvgPool2d(2)]
                c //= 2
        self.features = nn.Sequential(*mods)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.Linear`` projections (quantizable, hookable)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Written out rather than F.scaled_dot_product_attention, whose fused CPU kernel has
        # no double backward (the Hessian input H needs one).
        weights = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
        out = weights @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: LayerNorm → attention, LayerNorm → GELU MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSmall(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021), no BatchNorm anywhere.

    The patch embedding is a convolutional stem (Xiao et al. 2021, "Early convolutions help
    transformers see better"): two stride-2 3x3 convs with a GELU between them and no
    normalization, so each of the 7x7 tokens sees a 4x4 patch plus its border. Learned
    position embeddings, pre-norm blocks (LayerNorm, GELU), mean-pooled tokens, linear head:
    every layer but the stem is an ``nn.Linear`` on a ``[N, tokens, dim]`` tensor. (The stem
    replaced a single 4x4 stride-4 conv, which reached 88.3 % in 12 epochs.)
    """

    def __init__(
        self, num_classes: int = 10, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128
    ):
        super().__init__()
        tokens = 7 * 7  # 28x28 images through two stride-2 convs
        self.embed = nn.Sequential(
            nn.Conv2d(1, dim // 2, 3, 2, 1), nn.GELU(), nn.Conv2d(dim // 2, dim, 3, 2, 1)
        )
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1))


@register("resnet20")
def resnet20() -> nn.Module:
    """CIFAR-style ResNet-20 (20 quantizable layers)."""
    return ResNet(20)


@register("mobilenetv2")
def mobilenetv2() -> nn.Module:
    """Small MobileNetV2-style net (inverted residuals, depthwise convs, ReLU6)."""
    return MobileNetV2Small()


@register("vgg", epochs=8)
def vgg() -> nn.Module:
    """Plain VGG-style CNN, no residuals (8 quantizable layers)."""
    return VGGSmall()


@register("resnext", epochs=8)
def resnext() -> nn.Module:
    """ResNeXt-style residual net with grouped 3x3 convolutions (cardinality 8)."""
    return ResNeXtSmall()


@register("shufflenetv2", epochs=8)
def shufflenetv2() -> nn.Module:
    """ShuffleNetV2-style net: channel split and shuffle, depthwise convs."""
    return ShuffleNetV2Small()


@register("efficientnet", epochs=8)
def efficientnet() -> nn.Module:
    """EfficientNet/MnasNet-style net: squeeze-excite, SiLU, 5x5 depthwise convs."""
    return EfficientNetSmall()


@register("densenet", epochs=8)
def densenet() -> nn.Module:
    """DenseNet-BC-style net: dense blocks joined by concatenation."""
    return DenseNetSmall()


@register("vit", epochs=15, optimizer="adamw", max_lr=2e-3, weight_decay=0.05, augment=False)
def vit() -> nn.Module:
    """Small Vision Transformer: conv-stem patch embedding, LayerNorm, GELU, no BatchNorm."""
    return ViTSmall()


# The zoo's fixed split (DESIGN.md, "Search set and held-out architectures"). A default
# campaign searches on the search set's benches and reports on the held-out models, which
# it never sees: MobileNetV2 (inverted residuals) and ShuffleNetV2 (channel split and
# shuffle), two depthwise families; the search set spans plain, residual, grouped,
# squeeze-excite, concatenating and attention networks.
HELDOUT_MODELS = ("mobilenetv2", "shufflenetv2")


def search_models() -> tuple[str, ...]:
    """The zoo's search set: every registered model not held out, in registration order."""
    return tuple(name for name in MODELS if name not in HELDOUT_MODELS)


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
