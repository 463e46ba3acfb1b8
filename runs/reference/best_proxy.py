"""EMQ proxy, exported by emq 0.1.0. Needs only torch and numpy.

Formula: mul(abssqrt(Wq), abssqrt(add(frobenius_norm(Ga), mul(relu(E), sigmoid(G)))))

Each layer's inputs are float32 tensors with a leading bit axis (size B for the bit-dependent
inputs, 1 for the others): E (weight quantization error W - Q_b(W)), G (gradient of the loss w.r.t. the weight), Ga (gradient of the loss w.r.t. the layer output), Wq (quantized weight Q_b(W)).
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


FORMULA = 'mul(abssqrt(Wq), abssqrt(add(frobenius_norm(Ga), mul(relu(E), sigmoid(G)))))'
INPUTS = ('E', 'G', 'Ga', 'Wq')
METADATA = {
 "format": "emq-proxy",
 "format_version": 1,
 "library_version": "0.1.0",
 "formula": "mul(abssqrt(Wq), abssqrt(add(frobenius_norm(Ga), mul(relu(E), sigmoid(G)))))",
 "inputs": [
  "E",
  "G",
  "Ga",
  "Wq"
 ],
 "name": "best_proxy",
 "fitness_search": 0.8028556835749088,
 "heldout": {
  "spearman@20%": 0.5330645161290323,
  "spearman@50%": 0.7824470266575531,
  "spearman@100%": 0.930816426295601,
  "spearman@topk": 0.7487759896940621,
  "spearman@topk(true)": 0.7151690801915668,
  "kendall": 0.7627709840098439
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
 "run": "runs/reference"
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


def _abssqrt(x: Tensor) -> Tensor:
    """Square root of magnitude: sqrt|x|."""
    return torch.sqrt(x.abs())


def _add(x: Tensor, y: Tensor) -> Tensor:
    """Sum: x + y."""
    x, y = _aligned(x, y)
    return torch.add(x, y)


def _frobenius_norm(x: Tensor) -> Tensor:
    """Frobenius norm per bit slot: sqrt(sum x^2)."""
    return torch.linalg.vector_norm(_slots(x), dim=1)


def _mul(x: Tensor, y: Tensor) -> Tensor:
    """Elementwise product: x * y."""
    x, y = _aligned(x, y)
    return torch.mul(x, y)


def _relu(x: Tensor) -> Tensor:
    """Rectifier: max(x, 0)."""
    return torch.relu(x)


def _sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid: 1/(1+e^-x)."""
    return torch.sigmoid(x)


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
        t0 = _abssqrt(inputs['Wq'])  # abssqrt
        t1 = _frobenius_norm(inputs['Ga'])  # frobenius_norm
        t2 = _relu(inputs['E'])  # relu
        t3 = _sigmoid(inputs['G'])  # sigmoid
        t4 = _mul(t2, t3)  # mul
        t5 = _add(t1, t4)  # add
        t6 = _abssqrt(t5)  # abssqrt
        t7 = _mul(t0, t6)  # mul
        return reduce_to_bits(t7, num_bits)


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
