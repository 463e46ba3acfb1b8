"""Proxy inputs (the terminals of a proxy graph), computed per quantizable layer.

Every input is a tensor whose axis 0 is the bit axis: size ``B`` (one slice per bit
candidate) for the quantization-aware inputs ``Wq``, ``E``, ``D``, ``b`` and ``Dz``, size 1
for the others (they broadcast). They are computed in float64 and rounded to float32, then served
from the on-disk cache as float64 memory maps (``load_inputs``), the precision score tables
are computed in. Computing in float64 makes them the same on every CPU: in float32 the
kernels PyTorch and oneDNN pick for the CPU's instruction set (AVX2, AVX-512, SSE, one
thread or several) sum in different orders, so up to 96 % of the values differed in their
last bits between CPUs and a campaign's path with them; float64 differences are ~1e-16
relative, which the rounding to float32 absorbs (``python -m emq.perf.input_isa``). All
computation happens on a BN-folded private float64 copy of the model, so the caller's model,
its gradients, dtype and train/eval mode are never touched.
"""

from __future__ import annotations

import copy
import hashlib
import json
import mmap
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.adaround import AdaRoundSettings, check_rounding, weight_quantizer
from benchmark.cache import atomic_path
from benchmark.cache import cache_dir as cache_dir_of
from benchmark.ptq import (
    CLIP_GRID,
    DEFAULT_BITS,
    LayerInfo,
    fold_bn,
    layer_table,
    quantizable_layers,
    state_fingerprint,
)
from benchmark.quantizers import has_own_forward, layer_forward

CACHE_VERSION = 3  # 3: computed in float64; 2: computed in float32, mapped float64; 1: .npz
INPUT_DOCS = {
    "A": "layer output activation on the calibration batch",
    "W": "BN-folded weight",
    "G": "gradient of the loss w.r.t. the weight",
    "H": "Hutchinson estimate of the Hessian diagonal w.r.t. the weight",
    "V": "data-free virtual gradient (|theta| linearised net, input of ones, R = sum of output)",
    "Ga": "gradient of the loss w.r.t. the layer output",
    "Wq": "quantized weight Q_b(W)",
    "E": "weight quantization error W - Q_b(W)",
    "D": "change of the layer output when only its weights are quantized at b",
    "b": "the bit-width itself",
    "Dz": "change of the logits when only this layer's weights are quantized at b, to first "
    "order, in the softmax's Fisher metric (its squared norm is the output KL to second order)",
}
INPUT_NAMES = tuple(INPUT_DOCS)
BIT_DEPENDENT = frozenset({"Wq", "E", "D", "b", "Dz"})
# Inputs whose axis 1 is the calibration sample (the others' axis 1 is the output channel).
PER_SAMPLE = frozenset({"A", "Ga", "D", "Dz"})
NEEDS_LABELS = frozenset({"G", "H", "Ga"})


@dataclass(frozen=True)
class InputSettings:
    """Settings that change the computed inputs (all part of the cache key)."""

    candidates: tuple[int, ...] = DEFAULT_BITS
    hutchinson_samples: int = 16
    hutchinson_seed: int = 0
    clip_grid: int = CLIP_GRID
    names: tuple[str, ...] = INPUT_NAMES
    rounding: str = "nearest"
    adaround: AdaRoundSettings | None = None

    def __post_init__(self) -> None:
        check_rounding(self.rounding)
        if self.rounding == "adaround" and self.adaround is None:
            object.__setattr__(self, "adaround", AdaRoundSettings())
        if self.rounding == "nearest" and self.adaround is not None:
            raise ValueError("AdaRound settings given with rounding='nearest'")
        unknown = [n for n in self.names if n not in INPUT_DOCS]
        if unknown:
            raise ValueError(f"unknown proxy input(s) {unknown}: expected some of {INPUT_NAMES}")
        if not self.candidates or any(not 2 <= b <= 16 for b in self.candidates):
            raise ValueError(f"bit candidates must be in 2..16, got {self.candidates}")
        if self.hutchinson_samples < 1:
            raise ValueError(f"hutchinson_samples must be >= 1, got {self.hutchinson_samples}")


