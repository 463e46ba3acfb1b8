"""EMQ proxy, exported by emq 0.1.0. Needs only torch and numpy.

Formula: revert(abssqrt(mul(abs(pow(sample_sum(mul(D, Ga)))), sum(sample_sum(relu(mul(D, Ga)))))))

Each layer's inputs are float32 tensors with a leading bit axis (size B for the bit-dependent
inputs, 1 for the others): D (change of the layer output when only its weights are quantized at b), Ga (gradient of the loss w.r.t. the layer output).
``score_table`` evaluates the proxy once per layer on all bit options, giving ``S[l, b]``;
a configuration's score is ``sum_l S[l, b_l]`` (higher = expected more accurate).
"""

import json
import math

import numpy as np
import torch
from torch import Tensor

Shape = tuple


class ShapeError(ValueError):
    """Operand shapes do not fit the proxy (the layer inputs differ from the exported ones)."""


def BROADCAST(*shapes):
    """Shapes were checked when the proxy was screened; torch raises on a mismatch."""


def MATMUL(*shapes):
    """Shapes were checked when the proxy was screened; torch raises on a mismatch."""


FORMULA = 'revert(abssqrt(mul(abs(pow(sample_sum(mul(D, Ga)))), sum(sample_sum(relu(mul(D, Ga)))))))'
INPUTS = ('D', 'Ga')
METADATA = json.loads('{\n "format": "emq-proxy",\n "format_version": 1,\n "library_version": "0.1.0",\n "formula": "revert(abssqrt(mul(abs(pow(sample_sum(mul(D, Ga)))), sum(sample_sum(relu(mul(D, Ga)))))))",\n "inputs": [\n  "D",\n  "Ga"\n ],\n "name": "best_proxy",\n "fitness_search": 0.788196,\n "heldout": {\n  "spearman@20%": 0.5129032258064516,\n  "spearman@50%": 0.8174709501025291,\n  "spearman@100%": 0.9336588825891333,\n  "spearman@topk": 0.7546776861660379,\n  "spearman@topk(true)": 0.7386663969459203,\n  "kendall": 0.7724844371519003\n },\n "bench_fingerprint": {\n  "schema_version": 1,\n  "model": "resnet20",\n  "model_fingerprint": "a2ecc0ace272675f",\n  "data_fingerprint": "9f1ec356a747bfe4",\n  "quantizer": {\n   "weights": "per-channel symmetric narrow-range, MSE clipping",\n   "activations": "per-tensor asymmetric, min/max calibration",\n   "clip_grid": 100,\n   "calib_images": 512,\n   "calib_seed": 0,\n   "rounding": "nearest"\n  },\n  "candidates": [\n   2,\n   3,\n   4,\n   8\n  ],\n  "act_bits": 8,\n  "sample_seed": 0\n },\n "candidates": [\n  2,\n  3,\n  4,\n  8\n ],\n "run": "runs/zoo-table-seed0",\n "combine": "table"\n}')


def _slots(x: Tensor) -> Tensor:
    """View ``(k, ...)`` as ``(k, n)``: one row per bit slot."""
    if x.ndim == 0:
        raise ShapeError("a 0-d value has no bit axis; expected shape (k, ...) with k in {1, B}")
    return x.reshape(x.shape[0], -1)


def _samples(x: Tensor) -> Tensor:
    """View ``(k, n, ...)`` as ``(k, n, m)``: one row per (bit slot, sample)."""
    if x.ndim < 2:
        raise ShapeError(f"per-sample reduction of {tuple(x.shape)}: no sample axis (axis 1)")
    return x.reshape(x.shape[0], x.shape[1], -1)


