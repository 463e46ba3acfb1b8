"""Post-training quantization: the ground truth every proxy is judged against.

``QuantSim`` evaluates bit configurations of a model, built on the fake quantizers of
``benchmark.quantizers``:

* BatchNorm is folded into the preceding convolution (where that is the same function).
* Weights: per output channel, symmetric, MSE-clipped (``benchmark.quantizers``).
  ``Q_b(W)`` is computed once per (layer, bit) and reused.
* Weight rounding: nearest, or AdaRound (``benchmark.adaround``) learned once per
  (layer, bit) and stitched into any configuration; ``QuantSim.quantizer`` is the
  ``WeightQuantizer`` that ``benchmark.adaround.weight_quantizer`` chose.
* Activations (the input of each quantizable layer): per tensor, asymmetric, the range
  calibrated once (min/max over a calibration set of training images).

Also here: the layer table (parameters, MACs per image) and BOPs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adaround import AdaRounder, AdaRoundSettings, weight_quantizer
from benchmark.models import evaluating
from benchmark.quantizers import (
    CLIP_GRID,
    SUPPORTED_BITS,
    WeightQuantizer,
    act_qparams,
    fake_quant_per_tensor,
    quantizable_layers,
    state_fingerprint,
)

DEFAULT_BITS = (2, 3, 4, 8)


def fold_bn(model: nn.Module, check_input: torch.Tensor | None = None) -> nn.Module:
    """Return an eval-mode copy of ``model`` with each BatchNorm folded into its conv.

    A BatchNorm is a candidate when it directly follows a conv in module order and has as
    many features as the conv has output channels (true of the zoo models). Module order is
    not execution order: a pre-activation block normalizes a conv's output on one branch
    only, a model may declare its BatchNorms in any order. So when ``check_input`` is given,
    each fold is kept only if the model still computes the same function on it; a
    BatchNorm that cannot be folded stays a float operation after its quantized conv (per
    output channel symmetric weight quantization gives the same weights folded or not, up
    to the bias, which stays float either way).
    """
    folded = copy.deepcopy(model).eval()
    ref = None
    if check_input is not None:
        with evaluating(model), torch.no_grad():
            ref = model(check_input)
    modules = list(folded.named_modules())
    for (_, conv), (bn_name, bn) in zip(modules, modules[1:], strict=False):
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        if bn.num_features != conv.out_channels or not bn.track_running_stats:
            continue
        saved = (conv.weight.detach().clone(), conv.bias)
        with torch.no_grad():
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.affine else torch.ones_like(std)
            beta = bn.bias if bn.affine else torch.zeros_like(std)
            factor = gamma / std
            bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
            conv.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(beta + (bias - bn.running_mean) * factor)
        folded.set_submodule(bn_name, nn.Identity())
        if ref is not None and not _same_output(folded, check_input, ref):
            with torch.no_grad():  # not this conv's BatchNorm: undo, keep it as it is
                conv.weight.copy_(saved[0])
            conv.bias = saved[1]
            folded.set_submodule(bn_name, bn)
    return folded


def _same_output(model: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool(torch.allclose(model(x), ref, rtol=1e-3, atol=1e-3))


def check_bits(bits: Sequence[int], candidates: Sequence[int], what: str = "bit-width") -> None:
    """Raise a clear error when a bit-width is not among ``candidates``."""
    bad = sorted({int(b) for b in bits} - {int(c) for c in candidates})
    if bad:
        raise ValueError(f"{what} {bad} not among the candidates {sorted(candidates)}")


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer: name, kind, shapes, parameter count and MACs per image."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int
    macs: int

    def to_dict(self) -> dict:
        return {**self.__dict__, "weight_shape": list(self.weight_shape)}


def layer_table(model: nn.Module, input_shape: Sequence[int] = (1, 28, 28)) -> list[LayerInfo]:
    """Parameter counts and MACs per image of each quantizable layer (forward hooks; a
    layer called more than once counts every call). A layer the forward pass never calls
    is refused by name: it cannot be measured, scored or allocated."""
    layers = quantizable_layers(model)
    macs: dict[str, int] = {}

    def hook(name: str):
        def fn(mod: nn.Module, inputs, output: torch.Tensor) -> None:
            per_out = mod.weight[0].numel()  # MACs per output element (Cin/groups * kh * kw)
            # The probe is one image: every output element is that image's, whatever the
            # layout ([L, N, E] sequence-first, batch merged into rows [N * L, E], ...).
            macs[name] = macs.get(name, 0) + int(output.numel() * per_out)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    try:
        with evaluating(model), torch.no_grad():
            dtype = next(model.parameters()).dtype  # a float64 copy (proxy inputs) too
            model(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    unused = [n for n, _ in layers if n not in macs]
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise ValueError(
            f"layer {unused[0]!r}{more} is never called by the model's forward pass: EMQ "
            "cannot measure or score it; remove it from the model (or build it only where "
            "it is used)"
        )
    return [
        LayerInfo(
            name=n,
            kind=type(m).__name__,
            weight_shape=tuple(m.weight.shape),
            params=m.weight.numel() + (m.bias.numel() if m.bias is not None else 0),
            macs=macs[n],
        )
        for n, m in layers
    ]


def bops(macs: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]) -> float:
    """Bit operations ``sum_l MACs_l * w_l * a_l``."""
    return float(np.sum(np.asarray(macs, float) * np.asarray(w_bits) * np.asarray(a_bits)))


def relative_bops(macs: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]) -> float:
    """BOPs relative to W8A8 everywhere."""
    return bops(macs, w_bits, a_bits) / (64.0 * float(np.sum(macs)))


@dataclass
class QuantSim:
    """A BN-folded private copy of a model that evaluates bit configurations.

    ``Q_b(W)`` is computed lazily once per (layer, bit) and reused; activation ranges are
    calibrated once at construction. The user's model is never modified.
    """

    model: nn.Module
    calib: torch.Tensor
    clip_grid: int = CLIP_GRID
    rounding: str = "nearest"
    adaround: AdaRoundSettings | None = None
    adaround_images: torch.Tensor | None = None  # default: AdaRound's seeded training images
    folded: nn.Module = field(init=False)
    layers: list[tuple[str, nn.Module]] = field(init=False)
    fp_weights: list[torch.Tensor] = field(init=False)
    act_ranges: list[tuple[float, float]] = field(init=False)
    _wq: dict[tuple[int, int], torch.Tensor] = field(init=False, default_factory=dict)
    _act: list[tuple[float, int, int] | None] = field(init=False)
    quantizer: WeightQuantizer = field(init=False)

    def __post_init__(self) -> None:
        self.folded = fold_bn(self.model, self.calib[:8])
        self.layers = quantizable_layers(self.folded)
        self.quantizer = weight_quantizer(
            self.rounding, self.folded, self.clip_grid, self.adaround, self.adaround_images,
            fingerprint=state_fingerprint(self.model),
        )  # fmt: skip
        self.fp_weights = [m.weight.detach().clone() for _, m in self.layers]
        self._act = [None] * len(self.layers)
        self.act_ranges = self._calibrate()
        for i, (_, m) in enumerate(self.layers):
            m.register_forward_pre_hook(self._make_hook(i))

    @property
    def rounder(self) -> AdaRounder | None:
        """The AdaRound quantizer (its learned-rounding cache and key), else None."""
        return self.quantizer if isinstance(self.quantizer, AdaRounder) else None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _calibrate(self) -> list[tuple[float, float]]:
        ranges = [[float("inf"), float("-inf")] for _ in self.layers]

        def hook(i: int):
            def fn(mod, inputs):
                x = inputs[0]
                ranges[i][0] = min(ranges[i][0], float(x.min()))
                ranges[i][1] = max(ranges[i][1], float(x.max()))

            return fn

        handles = [m.register_forward_pre_hook(hook(i)) for i, (_, m) in enumerate(self.layers)]
        try:
            with torch.no_grad():
                for j in range(0, len(self.calib), 256):
                    self.folded(self.calib[j : j + 256])
        finally:
            for h in handles:
                h.remove()
        return [(lo, hi) for lo, hi in ranges]

    def _make_hook(self, i: int):
        def fn(mod, inputs):
            spec = self._act[i]
            if spec is None:
                return None
            scale, zp, bits = spec
            return (fake_quant_per_tensor(inputs[0], scale, zp, bits),)

        return fn

    def quantized_weight(self, layer: int, bits: int) -> torch.Tensor:
        """``Q_b(W)`` of a layer (nearest or AdaRound), computed on first use and cached."""
        key = (layer, int(bits))
        if key not in self._wq:
            self._wq[key] = self.quantizer.weight(layer, int(bits))
        return self._wq[key]

    def set_config(self, w_bits: Sequence[int | None], a_bits: Sequence[int | None]) -> None:
        """Quantize layer ``l`` at ``w_bits[l]`` / ``a_bits[l]`` (``None`` keeps it FP)."""
        if len(w_bits) != self.num_layers or len(a_bits) != self.num_layers:
            raise ValueError(
                f"config has {len(w_bits)} weight / {len(a_bits)} activation bit-widths "
                f"but the model has {self.num_layers} quantizable layers"
            )
        # Validate every bit-width first, so a rejected config leaves the state unchanged.
        for b in [*w_bits, *a_bits]:
            if b is not None and int(b) not in SUPPORTED_BITS:
                raise ValueError(f"bit-width {b} unsupported: expected 2..16 (or None for FP)")
        with torch.no_grad():
            for i, (_, m) in enumerate(self.layers):
                wb, ab = w_bits[i], a_bits[i]
                w = self.fp_weights[i] if wb is None else self.quantized_weight(i, wb)
                m.weight.copy_(w)
                self._act[i] = None if ab is None else (*act_qparams(*self.act_ranges[i], ab), ab)

    def set_fp(self) -> None:
        """Back to full precision everywhere."""
        self.set_config([None] * self.num_layers, [None] * self.num_layers)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, batch: int = 100) -> torch.Tensor:
        """Logits of the currently configured model (batched; 100 is fastest on CPU)."""
        return torch.cat([self.folded(x[i : i + batch]) for i in range(0, len(x), batch)])

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch: int = 100) -> tuple[float, float]:
        """Top-1 accuracy (%) and mean cross-entropy of the current configuration."""
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out = self.folded(x[i : i + batch])
                loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
                correct += (out.argmax(1) == y[i : i + batch]).sum().item()
        return 100.0 * correct / len(x), loss / len(x)
