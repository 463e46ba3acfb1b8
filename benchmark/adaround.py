"""AdaRound: learned rounding of the weights, one (layer, bit-width) at a time.

Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization" (2020), as used
by the practical mixed-precision paper (``../shared/papers/003_*``): each layer's weights are
rounded once per bit-width, independently of the other layers, so that any mixed-precision
configuration can stitch already-rounded weights together.

For a layer with weights ``W`` and the per-channel scale ``s`` of the nearest-rounding
quantizer (same MSE clipping), the soft-quantized weights are

    W~ = s * clamp(floor(W / s) + h(V), -qmax, qmax),
    h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)    (rectified sigmoid)

and ``V`` minimizes ``||f(x; W) - f(x; W~)||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)`` over
the layer's full-precision inputs ``x`` on calibration images (Adam), with ``beta`` annealed
from 20 to 2 (cosine) after a warm-up without the regularizer. The learned rounding is
``floor(W / s) + [V >= 0]``: every weight moves to one of its two neighbouring grid points.
If the hard rounding reconstructs the calibration outputs worse than nearest rounding, the
layer keeps nearest rounding (recorded as ``fallback``).

Results are cached per (layer, bit) in one ``.npz`` per content key (model weights,
calibration images, settings) and written after each layer, so an interrupted run resumes.
Shipped caches live next to the checkpoints (``benchmark/checkpoints/adaround-*.npz``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmark.cache import atomic_path
from benchmark.cache import cache_dir as cache_dir_of
from benchmark.data import calibration_batch
from benchmark.quantizers import (
    CLIP_GRID,
    NearestQuantizer,
    WeightQuantizer,
    layer_forward,
    mse_weight_scales,
    quantizable_layers,
    state_fingerprint,
    weight_qrange,
)

ZETA, GAMMA = 1.1, -0.1
SHIPPED = Path(__file__).resolve().parent / "checkpoints"
ROUNDINGS = ("nearest", "adaround")


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)}")
    return rounding


@dataclass(frozen=True)
class AdaRoundSettings:
    """AdaRound hyper-parameters.

    The paper uses 10k iterations over 1024 images (batch 32, Adam lr 1e-3, lambda 0.01,
    beta 20 -> 2, 20 % warm-up); on a CPU we keep the schedule and the regularizer and scale
    the iterations and images down, with a larger learning rate to match.
    """

    iterations: int = 1000
    lr: float = 1e-2
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_up: float = 0.2
    batch_size: int = 32
    images: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"AdaRound iterations must be >= 1, got {self.iterations}")
        if self.batch_size < 1:
            raise ValueError(f"AdaRound batch size must be >= 1, got {self.batch_size}")
        if self.images < self.batch_size:
            raise ValueError(
                f"AdaRound needs at least one batch of calibration images: {self.images} "
                f"images < batch size {self.batch_size}; raise --adaround-images or lower "
                "the batch size"
            )
        if not 0.0 <= self.warm_up < 1.0:
            raise ValueError(f"AdaRound warm-up must be in [0, 1), got {self.warm_up}")
        if self.lr <= 0 or self.reg_weight < 0:
            raise ValueError("AdaRound needs lr > 0 and reg_weight >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_v(w_over_s: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V)`` equal to the fractional part of ``W / s`` (AdaRound's init)."""
    rest = (w_over_s - torch.floor(w_over_s)).clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


def rounded_weight(w: torch.Tensor, scale: torch.Tensor, qmax: int, up: torch.Tensor):
    """``s * clamp(floor(W / s) + up, -qmax, qmax)`` with ``up`` in {0, 1} (or soft)."""
    s = scale.reshape(-1, *([1] * (w.ndim - 1)))
    return torch.clamp(torch.floor(w / s) + up, -qmax, qmax) * s


def recon_error(
    layer: nn.Module,
    x: torch.Tensor,
    w_q: torch.Tensor,
    batch: int = 256,
    target: torch.Tensor | None = None,
) -> float:
    """Mean over samples of the squared output error summed over channels (AIMET's loss).

    ``target``: the layer's full-precision outputs on ``x``, when already at hand.
    """
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            ref = (
                layer_forward(layer, xb, layer.weight) if target is None else target[i : i + batch]
            )
            total += float(((layer_forward(layer, xb, w_q) - ref) ** 2).sum())
    return total / len(x)