def _aligned(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Views of x and y with equal rank, missing axes inserted after the bit axis."""
    BROADCAST(x.shape, y.shape)
    rank = max(x.ndim, y.ndim)
    return tuple(t.reshape(t.shape[0], *(1,) * (rank - t.ndim), *t.shape[1:]) for t in (x, y))


def _zero_where(mask: Tensor, value: Tensor) -> Tensor:
    return torch.where(mask, torch.zeros_like(value), value)


def _as_matrix(shape: Shape) -> tuple[int, int]:
    """(rows, cols) of one slot: rows = axis 1 (1 if absent), cols = product of the rest."""
    return (shape[1] if len(shape) > 1 else 1), math.prod(shape[2:])


def _abs(x: Tensor) -> Tensor:
    """Absolute value: |x|."""
    return x.abs()


def _abssqrt(x: Tensor) -> Tensor:
    """Square root of magnitude: sqrt|x|."""
    return torch.sqrt(x.abs())


def _mul(x: Tensor, y: Tensor) -> Tensor:
    """Elementwise product: x * y."""
    x, y = _aligned(x, y)
    return torch.mul(x, y)


def _pow(x: Tensor) -> Tensor:
    """Square: x^2."""
    return torch.square(x)


def _relu(x: Tensor) -> Tensor:
    """Rectifier: max(x, 0)."""
    return torch.relu(x)


def _revert(x: Tensor) -> Tensor:
    """Negation: -x."""
    return torch.neg(x)


def _sample_sum(x: Tensor) -> Tensor:
    """Sum per bit slot and sample over the other axes: sum_i x[k, n, i] -> (k, n)."""
    return _samples(x).sum(dim=2)


def _sum(x: Tensor) -> Tensor:
    """Sum per bit slot: sum x (e.g. Tr(H) from a Hessian diagonal)."""
    return _slots(x).sum(dim=1)


def reduce_to_bits(out: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Reduce a graph output to one value per bit: mean over every non-bit axis.

    A bit-independent output (axis 0 of size 1) is broadcast to all bits.
    """
    if out.ndim == 0:
        out = out.reshape(1)
    per_bit = out.reshape(out.shape[0], -1).mean(1) if out[0].numel() > 1 else out.reshape(-1)
    if per_bit.numel() == 1:
        per_bit = per_bit.expand(num_bits)
    if per_bit.numel() != num_bits:
        raise ValueError(f"graph output has {per_bit.numel()} bit slots, expected {num_bits}")
    return per_bit


def layer_scores(inputs: dict, num_bits: int) -> Tensor:
    """The proxy on one layer's inputs: one score per bit option, shape [num_bits].

    Computed in float64, as in EMQ (scores then agree to the last bit).
    """
    inputs = {k: torch.as_tensor(v).double() for k, v in inputs.items()}
    with torch.no_grad():
        t0 = _mul(inputs['D'], inputs['Ga'])  # mul
        t1 = _sample_sum(t0)  # sample_sum
        t2 = _pow(t1)  # pow
        t3 = _abs(t2)  # abs
        t4 = _relu(t0)  # relu
        t5 = _sample_sum(t4)  # sample_sum
        t6 = _sum(t5)  # sum
        t7 = _mul(t3, t6)  # mul
        t8 = _abssqrt(t7)  # abssqrt
        t9 = _revert(t8)  # revert
        return reduce_to_bits(t9, num_bits)


def score_table(layers: list, num_bits: int) -> np.ndarray:
    """``S[l, b]`` (float64) for a list of per-layer input dicts."""
    return torch.stack([layer_scores(t, num_bits) for t in layers]).numpy()


def score_configs(table: np.ndarray, bit_index: np.ndarray) -> np.ndarray:
    """Scores of configurations given as candidate indices ``[N, L]``: a gather and a sum."""
    bit_index = np.asarray(bit_index)
    if bit_index.ndim != 2 or bit_index.shape[1] != table.shape[0]:
        raise ValueError(
            f"configurations have {bit_index.shape[-1]} layers, the table has {table.shape[0]}"
        )
    return table[np.arange(table.shape[0]), bit_index].sum(1)


def score_bits(table: np.ndarray, configs, candidates) -> np.ndarray:
    """Scores of configurations given as bit-widths ``[N, L]`` among ``candidates``."""
    lut = {int(b): i for i, b in enumerate(candidates)}
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    bad = sorted(set(np.unique(configs).tolist()) - set(lut))
    if bad:
        raise ValueError(f"bit-width(s) {bad} not among the candidates {list(candidates)}")
    return score_configs(table, np.vectorize(lut.__getitem__)(configs))