@dataclass(eq=False)
class LayerInputs:
    """All proxy inputs of a model: ``tensors[l][name]`` with a leading bit axis."""

    layers: list[LayerInfo]
    candidates: tuple[int, ...]
    tensors: list[dict[str, torch.Tensor]]
    key: str = ""
    path: Path | None = field(default=None, compare=False)
    from_cache: bool = field(default=False, compare=False)
    # The file mapping the tensors live in (``load_inputs``), or None for tensors in memory.
    mapping: mmap.mmap | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "mapping": None}  # pickled tensors carry their values

    def release(self) -> None:
        """Drop the mapped pages from this process (its resident memory); nothing else.

        The pages stay in the OS page cache, so the next read of a tensor costs page faults,
        not disk reads (5 % more time for a six-model campaign that releases every model
        after each genome, measured; resident memory 3.7 -> 1.5 GiB). The mapping is
        copy-on-write and never written, so the values are unchanged. A no-op for tensors in
        memory and where the OS has no ``MADV_DONTNEED``.
        """
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if self.mapping is not None and advice is not None and not self.mapping.closed:
            self.mapping.madvise(advice)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """Shape of every input of every layer (for static shape inference)."""
        return [{k: tuple(v.shape) for k, v in t.items()} for t in self.tensors]

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for t in self.tensors for v in t.values())

    def subset(self, layers: Sequence[int]) -> LayerInputs:
        """The inputs of a few layers only (e.g. the numeric probe)."""
        return LayerInputs(
            [self.layers[i] for i in layers], self.candidates, [self.tensors[i] for i in layers]
        )


def _check_batch(x: torch.Tensor, y: torch.Tensor | None, need_labels: bool) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError("calibration batch must be a float tensor [N, ...] with N >= 1")
    if need_labels:
        if y is None:
            raise ValueError("labels are required to compute G, H and Ga (pass y)")
        if y.ndim != 1 or len(y) != len(x) or y.dtype != torch.long:
            raise ValueError(
                f"labels must be an int64 tensor of shape [{len(x)}], got "
                f"{tuple(y.shape)} {y.dtype}"
            )


def _linear_op(module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's linear map applied with another weight (no bias)."""
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, w, None)  # honours padding_mode
    return F.linear(x, w)


def _output_change(module: nn.Module, x: torch.Tensor, q: torch.Tensor, w: torch.Tensor):
    """``D``: the change of the layer's output when its weight ``w`` becomes ``q``.

    A ``Conv2d`` / ``Linear`` subclass with its own ``forward`` (weight standardization,
    a scaled weight, ...) is run as it is, with each weight: its output is not the plain
    linear map of the weight."""
    if not has_own_forward(module):
        return _linear_op(module, x, q - w)
    return layer_forward(module, x, q) - layer_forward(module, x, w)


def _virtual_gradient(folded: nn.Module, input_shape: tuple[int, ...]) -> list[torch.Tensor]:
    """dR/dW of the |theta| network with activations removed, input of ones, R = sum(out).

    Computed in float64 (products of |theta| over depth overflow float32 easily); a model
    that cannot run in float64 (see ``compute_inputs``) gets it in float32.
    """
    try:
        return _virtual_gradient_in(folded, input_shape, torch.float64)
    except RuntimeError as exc:
        if not _dtype_error(exc):
            raise
        return _virtual_gradient_in(folded, input_shape, torch.float32)


def _virtual_gradient_in(
    folded: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype
) -> list[torch.Tensor]:
    net = copy.deepcopy(folded).to(dtype)
    for name, mod in list(net.named_modules()):
        if isinstance(mod, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Sigmoid)):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, nn.Identity())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()  # private copy: the in-place abs never reaches the caller's model
    weights = [m.weight for _, m in quantizable_layers(net)]
    out = net(torch.ones(1, *input_shape, dtype=dtype))
    grads = torch.autograd.grad(out.sum(), weights)
    return [g.float() for g in grads]


