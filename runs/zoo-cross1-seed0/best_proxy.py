"""EMQ proxy, exported by emq 0.1.0. Needs only torch and numpy.

Formula: revert(sq_norm(Dz))

Each layer's inputs are float32 tensors with a leading bit axis (size B for the bit-dependent
inputs, 1 for the others): Dz (change of the logits when only this layer's weights are quantized at b, to first order, in the softmax's Fisher metric (its squared norm is the output KL to second order)).
``score_table`` evaluates the proxy once per layer on all bit options, giving ``S[l, b]``;
a configuration's score is ``sum_l S[l, b_l]`` (higher = expected more accurate).
This proxy combines layers jointly: ``joint_scores`` scores configurations with the layers'
terms added before the norm (the table is its diagonal, what allocators take).
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


FORMULA = 'revert(sq_norm(Dz))'
INPUTS = ('Dz',)
METADATA = json.loads('{\n "format": "emq-proxy",\n "format_version": 1,\n "library_version": "0.1.0",\n "formula": "revert(sq_norm(Dz))",\n "inputs": [\n  "Dz"\n ],\n "name": "best_proxy",\n "fitness_search": 0.821784,\n "heldout": {\n  "spearman@20%": 0.7125000000000001,\n  "spearman@50%": 0.6434996582365003,\n  "spearman@100%": 0.8864559833185511,\n  "spearman@topk": 0.747485213851684,\n  "spearman@topk(true)": 0.7770011591401249,\n  "kendall": 0.7073159969806495\n },\n "bench_fingerprint": {\n  "schema_version": 1,\n  "model": "resnet20",\n  "model_fingerprint": "a2ecc0ace272675f",\n  "data_fingerprint": "9f1ec356a747bfe4",\n  "quantizer": {\n   "weights": "per-channel symmetric narrow-range, MSE clipping",\n   "activations": "per-tensor asymmetric, min/max calibration",\n   "clip_grid": 100,\n   "calib_images": 512,\n   "calib_seed": 0,\n   "rounding": "nearest"\n  },\n  "candidates": [\n   2,\n   3,\n   4,\n   8\n  ],\n  "act_bits": 8,\n  "sample_seed": 0\n },\n "candidates": [\n  2,\n  3,\n  4,\n  8\n ],\n "run": "runs/zoo-cross1-seed0",\n "combine": "joint",\n "cross": 1.0\n}')


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


def _revert(x: Tensor) -> Tensor:
    """Negation: -x."""
    return torch.neg(x)


def _sq_norm(x: Tensor) -> Tensor:
    """Sum of squares per bit slot: sum x^2 (e.g. ||W - Q_b(W)||^2)."""
    return torch.square(_slots(x)).sum(dim=1)


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
        t0 = _sq_norm(inputs['Dz'])  # sq_norm
        t1 = _revert(t0)  # revert
        return reduce_to_bits(t1, num_bits)


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


def layer_terms(inputs: dict) -> Tensor:
    """Dz on one layer's inputs (float64), [bits or 1, ...]."""
    inputs = {k: torch.as_tensor(v).double() for k, v in inputs.items()}
    with torch.no_grad():

        return inputs['Dz']


# the weight of the cross-layer terms (METADATA["cross"]; 1: the full joint form)
CROSS = float(METADATA.get("cross", 1.0))


def joint_scores(layers: list, bit_index: np.ndarray) -> np.ndarray:
    """This proxy's combination (METADATA["combine"] == "joint"): configuration scores
    ``-[(1 - CROSS) sum_l |X_l[b_l]|^2 + CROSS |sum_l X_l[b_l]|^2]`` for candidate indices
    ``[N, L]``: the layers' terms added before the norm, their cross-layer products weighted
    by ``CROSS`` (its table is the diagonal; a bit-independent term counts at every bit)."""
    terms = [layer_terms(t) for t in layers]
    bit_index = torch.as_tensor(np.atleast_2d(np.asarray(bit_index, dtype=np.int64)))
    if bit_index.shape[1] != len(terms):
        raise ValueError(f"configurations have {bit_index.shape[1]} layers, not {len(terms)}")
    total = torch.zeros((len(bit_index), *terms[0].shape[1:]), dtype=torch.float64)
    diagonal = torch.zeros(len(bit_index), dtype=torch.float64)
    for layer, term in enumerate(terms):
        part = term[bit_index[:, layer] if term.shape[0] > 1 else 0]
        total += part
        diagonal += torch.square(part).reshape(len(bit_index), -1).sum(1)
    full = torch.square(total).reshape(len(bit_index), -1).sum(1)
    return (-(CROSS * full + (1.0 - CROSS) * diagonal)).numpy()
