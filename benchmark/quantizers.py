"""Fake quantizers: which layers are quantized, and how a weight or an activation is.

* Weights: per output channel, symmetric (narrow range ``[-(2^(b-1)-1), 2^(b-1)-1]``), the
  clipping range of each channel chosen by MSE over a grid of clip ratios, vectorized over
  channels and ratios (``quantize_weight`` is ``Q_b(W)`` with nearest rounding).
* Activations: per tensor, asymmetric (``act_qparams``, ``fake_quant_per_tensor``).
* ``WeightQuantizer``: the one interface through which the simulator and the proxy inputs
  get ``Q_b(W)`` of a model's quantizable layers; ``NearestQuantizer`` is its nearest-
  rounding implementation (AdaRound's is ``benchmark.adaround.AdaRounder``, and
  ``benchmark.adaround.weight_quantizer`` is the one place choosing between them).

The bottom of the quantization stack: ``benchmark.adaround`` (learned rounding) and
``benchmark.ptq`` (the simulator) are built on it; it imports neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
from torch import nn

CLIP_GRID = 100  # number of clip ratios in (0, 1] searched per channel
SUPPORTED_BITS = range(2, 17)


def unsupported_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, type)`` of every torch layer with a weight matrix that is not quantized here.

    Only ``Conv2d`` and ``Linear`` are quantized; a ``Conv1d``, a transposed conv, an
    ``Embedding`` or an ``nn.MultiheadAttention`` (whose projections are raw parameters,
    not called ``Linear`` modules) would silently stay full precision, so they are refused.
    Parameters of the user's own modules (e.g. a position embedding) are not layers.
    """
    bad = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) or not type(m).__module__.startswith("torch.nn"):
            continue
        if any(p.ndim >= 2 for p in m.parameters(recurse=False)) or isinstance(
            m, nn.MultiheadAttention
        ):
            bad.append((name or "<model>", type(m).__name__))
    return bad


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``Conv2d`` and ``Linear`` of ``model``, in module order.

    Raises a clear error naming the first layer the PTQ cannot handle (never skipped).
    """
    bad = unsupported_layers(model)
    if bad:
        name, kind = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(
            f"layer {name!r} ({kind}){more} cannot be quantized: EMQ quantizes Conv2d and "
            "Linear layers only; rewrite it with those (nn.MultiheadAttention: "
            "benchmark.convert.make_quantizable does it)"
        )
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no Conv2d or Linear layer to quantize")
    return layers


def has_own_forward(layer: nn.Module) -> bool:
    """Whether a ``Conv2d`` / ``Linear`` (subclass) computes its output in its own
    ``forward`` (weight standardization, a scaled weight, ...), not as the plain linear map
    of its weight."""
    base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    return type(layer).forward is not base.forward


def layer_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s output on ``x`` with ``weight`` in place of its own (conv or linear); a
    layer with its own forward (``has_own_forward``) is run through it with ``weight``."""
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"only Conv2d and Linear layers are quantized, not {type(layer).__name__}")
    if has_own_forward(layer):
        return torch.func.functional_call(layer, {"weight": weight}, (x,))
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, layer.bias)
    return torch.nn.functional.linear(x, weight, layer.bias)


def weight_qrange(bits: int) -> int:
    """Largest integer level of the narrow symmetric range at ``bits``."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bit-width {bits} unsupported: expected 2..16")
    return 2 ** (bits - 1) - 1


def fake_quant_per_channel(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization (zero point 0, levels ``±qmax``).

    Matches ``torch.fake_quantize_per_channel_affine(w, scale, 0, 0, -qmax, qmax)``.
    """
    s = scale.reshape(-1, *([1] * (w.ndim - 1)))
    return torch.clamp(torch.round(w * (1.0 / s)), -qmax, qmax) * s