def compute_inputs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    settings: InputSettings | None = None,
    dtype: torch.dtype = torch.float64,
    dz_x: torch.Tensor | None = None,
) -> LayerInputs:
    """Compute the proxy inputs of every quantizable layer of ``model`` on batch ``(x, y)``.

    ``dz_x``: a larger batch whose first ``len(x)`` images are ``x``, on which ``Dz`` alone
    is computed (``len(x)`` images at a time; each image's ``Dz`` depends on that image
    only): ``Dz`` holds one row per image, ``len(x)`` of them per layer and bit-width, not
    ``C x H x W`` values, so it can read more images than the other inputs for little memory
    (a campaign's ``--dz-images``).

    Everything (BN folding, the forward and backward passes, the Hessian estimate and
    ``Q_b(W)`` from the ``WeightQuantizer`` that ``benchmark.adaround.weight_quantizer``
    builds for ``settings.rounding``) runs in float64 on private copies; each input is
    rounded to float32 at the end, so the values do not depend on the CPU's kernels (see the
    module docstring). AdaRound's learned rounding masks come from its on-disk cache, shared
    with the simulator that measures the bench. ``dtype=torch.float32`` computes them the way
    EMQ did before (cache version 2), for comparison (``emq.perf.input_isa --float32``).
    """
    settings = settings or InputSettings()
    names = set(settings.names)
    _check_batch(x, y, bool(names & NEEDS_LABELS))
    quantizable_layers(model)  # clear error for a model with no Conv2d/Linear
    extra = _dz_chunks(x, dz_x) if "Dz" in names else []
    if dtype != torch.float64:
        return _compute_with_dz(model, x, y, settings, dtype, extra)
    try:
        return _compute_with_dz(model, x, y, settings, torch.float64, extra)
    except RuntimeError as exc:
        if not _dtype_error(exc):
            raise
        # A model whose forward mixes in float32 tensors of its own (a constant made in
        # forward and fed to a matmul) cannot run in float64; such a model gets its inputs
        # in float32, which are exact on this CPU but may differ in their last bits on others.
        warnings.warn(
            f"{type(model).__name__} does not run in float64 ({str(exc).splitlines()[0]}); "
            "its proxy inputs are computed in float32 and may differ slightly between CPUs",
            RuntimeWarning,
            stacklevel=2,
        )
        return _compute_with_dz(model, x, y, settings, torch.float32, extra)


def _dz_chunks(x: torch.Tensor, dz_x: torch.Tensor | None) -> list[torch.Tensor]:
    """The images of ``dz_x`` after ``x`` in chunks of ``len(x)``; a clear error when
    ``dz_x`` does not start with ``x``."""
    if dz_x is None or len(dz_x) <= len(x):
        return []
    if tuple(dz_x.shape[1:]) != tuple(x.shape[1:]) or not torch.equal(dz_x[: len(x)], x):
        raise ValueError(
            f"the Dz batch ({len(dz_x)} images) must start with the calibration batch's "
            f"{len(x)} images (the same seed's Fashion-MNIST calibration batch)"
        )
    rest = dz_x[len(x) :]
    return [rest[i : i + len(x)] for i in range(0, len(rest), len(x))]


def _compute_with_dz(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    settings: InputSettings,
    dtype: torch.dtype,
    chunks: list[torch.Tensor],
) -> LayerInputs:
    """The inputs of ``(x, y)``, with ``Dz`` of the ``chunks`` appended along the sample
    axis. The chunks come first: their ``Dz`` is small, while the batch's inputs (every
    activation) would otherwise be held through each chunk's forward and backward passes
    (the peak memory of a cold campaign)."""
    only = replace(settings, names=("Dz",))
    with reuse_quantized_weights():  # Q_b(W) once for every chunk and the batch
        more = [_compute(model, chunk, None, only, dtype) for chunk in chunks]  # Dz alone
        inputs = _compute(model, x, y, settings, dtype)
    if more:
        for i, t in enumerate(inputs.tensors):
            t["Dz"] = torch.cat([t["Dz"], *(m.tensors[i]["Dz"] for m in more)], 1)
    return inputs


# Q_b(W) does not depend on the batch: inside ``reuse_quantized_weights()`` (the chunks of
# one calibration batch, ``emq.scoring.score_table``) the weights are quantized once, not once
# per chunk (the MSE clip search was a fifth of a ResNet-20 chunk's inputs). ``None`` outside
# it, so no process keeps a model's quantized weights alive after its scoring.
_QUANTIZED: dict[tuple, list[torch.Tensor]] | None = None