def learn_rounding(
    layer: nn.Module,
    x: torch.Tensor,
    scale: torch.Tensor,
    qmax: int,
    settings: AdaRoundSettings,
) -> tuple[torch.Tensor, dict]:
    """Learn the rounding of ``layer.weight`` on its inputs ``x``: (up mask, stats).

    ``up`` is a bool tensor shaped like the weight: True rounds ``W / s`` up, False down.
    Adam on ``V``: reconstruction loss, plus the annealed regularizer after the warm-up.
    """
    start = time.perf_counter()
    w = layer.weight.detach()
    s = scale.reshape(-1, *([1] * (w.ndim - 1)))
    floor = torch.floor(w / s)
    nearest_up = torch.round(w / s) - floor  # what round-to-nearest does, as an up mask
    v = nn.Parameter(init_v(w / s))
    opt = torch.optim.Adam([v], lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        target = torch.cat([layer_forward(layer, x[i : i + 256], w) for i in range(0, len(x), 256)])
    warm = int(settings.warm_up * settings.iterations)
    with torch.enable_grad():  # callers may sit in no_grad (e.g. QuantSim.set_config)
        for it in range(settings.iterations):
            idx = torch.randint(0, len(x), (settings.batch_size,), generator=gen)
            h = rectified_sigmoid(v)
            out = layer_forward(layer, x[idx], torch.clamp(floor + h, -qmax, qmax) * s)
            err = (out - target[idx]) ** 2
            loss = err.sum(1).mean() if out.ndim > 1 else err.mean()
            if it >= warm:
                rel = (it - warm) / max(1, settings.iterations - warm)
                beta = settings.beta_end + 0.5 * (settings.beta_start - settings.beta_end) * (
                    1 + math.cos(rel * math.pi)
                )
                loss = loss + settings.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    up = (v.detach() >= 0).float()
    err_ada = recon_error(layer, x, rounded_weight(w, scale, qmax, up), target=target)
    err_near = recon_error(layer, x, rounded_weight(w, scale, qmax, nearest_up), target=target)
    fallback = err_ada > err_near
    if fallback:
        up = nearest_up
    stats = {
        "calib_error": min(err_ada, err_near),
        "nearest_error": err_near,
        "fallback": bool(fallback),
        "flipped": float((up != nearest_up).float().mean()),
        "seconds": time.perf_counter() - start,
    }
    return up.bool(), stats


def settings_key(fingerprint: str, calib: torch.Tensor, clip_grid: int, settings) -> str:
    """Content key of an AdaRound cache: model weights, images, quantizer and settings."""
    h = hashlib.sha256()
    h.update(fingerprint.encode())
    h.update(calib.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({"clip_grid": clip_grid, **settings.to_dict()}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return cache_dir_of("adaround")


class RoundingCache:
    """Learned rounding masks of one (model, calibration images, settings), per (layer, bit).

    Reads a shipped file when one matches the key; new entries go to ``$EMQ_CACHE``,
    written atomically after each (layer, bit).
    """

    def __init__(self, key: str, shapes: Sequence[tuple[int, ...]] | None = None):
        """``shapes``: the weight shape of each layer, which every stored mask must have."""
        self.key = key
        self.shapes = None if shapes is None else [tuple(sh) for sh in shapes]
        self.path = cache_dir() / f"adaround-{key}.npz"
        self.masks: dict[tuple[int, int], torch.Tensor] = {}
        self.stats: dict[tuple[int, int], dict] = {}
        for path in (SHIPPED / self.path.name, self.path):
            if path.is_file():
                self._read(path)

    def _read(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta["key"] != self.key:
                    raise ValueError(f"key {meta['key']} != {self.key}")
                if not isinstance(meta["entries"], list):
                    raise ValueError("'entries' is not a list")
                for entry in meta["entries"]:
                    layer, bits, shape = entry["layer"], entry["bits"], tuple(entry["shape"])
                    if self.shapes is not None and (
                        not isinstance(layer, int)
                        or not 0 <= layer < len(self.shapes)
                        or shape != self.shapes[layer]
                    ):
                        raise ValueError(f"a mask of shape {list(shape)} for layer {layer}")
                    packed = z[f"l{layer}_b{bits}"]
                    flat = np.unpackbits(packed, count=int(np.prod(shape))).astype(bool)
                    self.masks[(layer, bits)] = torch.from_numpy(flat.reshape(shape))
                    self.stats[(layer, bits)] = entry["stats"]
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(
                f"AdaRound cache {path} is corrupt ({exc}); delete it and rerun to recompute"
            ) from exc

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries, arrays = [], {}
        for (layer, bits), mask in sorted(self.masks.items()):
            entries.append(
                {"layer": layer, "bits": bits, "shape": list(mask.shape),
                 "stats": self.stats[(layer, bits)]}
            )  # fmt: skip
            arrays[f"l{layer}_b{bits}"] = np.packbits(mask.numpy().reshape(-1))
        meta = json.dumps({"key": self.key, "entries": entries})
        with atomic_path(self.path, ".npz") as tmp:
            np.savez_compressed(tmp, meta=np.array(meta), **arrays)

    def __contains__(self, item: tuple[int, int]) -> bool:
        return item in self.masks


def layer_inputs(model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor):
    """Full-precision inputs of each of ``layers`` on ``x`` (forward pre-hooks)."""
    store: list[list[torch.Tensor]] = [[] for _ in layers]

    def hook(i: int):
        def fn(mod, inputs):
            store[i].append(inputs[0].detach().clone())

        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            for j in range(0, len(x), 256):
                model(x[j : j + 256])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(chunks) for chunks in store]


def calibration_images(settings: AdaRoundSettings) -> torch.Tensor:
    """AdaRound's calibration images: ``settings.images`` seeded training images."""
    return calibration_batch(settings.images, settings.seed)[0]


class AdaRounder(WeightQuantizer):
    """AdaRounded weights of a BN-folded model, per (layer, bit), learned once and cached.

    The AdaRound ``WeightQuantizer``: ``key`` is the content key of its rounding cache.

    Keeps a private full-precision copy of ``folded`` (a ``QuantSim`` rewrites its own
    weights in place), so the layer inputs are always the full-precision ones.
    """

    def __init__(
        self,
        folded: nn.Module,
        clip_grid: int,
        settings: AdaRoundSettings | None = None,
        images: torch.Tensor | None = None,
        fingerprint: str | None = None,
    ):
        """``fingerprint``: content hash of the model *before* BN folding (its checkpoint
        bytes), which keys the cache the same on every CPU; folded weights can differ in
        their last bits between CPUs. Default: the folded model's own fingerprint."""
        self.settings = settings or AdaRoundSettings()
        self.clip_grid = clip_grid
        self.model = copy.deepcopy(folded).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers = [m for _, m in quantizable_layers(self.model)]
        # Masks are always learned in float32, the simulator's precision: a float64 model
        # (the proxy inputs' precision) applies the masks a float32 twin learns, so both
        # learn, and share through the cache, the same masks.
        if self.layers[0].weight.dtype == torch.float32:
            self.learner, self.learner_layers = self.model, self.layers
        else:
            self.learner = copy.deepcopy(self.model).float()
            self.learner_layers = [m for _, m in quantizable_layers(self.learner)]
        self.images = calibration_images(self.settings) if images is None else images
        if len(self.images) < self.settings.batch_size:
            raise ValueError(
                f"AdaRound needs at least {self.settings.batch_size} calibration images, "
                f"got {len(self.images)}"
            )
        fingerprint = f"unfolded:{fingerprint}" if fingerprint else state_fingerprint(self.model)
        self.key = settings_key(fingerprint, self.images, clip_grid, self.settings)
        self.cache = RoundingCache(self.key, [layer.weight.shape for layer in self.layers])
        self._inputs: list[torch.Tensor] | None = None

    def _layer_inputs(self) -> list[torch.Tensor]:
        if self._inputs is None:
            self._inputs = layer_inputs(self.learner, self.learner_layers, self.images)
        return self._inputs

    def scale(self, layer: int, bits: int) -> torch.Tensor:
        """MSE-chosen scales of the float32 weights the masks are learned on and applied to."""
        return mse_weight_scales(self.learner_layers[layer].weight, int(bits), self.clip_grid)

    def mask(self, layer: int, bits: int) -> torch.Tensor:
        """Round-up mask of ``layer`` at ``bits`` (learned and saved on first use)."""
        key = (int(layer), int(bits))
        if key not in self.cache:
            x = self._layer_inputs()[layer]
            layer_, qrange = self.learner_layers[layer], weight_qrange(key[1])
            up, stats = learn_rounding(layer_, x, self.scale(*key), qrange, self.settings)
            self.cache.masks[key], self.cache.stats[key] = up, stats
            self.cache.save()
        return self.cache.masks[key]

    def weight(self, layer: int, bits: int) -> torch.Tensor:
        """The AdaRounded fake-quantized weight of ``layer`` at ``bits`` (in the model's dtype).

        Computed on the float32 twin the mask was learned on: a mask says which way each
        weight leaves ``floor(w / s)``, and in float64 that floor can be another integer.
        """
        w = self.learner_layers[layer].weight.detach()
        up = self.mask(layer, bits).to(w.dtype)
        wq = rounded_weight(w, self.scale(layer, bits), weight_qrange(int(bits)), up)
        return wq.to(self.layers[layer].weight.dtype)

    def missing(self, bits: Sequence[int]) -> list[tuple[int, int]]:
        return [
            (i, int(b)) for i in range(len(self.layers)) for b in bits
            if (i, int(b)) not in self.cache
        ]  # fmt: skip

    def prepare(self, bits: Sequence[int], progress: bool = False) -> dict:
        """Learn every missing (layer, bit) of ``bits``; returns timing figures."""
        todo = self.missing(bits)
        start = time.perf_counter()
        for layer, b in tqdm(todo, desc="adaround", unit="layer-bit", disable=not progress):
            self.mask(layer, b)
        return {"learned": len(todo), "seconds": time.perf_counter() - start}


def weight_quantizer(
    rounding: str,
    folded: nn.Module,
    clip_grid: int = CLIP_GRID,
    settings: AdaRoundSettings | None = None,
    images: torch.Tensor | None = None,
    fingerprint: str | None = None,
) -> WeightQuantizer:
    """The ``Q_b(W)`` of ``folded``'s quantizable layers for ``rounding``.

    The one place choosing between nearest rounding and AdaRound. ``settings``, ``images``
    and ``fingerprint`` only concern AdaRound (see ``AdaRounder``) and are ignored for
    nearest rounding. Raises ``ValueError`` for an unknown ``rounding``.
    """
    if check_rounding(rounding) == "adaround":
        return AdaRounder(folded, clip_grid, settings, images, fingerprint=fingerprint)
    return NearestQuantizer.of(folded, clip_grid)