def mse_weight_scales(w: torch.Tensor, bits: int, grid: int = CLIP_GRID) -> torch.Tensor:
    """Per-channel scales whose clip ratio minimizes the quantization MSE.

    All channels and all ``grid`` clip ratios are evaluated at once (no Python loop).
    """
    qmax = weight_qrange(bits)
    flat = w.detach().reshape(w.shape[0], -1)
    maxabs = flat.abs().amax(1).clamp_min(1e-12)  # [C]
    ratios = torch.linspace(1.0 / grid, 1.0, grid, dtype=flat.dtype)  # [R]
    scales = ratios[:, None] * maxabs[None, :] / qmax  # [R, C]
    q = torch.clamp(torch.round(flat[None] * (1.0 / scales[..., None])), -qmax, qmax)
    err = ((q * scales[..., None] - flat[None]) ** 2).sum(-1)  # [R, C]
    best = err.argmin(0)  # first (smallest) ratio on ties: deterministic
    return scales.gather(0, best[None]).squeeze(0)


def quantize_weight(w: torch.Tensor, bits: int, grid: int = CLIP_GRID) -> torch.Tensor:
    """``Q_b(W)``: MSE-clipped per-channel symmetric fake quantization of ``w``."""
    return fake_quant_per_channel(w.detach(), mse_weight_scales(w, bits, grid), weight_qrange(bits))


def act_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point of the asymmetric per-tensor range ``[lo, hi]`` at ``bits``."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"activation bit-width {bits} unsupported: expected 2..16")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2**bits - 1
    scale = max((hi - lo) / qmax, 1e-8)
    zero_point = int(np.clip(round(-lo / scale), 0, qmax))
    return float(np.float32(scale)), zero_point


def fake_quant_per_tensor(x: torch.Tensor, scale: float, zero_point: int, bits: int):
    """Asymmetric per-tensor fake quantization to ``[0, 2^bits - 1]``.

    Matches ``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 2^bits-1)``.
    """
    inv = 1.0 / torch.tensor(scale, dtype=torch.float32)
    q = x * inv  # a new tensor: the in-place steps below never touch x (fewer allocations)
    q.round_().add_(zero_point).clamp_(0, 2**bits - 1).sub_(zero_point)
    return q.mul_(torch.tensor(scale, dtype=torch.float32))


def state_fingerprint(model: nn.Module) -> str:
    """Content hash of a model's state_dict (names, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class WeightQuantizer:
    """``Q_b(W)`` of the quantizable layers of one (BN-folded) model, per (layer, bit).

    ``weight(layer, bits)`` is the quantized-dequantized weight of quantizable layer
    ``layer``; ``key`` is a content identity string for caches; ``prepare(bits)`` does any
    up-front work (learning) for those bit-widths and returns timing figures.
    """

    key: str

    def weight(self, layer: int, bits: int) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, bits: Sequence[int], progress: bool = False) -> dict:
        raise NotImplementedError


class NearestQuantizer(WeightQuantizer):
    """Nearest rounding: ``quantize_weight`` of each layer's full-precision weight.

    Keeps private copies of the weights, so a simulator that rewrites its layers' weights
    in place never changes what is quantized.
    """

    def __init__(self, weights: Sequence[torch.Tensor], clip_grid: int = CLIP_GRID):
        self.weights = [w.detach().clone() for w in weights]
        self.clip_grid = clip_grid

    @classmethod
    def of(cls, model: nn.Module, clip_grid: int = CLIP_GRID) -> NearestQuantizer:
        """The nearest quantizer of ``model``'s quantizable layers (as they are now)."""
        return cls([m.weight for _, m in quantizable_layers(model)], clip_grid)

    def weight(self, layer: int, bits: int) -> torch.Tensor:
        return quantize_weight(self.weights[layer], int(bits), self.clip_grid)

    def prepare(self, bits: Sequence[int], progress: bool = False) -> dict:
        """Nothing to learn: nearest rounding is computed on demand."""
        return {"learned": 0, "seconds": 0.0}

    @cached_property
    def key(self) -> str:
        """Content hash of the weights and the clip grid."""
        h = hashlib.sha256(f"nearest:{self.clip_grid}".encode())
        for w in self.weights:
            h.update(str(tuple(w.shape)).encode())
            h.update(w.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