@contextmanager
def reuse_quantized_weights() -> Iterator[None]:
    """Within the block, ``compute_inputs`` reuses the last model's ``Q_b(W)`` while the
    quantizer's content key (weights, rounding and its settings, bits, dtype) is the same."""
    global _QUANTIZED
    outer = _QUANTIZED is not None
    if not outer:
        _QUANTIZED = {}
    try:
        yield
    finally:
        if not outer:
            _QUANTIZED = None


def _quantized_weights(
    model: nn.Module,
    folded: nn.Module,
    settings: InputSettings,
    bits: tuple[int, ...],
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """``Q_b(W)`` of every quantizable layer of ``folded``, ``[B, ...]`` per layer, in
    ``dtype`` (shared inside ``reuse_quantized_weights``: never changed in place)."""
    quantizer = weight_quantizer(
        settings.rounding, folded, settings.clip_grid, settings.adaround,
        fingerprint=state_fingerprint(model),
    )  # fmt: skip
    key = (type(quantizer).__name__, quantizer.key, bits, dtype)
    memo = _QUANTIZED
    if memo is not None and key in memo:
        return memo[key]
    layers = range(len(quantizable_layers(folded)))
    quantized = [torch.stack([quantizer.weight(i, b).to(dtype) for b in bits]) for i in layers]
    if memo is not None:
        memo.clear()  # one model at a time
        memo[key] = quantized
    return quantized


def _dtype_error(exc: RuntimeError) -> bool:
    """A float32/float64 mismatch inside a model's forward (not a shape error)."""
    msg = str(exc)
    return any(k in msg for k in ("dtype", "scalar type", "Double", "Float"))


def _compute(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    settings: InputSettings,
    dtype: torch.dtype,
) -> LayerInputs:
    names = set(settings.names)
    x = x.to(dtype)
    try:
        folded = fold_bn(copy.deepcopy(model).to(dtype), x[:2])
    except RuntimeError as exc:
        if dtype == torch.float64 and _dtype_error(exc):
            raise
        msg = str(exc).splitlines()[0]
        raise ValueError(f"batch of shape {tuple(x.shape)} does not fit the model: {msg}") from exc
    layers = quantizable_layers(folded)
    info = layer_table(folded, tuple(x.shape[1:]))
    bits = tuple(int(b) for b in settings.candidates)
    params = [m.weight for _, m in layers]
    for p in folded.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)

    logits, ins, outs = recorded_forward(folded, x)

    grads_w: Sequence[torch.Tensor | None] = [None] * len(layers)
    grads_a: Sequence[torch.Tensor | None] = [None] * len(layers)
    hess: list[torch.Tensor | None] = [None] * len(layers)
    if names & NEEDS_LABELS:
        loss = F.cross_entropy(logits, y)
        want_h = "H" in names
        grads = torch.autograd.grad(loss, params + outs, create_graph=want_h)
        grads_w, grads_a = grads[: len(layers)], grads[len(layers) :]
        if want_h:
            gen = torch.Generator().manual_seed(settings.hutchinson_seed)
            acc = [torch.zeros_like(p) for p in params]
            for s in range(settings.hutchinson_samples):
                zs = [torch.randint(0, 2, p.shape, generator=gen).to(dtype) * 2 - 1 for p in params]
                last = s == settings.hutchinson_samples - 1
                hz = torch.autograd.grad(grads_w, params, grad_outputs=zs, retain_graph=not last)
                for a, z, h in zip(acc, zs, hz, strict=True):
                    a.add_(z * h)
            hess = [a / settings.hutchinson_samples for a in acc]
        del grads, loss
    del logits
    # The outputs and both gradients are final: rounded to float32 at once, so their float64
    # copies are not all alive while D is computed from the float64 layer inputs (the peak
    # memory of the computation; the values are the same either way).
    outs = [o.detach().float() if "A" in names else None for o in outs]
    grads_w = [g if g is None else g.detach().float() for g in grads_w]
    grads_a = [g if g is None else g.detach().float() for g in grads_a]
    virtual = _virtual_gradient(folded, tuple(x.shape[1:])) if "V" in names else None

    if names & {"Wq", "E", "D", "Dz"}:
        quantized = _quantized_weights(model, folded, settings, bits, dtype)
    tensors = []
    with torch.no_grad():
        for i, (_, mod) in enumerate(layers):
            w = mod.weight.detach()
            t: dict[str, torch.Tensor] = {}
            if "W" in names:
                t["W"] = w.clone().unsqueeze(0)
            if "A" in names:
                t["A"] = outs[i].unsqueeze(0)
            if "G" in names:
                t["G"] = grads_w[i].unsqueeze(0)
            if "Ga" in names:
                t["Ga"] = grads_a[i].unsqueeze(0)
            if "H" in names:
                t["H"] = hess[i].detach().clone().unsqueeze(0)
            if "V" in names:
                t["V"] = virtual[i].unsqueeze(0)
            if names & {"Wq", "E", "D", "Dz"}:
                wq = quantized[i]
                if "Wq" in names:
                    t["Wq"] = wq.clone()
                if "E" in names:
                    t["E"] = w.unsqueeze(0) - wq
                if names & {"D", "Dz"}:
                    t["D"] = torch.stack([_output_change(mod, ins[i], q, w).float() for q in wq])
            if "b" in names:
                t["b"] = torch.tensor(bits, dtype=torch.float64)
            # Rounded to float32 here, layer by layer (float64 noise ends at the rounding).
            tensors.append({k: v.float() for k, v in t.items()})
            outs[i] = ins[i] = grads_a[i] = None
    if "Dz" in names:
        changes, p = logit_changes(folded, x, [t["D"] for t in tensors])
        for t, dz in zip(tensors, changes, strict=True):
            t["Dz"] = _fisher_whitened(dz, p)
            if "D" not in names:
                del t["D"]
    return LayerInputs(info, bits, tensors)


