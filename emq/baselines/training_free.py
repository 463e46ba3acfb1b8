"""Training-free baselines: they read the cached proxy inputs (``ctx.inputs``) or the
model's layer table, no quantized forward pass. Sign convention: ``emq.baselines``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.ptq import fold_bn, layer_table
from benchmark.quantizers import quantizable_layers
from emq.baselines.registry import baseline
from emq.scoring import ScoreContext, reduce_to_bits
from primitives.operations import apply


def _bits(ctx: ScoreContext) -> np.ndarray:
    return np.asarray(ctx.candidates, dtype=np.float64)


def _per_layer(ctx: ScoreContext, values: Iterable[float]) -> np.ndarray:
    """A bit-independent importance per layer times the bit-width: ``v_l * b``."""
    return np.outer(np.asarray(list(values), dtype=np.float64), _bits(ctx))


def _layer_table(ctx: ScoreContext):
    return layer_table(ctx.model, tuple(ctx.x.shape[1:]))


def _tensor(ctx: ScoreContext, layer: int, name: str) -> torch.Tensor:
    return ctx.inputs.tensors[layer][name]


@baseline("bparams")
def bparams(ctx: ScoreContext) -> np.ndarray:
    """BParams (EMQ, Dong et al. 2023, Tab. 1): S[l, b] = params_l * b (model size in bits)."""
    return _per_layer(ctx, (layer.params for layer in _layer_table(ctx)))


@baseline("bops")
def bops(ctx: ScoreContext, act_bits: int = 8) -> np.ndarray:
    """BOPs (Baskin et al. 2021; EMQ's code): S[l, b] = MACs_l * b * act_bits."""
    return _per_layer(ctx, (layer.macs * act_bits for layer in _layer_table(ctx)))


def _hessian_top_eigenvalues(ctx: ScoreContext, iters: int, tol: float, seed: int) -> list[float]:
    """Largest-magnitude eigenvalue of each layer's Hessian block d2L/dW_l^2 (power iteration).

    The loss is the mean cross-entropy of the BN-folded model on the calibration batch; the
    Hessian-vector products are double backward passes through the retained gradient graph.
    """
    if iters < 1:
        raise ValueError(f"power iterations must be >= 1, got {iters}")
    folded = fold_bn(ctx.model, ctx.x[:2])
    weights = [m.weight for _, m in quantizable_layers(folded)]
    for p in folded.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    loss = F.cross_entropy(folded(ctx.x), ctx.y)
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    eigenvalues = []
    for w, g in zip(weights, grads, strict=True):
        v = torch.randn(w.shape, generator=gen)
        v = v / torch.linalg.vector_norm(v)
        value = None
        for _ in range(iters):
            (hv,) = torch.autograd.grad(g, w, grad_outputs=v, retain_graph=True)
            new = float((hv * v).sum())
            norm = torch.linalg.vector_norm(hv)
            converged = value is not None and abs(new - value) <= tol * (abs(value) + 1e-6)
            value = new
            if converged or norm == 0:
                break
            v = hv.detach() / norm
        eigenvalues.append(value)
    return eigenvalues


@baseline("hawq")
def hawq(ctx: ScoreContext, iters: int = 20, tol: float = 1e-3, seed: int = 0) -> np.ndarray:
    """HAWQ (Dong et al., ICCV 2019): S[l, b] = lambda_max(H_l) * b, power iteration on HVPs.

    ``lambda_max`` is the largest-magnitude eigenvalue of the layer's Hessian block (what
    power iteration finds), on the BN-folded model; stops after ``iters`` products or when
    the Rayleigh quotient changes by less than ``tol`` (relative). Bit-weighted as EMQ's code.
    """
    return _per_layer(ctx, _hessian_top_eigenvalues(ctx, iters, tol, seed))


@baseline("hawq_v2", inputs=("H",))
def hawq_v2(ctx: ScoreContext) -> np.ndarray:
    """HAWQ-V2 (Dong et al., NeurIPS 2020): S[l, b] = Tr(H_l) * b (Hutchinson trace).

    ``Tr(H_l)`` is the sum of the cached Hutchinson Hessian-diagonal estimate ``H``.
    Bit-weighted as EMQ's code.
    """
    n = ctx.inputs.num_layers
    return _per_layer(ctx, (float(_tensor(ctx, i, "H").double().sum()) for i in range(n)))


@baseline("hawq_v3", inputs=("H", "E"))
def hawq_v3(ctx: ScoreContext) -> np.ndarray:
    """HAWQ-V3 style (Yao et al., ICML 2021): S[l, b] = -Tr(H_l)/n_l * ||W_l - Q_b(W_l)||^2.

    The sensitivity (average Hessian trace times the squared weight quantization error of
    the bench's quantizer) is negated: a larger expected loss increase scores lower.
    """
    rows = []
    for i in range(ctx.inputs.num_layers):
        h, e = _tensor(ctx, i, "H").double(), _tensor(ctx, i, "E").double()
        avg_trace = float(h.sum()) / h[0].numel()
        rows.append(-avg_trace * e.reshape(e.shape[0], -1).square().sum(1).numpy())
    return np.stack(rows)


def _linear_cka_matrix(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Linear CKA between every pair of feature matrices ``[N, d_l]`` (float64).

    Centering the features centres their Gram matrix (HKH); a layer whose features are
    constant over the batch has zero similarity with every layer.
    """
    grams = []
    for f in features:
        f = f.double().reshape(f.shape[0], -1)
        f = f - f.mean(0, keepdim=True)
        k = f @ f.T
        norm = torch.linalg.matrix_norm(k)
        grams.append(k / norm if norm > 0 else torch.zeros_like(k))
    flat = torch.stack(grams).reshape(len(grams), -1)
    return flat @ flat.T


@baseline("ompq", inputs=("A",))
def ompq(ctx: ScoreContext, beta: float = 1.0) -> np.ndarray:
    """OMPQ (Ma et al., AAAI 2023): S[l, b] = exp(-beta * gamma_l) * b / L.

    ``gamma_l = sum_{j != l} CKA(A_l, A_j)``: the network orthogonality of layer ``l``'s
    output features with every other layer's (linear CKA on the calibration batch); the
    mean over layers of ``theta_l * b_l`` is EMQ's bit-weighted form of OMPQ.
    """
    n = ctx.inputs.num_layers
    cka = _linear_cka_matrix([_tensor(ctx, i, "A")[0] for i in range(n)])
    gamma = cka.sum(1) - torch.diagonal(cka)
    theta = torch.exp(-beta * gamma).numpy()
    return _per_layer(ctx, theta / n)


@baseline("qe", inputs=("A",))
def qe(ctx: ScoreContext) -> np.ndarray:
    """QE (Sun et al., NeurIPS 2022; MAD-NAS): S[l, b] = b * 0.5 * log(2*pi*e * Var(A_l)).

    The differential entropy of layer ``l``'s output under a Gaussian assumption (variance
    over the whole batch), weighted by the bit-width. A layer with Var(A) < 1/(2*pi*e) has a
    negative entropy, so there more bits score lower: a known weakness of the formula.
    """
    n = ctx.inputs.num_layers
    variances = [float(torch.var(_tensor(ctx, i, "A").double(), correction=0)) for i in range(n)]
    return _per_layer(ctx, (0.5 * math.log(2 * math.pi * math.e * v) for v in variances))


@baseline("snip", inputs=("G", "W"))
def snip(ctx: ScoreContext) -> np.ndarray:
    """SNIP (Lee et al., ICLR 2019), bit-weighted as EMQ's bsnip: S[l, b] = b * sum |G ⊙ W|.

    ``|G ⊙ W|`` is ``|dL/dm|`` for a multiplicative mask ``m`` on the weight.
    """
    n = ctx.inputs.num_layers
    return _per_layer(
        ctx, (float((_tensor(ctx, i, "G") * _tensor(ctx, i, "W")).abs().sum()) for i in range(n))
    )


@baseline("synflow", inputs=("V", "W"))
def synflow(ctx: ScoreContext) -> np.ndarray:
    """Synflow (Tanaka et al., NeurIPS 2020), bit-weighted as EMQ's bsynflow: b * sum |V ⊙ W|.

    ``V`` is the data-free gradient of the |theta| linearised network (input of ones).
    """
    n = ctx.inputs.num_layers
    return _per_layer(
        ctx, (float((_tensor(ctx, i, "V") * _tensor(ctx, i, "W")).abs().sum()) for i in range(n))
    )


@baseline("emq", inputs=("V", "W", "b"))
def emq_proxy(ctx: ScoreContext) -> np.ndarray:
    """EMQ's searched proxy (Dong et al., ICCV 2023): mean(softmax(abslog(V*b)) * sqrt(relu(W*b))).

    Two branches on bit-scaled inputs - virtual gradient -> abslog -> softmax, weight ->
    relu -> sqrt - joined by mul and reduced by the mean over every non-bit axis.
    """
    rows = []
    for t in ctx.inputs.tensors:
        # In float32, as published (cached inputs are float64 maps).
        v, w, b = t["V"].float(), t["W"].float(), t["b"].float()
        left = apply("softmax", apply("abslog", apply("mul", v, b)))
        right = apply("sqrt", apply("relu", apply("mul", w, b)))
        out = apply("mul", left, right)
        rows.append(reduce_to_bits(out, len(ctx.candidates)).double().numpy())
    return np.stack(rows)


@baseline("random")
def random_control(ctx: ScoreContext, seed: int = 0) -> np.ndarray:
    """Random control: S[l, b] ~ U[0, 1), i.i.d., from numpy default_rng(seed)."""
    num_layers = len(quantizable_layers(ctx.model))
    return np.random.default_rng(seed).random((num_layers, len(ctx.candidates)))
