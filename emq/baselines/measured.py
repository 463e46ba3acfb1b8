"""Measured baselines: one layer quantized at one bit, all others in full precision, the
network run on the calibration batch (L x B forward passes). The bar a training-free proxy
must reach."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.ptq import QuantSim
from emq.baselines import training_free  # noqa: F401 - listed first: training-free, then measured
from emq.baselines.registry import baseline, configurations
from emq.scoring import ScoreContext

# Floor of the output error energy relative to the signal (caps SQNR at 300 dB, never inf).
SQNR_FLOOR = 1e-30


def _simulator(ctx: ScoreContext) -> tuple[QuantSim, torch.Tensor]:
    """The bench's quantizer on ``ctx`` (``QuantSim``, BN folded, same weight rounding) and
    its full-precision logits on the calibration batch."""
    s = ctx.settings
    sim = QuantSim(ctx.model, ctx.x, s.clip_grid, s.rounding, s.adaround)
    sim.set_fp()
    return sim, sim.forward(ctx.x)


def _single_layer_sweep(
    ctx: ScoreContext, metric: Callable[[torch.Tensor, torch.Tensor], float]
) -> np.ndarray:
    """``metric(fp_logits, logits)`` with only layer ``l``'s weights quantized at ``b``.

    Activations stay in full precision; one forward pass of the calibration batch per
    (layer, bit), on the bench's quantizer (``QuantSim``, BN folded, same weight rounding).
    """
    sim, ref = _simulator(ctx)
    fp = [None] * sim.num_layers
    table = np.empty((sim.num_layers, len(ctx.candidates)))
    try:
        for i in range(sim.num_layers):
            for j, b in enumerate(ctx.candidates):
                w_bits = list(fp)
                w_bits[i] = b
                sim.set_config(w_bits, fp)
                table[i, j] = metric(ref, sim.forward(ctx.x))
    finally:
        sim.set_fp()
    return table


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """``10 log10(||ref||^2 / ||ref - test||^2)`` in dB (error floored: at most 300 dB)."""
    ref = reference.double()
    signal = float(ref.square().sum())
    noise = float((ref - test.double()).square().sum())
    return 10.0 * math.log10(signal / max(noise, SQNR_FLOOR * signal, 1e-300))


@baseline("sqnr_measured", measured=True)
def sqnr_measured(ctx: ScoreContext) -> np.ndarray:
    """Measured SQNR (AIMET AMP, Pandey et al. 2023, phase 1): S[l, b] = SQNR_l(b) in dB.

    SQNR of the output logits on the calibration batch with only layer ``l``'s weights
    quantized at ``b`` (others and all activations FP); summed over layers, higher = better.
    """
    return _single_layer_sweep(ctx, sqnr_db)


@baseline("dloss_measured", measured=True)
def dloss_measured(ctx: ScoreContext) -> np.ndarray:
    """Measured loss increase (single-layer sensitivity): S[l, b] = -(L_q(l, b) - L_fp).

    Mean cross-entropy on the calibration batch with only layer ``l``'s weights quantized at
    ``b``, minus the full-precision loss, negated (a larger increase scores lower).
    """

    def metric(ref: torch.Tensor, logits: torch.Tensor) -> float:
        return -float(
            F.cross_entropy(logits.double(), ctx.y) - F.cross_entropy(ref.double(), ctx.y)
        )

    return _single_layer_sweep(ctx, metric)


def output_kl(reference: torch.Tensor, test: torch.Tensor) -> float:
    """``sum_n KL(softmax(ref_n) || softmax(test_n))`` over the batch, in float64."""
    ref = torch.log_softmax(reference.double(), 1)
    return float((ref.exp() * (ref - torch.log_softmax(test.double(), 1))).sum())


@baseline("kl_measured", measured=True)
def kl_measured(ctx: ScoreContext) -> np.ndarray:
    """Measured output KL (the true Fisher's exact counterpart): S[l, b] = -sum_n KL(p || q).

    ``p``: the full-precision softmax on the calibration batch, ``q``: with only layer
    ``l``'s weights quantized at ``b``. A configuration (``emq score``): the KL with all its
    layers quantized at once, one forward pass per configuration (``kl_measured_configs``).
    """
    return _single_layer_sweep(ctx, lambda ref, logits: -output_kl(ref, logits))


@configurations("kl_measured")
def kl_measured_configs(ctx: ScoreContext, bit_index: np.ndarray) -> np.ndarray:
    """``-sum_n KL(p || q_c)`` of each configuration ``c`` (candidate indices ``[N, L]``):
    its layers' weights quantized at once, activations in full precision, on the bench's
    quantizer (``QuantSim``). Label-free; ranks whole configurations at 84-96 S@topk on the
    zoo and the examples (README "Where it loses, and what would not")."""
    sim, ref = _simulator(ctx)
    fp = [None] * sim.num_layers
    scores = np.empty(len(bit_index))
    try:
        for row, index in enumerate(np.asarray(bit_index)):
            sim.set_config([ctx.candidates[int(i)] for i in index], fp)
            scores[row] = -output_kl(ref, sim.forward(ctx.x))
    finally:
        sim.set_fp()
    return scores