def recorded_forward(folded: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """The logits of ``folded`` on ``x``, every quantizable layer's input (detached) and
    output (still in the autograd graph), in layer order."""
    layers = quantizable_layers(folded)
    outs: list[torch.Tensor | None] = [None] * len(layers)
    ins: list[torch.Tensor | None] = [None] * len(layers)

    names = [n for n, _ in layers]

    def hook(i: int):
        def fn(mod, inputs, output):
            if output.ndim == 0 or output.shape[0] != len(x):
                raise ValueError(
                    f"layer {names[i]!r} returns a tensor of shape {list(output.shape)} on "
                    f"{len(x)} images: its axis 0 is not the image axis (a sequence-first "
                    "[L, N, E] layout, e.g. nn.TransformerEncoderLayer without "
                    "batch_first=True, or images merged into rows); EMQ's proxy inputs are "
                    "per image along axis 0: build the model batch-first, or use a measured "
                    "scorer (emq allocate --scorer sqnr-measured, emq score --proxy "
                    "kl_measured)"
                )
            ins[i] = inputs[0].detach()
            outs[i] = output
            # Hand the rest of the net a copy, so an in-place activation (ReLU(inplace=True))
            # cannot overwrite the recorded output A, and Ga stays dLoss/d(layer output).
            return output.clone()

        return fn

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        logits = folded(x)
    finally:
        for h in handles:
            h.remove()
    return logits, ins, outs


def logit_changes(
    folded: nn.Module, x: torch.Tensor, ds: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``dz [B, N, C]`` of every layer and the softmax ``p [N, C]``, in ``folded``'s dtype.

    ``dz[b, n, k] = J_k(n) . D[b, n]`` is the first-order change of image n's logit k when
    only this layer's output changes by its ``D[b]`` (``ds``, one per quantizable layer): one
    backward pass of the float model per class, each contracted with every layer's ``D``.
    ``folded`` is a private copy: its layers' weights are made to require gradients.
    """
    for _, m in quantizable_layers(folded):
        m.weight.requires_grad_(True)
    logits, _, outs = recorded_forward(folded, x)
    if logits.ndim != 2:
        raise ValueError(
            f"Dz needs logits of shape [N, classes]; the model returns {tuple(logits.shape)}"
        )
    classes = logits.shape[1]
    dz = [torch.zeros(len(d), len(x), classes, dtype=logits.dtype) for d in ds]
    # D is converted to float64 one layer at a time into this one buffer: no float64 copy of
    # every layer's D is held (twice its memory), and no fresh allocation per layer and class
    # (its page faults took 2/3 of the contraction's time on MobileNetV2)
    buffer = torch.empty(max(d.numel() for d in ds), dtype=logits.dtype)
    for k in range(classes):
        grads = torch.autograd.grad(logits[:, k].sum(), outs, retain_graph=k < classes - 1)
        for i, g in enumerate(grads):
            # one batched matrix product per layer ([N, B, F] x [N, F, 1]): no product
            # tensor as large as D (1.7-2x faster on MobileNetV2)
            d64 = buffer[: ds[i].numel()].view(ds[i].shape).copy_(ds[i])
            flat = d64.reshape(len(ds[i]), len(x), -1).transpose(0, 1)
            dz[i][:, :, k] = torch.bmm(flat, g.detach().reshape(len(x), -1, 1))[..., 0].T
        del grads
    return dz, torch.softmax(logits.detach(), 1)


def _fisher_whitened(dz: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``Dz = sqrt(p_k) (dz_k - sum_j p_j dz_j)``, so ``|Dz[b, n]|^2 = dz^T (diag p - p p^T)
    dz``: the Gauss-Newton (true Fisher) term, the KL divergence between the float and the
    quantized outputs to second order. No labels are needed."""
    return (p.sqrt() * (dz - (dz * p).sum(-1, keepdim=True))).float()


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Cache folder: ``inputs`` under ``$EMQ_CACHE`` or the user's cache dir."""
    return cache_dir_of("inputs")


def cache_key(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    settings: InputSettings,
    dz_x: torch.Tensor | None = None,
) -> str:
    """Content hash of model state, architecture, batch, labels, settings and the ``Dz``
    batch (when it has more images than ``x`` and ``Dz`` is computed)."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}".encode())
    h.update(type(model).__qualname__.encode())
    h.update(repr(model).encode())
    h.update(state_fingerprint(model).encode())
    h.update(str(tuple(x.shape)).encode())
    h.update(x.detach().contiguous().numpy().tobytes())
    if y is not None:
        h.update(y.detach().contiguous().numpy().tobytes())
    fields = asdict(settings)
    if settings.rounding == "nearest":  # keys of nearest-rounding inputs predate rounding
        del fields["rounding"], fields["adaround"]
    h.update(json.dumps(fields, sort_keys=True).encode())
    if dz_x is not None and len(dz_x) > len(x) and "Dz" in settings.names:
        h.update(f"dz{tuple(dz_x.shape)}".encode())
        h.update(dz_x.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


# On-disk layout (version 2): ``MAGIC``, the header length (uint64, little-endian), a JSON
# header (candidates, layers, and every tensor's name, shape and offset), then the tensors
# as little-endian float64, each aligned to ``ALIGN`` bytes. Loading maps the file
# copy-on-write: processes that read one cache file share its pages (the OS page cache)
# instead of each holding a copy, and a score table reads float64 without casting.
MAGIC = b"EMQINPUT"
SUFFIX = ".f64"
ALIGN = 64
DTYPE = np.dtype("<f8")


def save_inputs(inputs: LayerInputs, path: Path) -> None:
    """Write inputs in the mapped float64 layout (no pickle), atomically."""
    entries, offset = [], 0
    for i, t in enumerate(inputs.tensors):
        for k, v in t.items():
            entries.append({"layer": i, "name": k, "shape": list(v.shape), "offset": offset})
            nbytes = v.numel() * DTYPE.itemsize
            offset += -(-nbytes // ALIGN) * ALIGN
    header = {
        "version": CACHE_VERSION,
        "candidates": list(inputs.candidates),
        "layers": [layer.to_dict() for layer in inputs.layers],
        "tensors": entries,
        "data_bytes": offset,
    }
    raw = json.dumps(header).encode()
    start = -(-(len(MAGIC) + 8 + len(raw)) // ALIGN) * ALIGN
    raw = raw.ljust(start - len(MAGIC) - 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + len(raw).to_bytes(8, "little") + raw)
        values = (v for layer in inputs.tensors for v in layer.values())
        for entry, value in zip(entries, values, strict=True):
            f.seek(start + entry["offset"])
            f.write(np.ascontiguousarray(value.detach().numpy(), dtype=DTYPE).tobytes())
        f.truncate(start + offset)


def load_inputs(path: Path) -> LayerInputs:
    """Map inputs written by ``save_inputs``: float64 tensors backed by the file's pages.

    The mapping is copy-on-write (a write would stay private to the process), and the
    file's size is checked against its header, so a truncated file is refused, not misread.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
                raise ValueError("not an EMQ input cache file")
            size = int.from_bytes(head[len(MAGIC) :], "little")
            if size > 1 << 26:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size).decode())
        if header.get("version") != CACHE_VERSION:
            raise ValueError(f"format version {header.get('version')}, expected {CACHE_VERSION}")
        start = len(MAGIC) + 8 + size
        expected = start + int(header["data_bytes"])
        actual = path.stat().st_size
        if actual != expected:
            raise ValueError(f"{actual} bytes where the header promises {expected}: truncated")
        layers = [
            LayerInfo(**{**d, "weight_shape": tuple(d["weight_shape"])}) for d in header["layers"]
        ]
        tensors: list[dict[str, torch.Tensor]] = [{} for _ in layers]
        mapping = None
        if header["data_bytes"]:
            with open(path, "rb") as f:
                mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            data = np.frombuffer(mapping, dtype=np.uint8, offset=start)
            for e in header["tensors"]:
                count = int(np.prod(e["shape"], dtype=np.int64))
                flat = data[e["offset"] : e["offset"] + count * DTYPE.itemsize].view(DTYPE)
                tensors[e["layer"]][e["name"]] = torch.from_numpy(flat.reshape(e["shape"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"input cache file {path} is corrupt ({exc}); delete it") from exc
    return LayerInputs(
        layers, tuple(header["candidates"]), tensors, path.stem, path, mapping=mapping
    )


def check_inputs(inputs: LayerInputs, settings: InputSettings) -> None:
    """Refuse inputs read from a cache file that lack an input of ``settings`` in some layer
    or hold it with another bit axis: a genome reading them would fail, and be counted
    invalid, silently."""
    bits = len(settings.candidates)
    where = f"input cache file {inputs.path}" if inputs.path else "the computed inputs"
    if tuple(inputs.candidates) != tuple(settings.candidates):
        raise ValueError(f"{where} holds bit-widths {list(inputs.candidates)}, not "
                         f"{list(settings.candidates)}; delete it")  # fmt: skip
    if len(inputs.tensors) != len(inputs.layers) or not inputs.layers:
        raise ValueError(f"{where} holds {len(inputs.tensors)} layers of inputs for "
                         f"{len(inputs.layers)} layers; delete it")  # fmt: skip
    for layer, tensors in zip(inputs.layers, inputs.tensors, strict=True):
        missing = [n for n in settings.names if n not in tensors]
        if missing:
            raise ValueError(f"{where} has no input {', '.join(missing)} for layer "
                             f"{layer.name}; delete it")  # fmt: skip
        for name in settings.names:
            t = tensors[name]
            if t.ndim == 0 or t.shape[0] not in (1, bits):
                raise ValueError(f"{where}: input {name} of layer {layer.name} has shape "
                                 f"{list(t.shape)}, not a leading axis of 1 or {bits} "
                                 "bit-widths; delete it")  # fmt: skip


def get_inputs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    settings: InputSettings | None = None,
    cache: Path | str | None | bool = None,
    dz_x: torch.Tensor | None = None,
) -> LayerInputs:
    """Inputs from the on-disk cache, computing and storing them on a miss.

    ``cache=False`` disables the cache; ``None`` uses ``cache_dir()``. ``dz_x``: a larger
    batch for ``Dz`` (``compute_inputs``).
    """
    settings = settings or InputSettings()
    if cache is False:
        return compute_inputs(model, x, y, settings, dz_x=dz_x)
    _check_batch(x, y, bool(set(settings.names) & NEEDS_LABELS))
    key = cache_key(model, x, y, settings, dz_x)
    folder = cache_dir() if cache is None or cache is True else Path(cache)
    path = folder / f"{key}{SUFFIX}"
    if path.is_file():
        inputs = load_inputs(path)
        check_inputs(inputs, settings)
        inputs.key, inputs.path, inputs.from_cache = key, path, True
        return inputs
    save_inputs(compute_inputs(model, x, y, settings, dz_x=dz_x), path)
    # Served from the file just written, as every later call is: the same float64 values,
    # in pages shared with other processes that map the file.
    inputs = load_inputs(path)
    inputs.key, inputs.path = key, path
    return inputs
