"""EMQ proxy, exported by emq 0.1.0. Needs only torch and numpy.

Formula: sub(exp(exp(relu(to_mean_scalar(relu(abs(Wq)))))), logsoftmax(exp(A)))

Each layer's inputs are float32 tensors with a leading bit axis (size B for the bit-dependent
inputs, 1 for the others): A (layer output activation on the calibration batch), Wq (quantized weight Q_b(W)).
``score_table`` evaluates the proxy once per layer on all bit options, giving ``S[l, b]``;
a configuration's score is ``sum_l S[l, b_l]`` (higher = expected more accurate).
"""

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


FORMULA = 'sub(exp(exp(relu(to_mean_scalar(relu(abs(Wq)))))), logsoftmax(exp(A)))'
INPUTS = ('A', 'Wq')
METADATA = {
 "format": "emq-proxy",
 "format_version": 1,
 "library_version": "0.1.0",
 "formula": "sub(exp(exp(relu(to_mean_scalar(relu(abs(Wq)))))), logsoftmax(exp(A)))",
 "inputs": [
  "A",
  "Wq"
 ],
 "name": "best_proxy",
 "fitness_search": 0.7386137767344397,
 "heldout": {
  "spearman@20%": 0.5580645161290323,
  "spearman@50%": 0.6876555023923445,
  "spearman@100%": 0.900443447580899,
  "spearman@topk": 0.715387822034092,
  "spearman@topk(true)": 0.6569165889660846,
  "kendall": 0.7138505018216692
 },
 "bench_fingerprint": {
  "schema_version": 1,
  "model": "resnet20",
  "model_fingerprint": "a2ecc0ace272675f",
  "data_fingerprint": "9f1ec356a747bfe4",
  "quantizer": {
   "weights": "per-channel symmetric narrow-range, MSE clipping",
   "activations": "per-tensor asymmetric, min/max calibration",
   "clip_grid": 100,
   "calib_images": 512,
   "calib_seed": 0,
   "rounding": "nearest"
  },
  "candidates": [
   2,
   3,
   4,
   8
  ],
  "act_bits": 8,
  "sample_seed": 0
 },
 "candidates": [
  2,
  3,
  4,
  8
 ],
 "run": "runs/ablation-resnet20/no-osp-seed0"
}


def _slots(x: Tensor) -> Tensor:
    """View ``(k, ...)`` as ``(k, n)``: one row per bit slot."""
    if x.ndim == 0:
        raise ShapeError("a 0-d value has no bit axis; expected shape (k, ...) with k in {1, B}")
    return x.reshape(x.shape[0], -1)


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


def _exp(x: Tensor) -> Tensor:
    """Exponential: e^x."""
    return torch.exp(x)


def _logsoftmax(x: Tensor) -> Tensor:
    """Log-softmax per bit slot over all non-bit axes."""
    return torch.log_softmax(_slots(x), dim=1).reshape(x.shape)


def _relu(x: Tensor) -> Tensor:
    """Rectifier: max(x, 0)."""
    return torch.relu(x)


def _sub(x: Tensor, y: Tensor) -> Tensor:
    """Difference: x - y."""
    x, y = _aligned(x, y)
    return torch.sub(x, y)


def _to_mean_scalar(x: Tensor) -> Tensor:
    """Mean per bit slot."""
    return _slots(x).mean(dim=1)


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
    """The proxy on one layer's inputs: one score per bit option, shape [num_bits]."""
    with torch.no_grad():
        t0 = _abs(inputs['Wq'])  # abs
        t1 = _relu(t0)  # relu
        t2 = _to_mean_scalar(t1)  # to_mean_scalar
        t3 = _relu(t2)  # relu
        t4 = _exp(t3)  # exp
        t5 = _exp(t4)  # exp
        t6 = _exp(inputs['A'])  # exp
        t7 = _logsoftmax(t6)  # logsoftmax
        t8 = _sub(t5, t7)  # sub
        return reduce_to_bits(t8, num_bits)


def score_table(layers: list, num_bits: int) -> np.ndarray:
    """``S[l, b]`` (float64) for a list of per-layer input dicts."""
    return torch.stack([layer_scores(t, num_bits) for t in layers]).double().numpy()


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
