"""Handcrafted baseline proxies and the correlation table (EMQ, Table 1).

Each baseline is one decorated function ``(ctx: ScoreContext, **options) -> S[L, B]``
(zero-cost-nas style registry)::

    @baseline("hawq_v2", inputs=("H",))
    def hawq_v2(ctx):
        \"\"\"HAWQ-V2 (Dong et al. 2020): S[l, b] = Tr(H_l) * b.\"\"\"

``S[l, b]`` is a score per layer and bit candidate (float64, ``B = len(ctx.candidates)``)
and a configuration's score is ``sum_l S[l, b_l]`` (see ``emq.scoring``).

**Sign convention.** A configuration score must be HIGHER for configurations expected to be
MORE accurate, so a good proxy has a positive Spearman rho with accuracy:

* "bit-weighted" proxies (BParams, BOPs, HAWQ, HAWQ-V2, OMPQ, QE, SNIP, Synflow, EMQ) score
  ``importance_l * b`` as EMQ's code does: more bits where it matters scores higher;
* sensitivities (HAWQ-V3's ``Tr(H)/n * ||W - Q_b(W)||^2``, the measured loss increase) are
  negated: ``S = -sensitivity``;
* measured SQNR (dB) is already "higher = better".

Two baselines are *measured* (``measured=True``): they quantize one layer at one bit with all
others in full precision and run the network on the calibration batch, L x B forward passes.
They are the bar a training-free proxy must reach. The others are training-free and read the
cached proxy inputs (``ctx.inputs``) or the model's layer table.

``run_baselines`` evaluates every baseline on a bench and writes ``baselines.csv``,
``baselines.png`` (score vs accuracy per baseline) and ``tables.npz`` (the score tables);
``add_parser`` registers the ``emq baselines`` command.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmark import options
from benchmark.bench import Bench, default_bench
from benchmark.ptq import QuantSim, fold_bn, layer_table
from benchmark.quantizers import quantizable_layers
from emq.metrics import correlation_report
from emq.scoring import ScoreContext, config_scores, reduce_to_bits
from primitives.operations import apply

SPLITS = ("heldout", "search", "all")
# Correlation columns of the table (keys of emq.metrics.correlation_report).
CORR_KEYS = ("spearman@20%", "spearman@50%", "spearman@100%", "spearman@topk", "kendall")
CSV_COLUMNS = (
    "baseline",
    "kind",
    "split",
    "configs",
    *CORR_KEYS,
    "one_time_s",
    "per_config_s",
    "inputs_s",
    "inputs_cached",
)
# Floor of the output error energy relative to the signal (caps SQNR at 300 dB, never inf).
SQNR_FLOOR = 1e-30


class UnknownBaselineError(ValueError):
    """A baseline name is not in the registry; the message lists the valid names."""


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Baseline:
    """A registered baseline proxy: ``baseline(ctx, **options)`` gives ``S[L, B]``.

    ``measured``: costs forward passes of the quantized network (L x B of them);
    ``inputs``: names of the cached proxy inputs it reads (empty: it does not need them).
    """

    name: str
    fn: Callable[..., np.ndarray]
    measured: bool
    inputs: tuple[str, ...]
    doc: str

    @property
    def needs_inputs(self) -> bool:
        return bool(self.inputs)

    @property
    def kind(self) -> str:
        return "measured" if self.measured else "training-free"

    def options(self) -> dict[str, Any]:
        """Keyword options of the baseline and their defaults."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return {p.name: p.default for p in params}

    def __call__(self, ctx: ScoreContext, **options: Any) -> np.ndarray:
        valid = self.options()
        bad = sorted(set(options) - set(valid))
        if bad:
            raise ValueError(
                f"baseline {self.name!r} has no option(s) {bad}; its options are "
                f"{sorted(valid) or 'none'}"
            )
        missing = sorted(set(self.inputs) - set(ctx.settings.names))
        if missing:
            raise ValueError(
                f"baseline {self.name!r} reads proxy input(s) {missing} that the context's "
                f"InputSettings.names {list(ctx.settings.names)} leave out"
            )
        table = np.asarray(self.fn(ctx, **options), dtype=np.float64)
        shape = (_num_layers(ctx), len(ctx.candidates))
        if table.shape != shape:
            raise ValueError(
                f"baseline {self.name!r} returned a table of shape {table.shape}, "
                f"expected {shape} (layers, bit candidates)"
            )
        return table


BASELINES: dict[str, Baseline] = {}


def baseline(
    name: str, measured: bool = False, inputs: Sequence[str] = ()
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator registering ``fn(ctx, **options) -> S[L, B]`` under ``name``.

    The function's docstring (first line: paper and formula) becomes the baseline's doc.
    """
    if name in BASELINES:
        raise ValueError(f"baseline {name!r} is already registered")

    def decorator(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        doc = (fn.__doc__ or "").strip().splitlines()
        if not doc:
            raise ValueError(f"baseline {name!r} needs a docstring citing its paper and formula")
        BASELINES[name] = Baseline(name, fn, measured, tuple(inputs), doc[0])
        return fn

    return decorator


def get_baseline(name: str) -> Baseline:
    """The registered baseline called ``name``; a clear error lists the valid names."""
    try:
        return BASELINES[name]
    except (KeyError, TypeError):
        raise UnknownBaselineError(
            f"unknown baseline {name!r}; valid baselines: {', '.join(BASELINES)}"
        ) from None


# ----------------------------------------------------------------------------- helpers


def _bits(ctx: ScoreContext) -> np.ndarray:
    return np.asarray(ctx.candidates, dtype=np.float64)


def _per_layer(ctx: ScoreContext, values: Iterable[float]) -> np.ndarray:
    """A bit-independent importance per layer times the bit-width: ``v_l * b``."""
    return np.outer(np.asarray(list(values), dtype=np.float64), _bits(ctx))


def _layer_table(ctx: ScoreContext):
    return layer_table(ctx.model, tuple(ctx.x.shape[1:]))


def _tensor(ctx: ScoreContext, layer: int, name: str) -> torch.Tensor:
    return ctx.inputs.tensors[layer][name]


def _num_layers(ctx: ScoreContext) -> int:
    return len(quantizable_layers(ctx.model))


# ----------------------------------------------------------------------------- training-free


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
        b = t["b"]
        left = apply("softmax", apply("abslog", apply("mul", t["V"], b)))
        right = apply("sqrt", apply("relu", apply("mul", t["W"], b)))
        out = apply("mul", left, right)
        rows.append(reduce_to_bits(out, len(ctx.candidates)).double().numpy())
    return np.stack(rows)


@baseline("random")
def random_control(ctx: ScoreContext, seed: int = 0) -> np.ndarray:
    """Random control: S[l, b] ~ U[0, 1), i.i.d., from numpy default_rng(seed)."""
    return np.random.default_rng(seed).random((_num_layers(ctx), len(ctx.candidates)))


# ----------------------------------------------------------------------------- measured


def _single_layer_sweep(
    ctx: ScoreContext, metric: Callable[[torch.Tensor, torch.Tensor], float]
) -> np.ndarray:
    """``metric(fp_logits, logits)`` with only layer ``l``'s weights quantized at ``b``.

    Activations stay in full precision; one forward pass of the calibration batch per
    (layer, bit), on the bench's quantizer (``QuantSim``, BN folded, same weight rounding).
    """
    s = ctx.settings
    sim = QuantSim(ctx.model, ctx.x, s.clip_grid, s.rounding, s.adaround)
    fp = [None] * sim.num_layers
    sim.set_fp()
    ref = sim.forward(ctx.x)
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


# ----------------------------------------------------------------------------- the table


def default_out_dir(bench: Bench) -> Path:
    """``runs/baselines-<bench file stem>/`` under the current directory."""
    return Path("runs") / f"baselines-{Path(bench.path).stem}"


def split_indices(bench: Bench, split: str, seed: int = 0) -> np.ndarray:
    """Configuration indices of ``split`` (``bench.split(seed)``; ``all`` = every config)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if split == "all":
        return np.arange(len(bench))
    search, heldout = bench.split(seed)
    return search if split == "search" else heldout


def bench_context(
    bench: Bench,
    checkpoint: Path | str | None = None,
    batch: int = 128,
    seed: int = 0,
    cache: Path | str | None | bool = None,
) -> ScoreContext:
    """The default context of a bench: its model and a seeded calibration batch."""
    from benchmark.models import load_model
    from emq.score import model_context

    model = load_model(bench.model, checkpoint)
    return model_context(
        model, bench.candidates, batch, seed, cache, bench.rounding, bench.adaround
    )


def check_context(bench: Bench, ctx: ScoreContext) -> None:
    """Raise a clear error when ``ctx`` does not describe the model the bench measured."""
    if tuple(ctx.candidates) != tuple(bench.candidates):
        raise ValueError(
            f"context bit candidates {list(ctx.candidates)} differ from the bench's "
            f"{list(bench.candidates)}"
        )
    bench.check_model(ctx.model)
    bench.check_rounding(ctx.settings.rounding)


def run_baselines(
    bench: Bench,
    split: str = "heldout",
    out_dir: Path | str | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    cache: Path | str | None | bool = None,
    *,
    checkpoint: Path | str | None = None,
    batch: int = 128,
    context: ScoreContext | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Correlation of every baseline with the bench's accuracy, as EMQ's Table 1.

    For each baseline: the score table on ``context`` (default: the bench's model from
    ``checkpoint`` with a seeded ``batch``-image calibration batch), configuration scores on
    ``split`` (``bench.split(seed)``), ``emq.metrics.correlation_report`` against measured
    top-1, and two costs:

    * ``one_time_s``: seconds to compute the table. The proxy inputs (``ctx.inputs``) are
      computed once, timed separately (``inputs_s``), and that time is added to the one-time
      cost of every training-free baseline that reads them - as if each ran alone. On an
      input-cache hit (``inputs_cached``) ``inputs_s`` is the load time only.
    * ``per_config_s``: seconds to score the split's configurations from the table, divided
      by their number (a gather and a sum).

    ``seed`` selects the split, the calibration batch and the seed of seeded baselines
    (``random``, ``hawq``) unless ``options`` sets it. ``options`` maps a baseline name to
    keyword options (e.g. ``{"ompq": {"beta": 2.0}, "hawq": {"iters": 50}}``).

    Writes ``baselines.csv``, ``baselines.png`` and ``tables.npz`` (score tables) into
    ``out_dir`` (default ``runs/baselines-<bench file stem>/``, created). Returns the rows.
    """
    indices = split_indices(bench, split, seed)
    chosen = [get_baseline(n) for n in (list(BASELINES) if names is None else names)]
    if not chosen:
        raise ValueError("no baseline selected")
    options = dict(options or {})
    unknown = sorted(set(options) - {b.name for b in chosen})
    if unknown:
        raise ValueError(f"options given for baseline(s) {unknown} that are not being run")
    ctx = context or bench_context(bench, checkpoint, batch, seed, cache)
    check_context(bench, ctx)
    bit_index = bench.bit_index()[indices]
    accuracy = np.asarray(bench.accuracy)[indices]

    inputs_s, inputs_cached = 0.0, False
    if any(b.needs_inputs for b in chosen):
        start = time.perf_counter()
        inputs = ctx.inputs
        inputs_s, inputs_cached = time.perf_counter() - start, bool(inputs.from_cache)

    rows, tables, scores = [], {}, {}
    for b in tqdm(chosen, desc="baselines", unit="proxy", disable=not progress):
        opts = dict(options.get(b.name, {}))
        if "seed" in b.options():
            opts.setdefault("seed", seed)
        start = time.perf_counter()
        table = b(ctx, **opts)
        table_s = time.perf_counter() - start
        start = time.perf_counter()
        pred = config_scores(table, bit_index)
        score_s = time.perf_counter() - start
        tables[b.name], scores[b.name] = table, pred
        own_inputs = inputs_s if b.needs_inputs else 0.0
        report = correlation_report(pred, accuracy)
        rows.append(
            {
                "baseline": b.name,
                "kind": b.kind,
                "split": split,
                "configs": len(indices),
                **{k: report[k] for k in CORR_KEYS},
                "one_time_s": table_s + own_inputs,
                "per_config_s": score_s / max(len(indices), 1),
                "inputs_s": own_inputs,
                "inputs_cached": inputs_cached if b.needs_inputs else False,
            }
        )

    out = Path(out_dir) if out_dir is not None else default_out_dir(bench)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "baselines.csv")
    plot_scatter(scores, accuracy, rows, out / "baselines.png", title=f"{bench.model}, {split}")
    np.savez(out / "tables.npz", candidates=np.asarray(bench.candidates), **tables)
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """One row per baseline (correlations in [-1, 1], NaN when undefined; costs in s)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in CSV_COLUMNS})


def plot_scatter(
    scores: Mapping[str, np.ndarray],
    accuracy: np.ndarray,
    rows: Sequence[dict],
    path: Path,
    title: str = "",
) -> None:
    """A grid of score-vs-accuracy scatter plots, one per baseline (Agg, no pyplot)."""
    from matplotlib.figure import Figure

    n = len(scores)
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    rho = {row["baseline"]: row["spearman@100%"] for row in rows}
    for ax, (name, pred) in zip(axes, scores.items(), strict=False):
        ax.scatter(pred, accuracy, s=8, alpha=0.7)
        ax.set_title(f"{name}  ρ={rho[name]:.2f}", fontsize=9)
        ax.set_xlabel("proxy score", fontsize=8)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=4)
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def format_table(rows: Sequence[dict]) -> str:
    """Aligned text table in the form of EMQ's Table 1 (correlations in %)."""

    def pct(v: float) -> str:
        return "nan" if not math.isfinite(v) else f"{100 * v:.2f}"

    header = ("baseline", "S@20%", "S@50%", "S@100%", "Kendall", "one-time s", "per-config s")
    body = [
        (
            r["baseline"] + (" *" if r["kind"] == "measured" else ""),
            pct(r["spearman@20%"]),
            pct(r["spearman@50%"]),
            pct(r["spearman@100%"]),
            pct(r["kendall"]),
            f"{r['one_time_s']:.3g}",
            f"{r['per_config_s']:.2e}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cmd_baselines(args: argparse.Namespace) -> None:
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    for name in names or ():
        get_baseline(name)
    bench = Bench.open(args.bench or default_bench())
    out = Path(args.out) if args.out else default_out_dir(bench)
    rows = run_baselines(
        bench, args.split, out, names, seed=args.seed, checkpoint=args.checkpoint,
        batch=args.batch, progress=not args.json,
    )  # fmt: skip
    if args.json:
        result = {
            "bench": str(bench.path),
            "split": args.split,
            "out": str(out),
            "baselines": [{k: _json_safe(v) for k, v in r.items()} for r in rows],
        }
        print(json.dumps(result, indent=2))
        return
    n = rows[0]["configs"]
    print(f"{bench.model}: {n} {args.split} configurations; correlations in %, * = measured")
    print(format_table(rows))
    print(f"\nwrote {out / 'baselines.csv'}, {out / 'baselines.png'}, {out / 'tables.npz'}")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``emq baselines`` on the ``emq`` sub-command parsers."""
    p = subparsers.add_parser(
        "baselines", help="correlation table of the handcrafted baseline proxies on a bench"
    )
    p.add_argument("--bench", help="bench file (default: the shipped ResNet-20 bench)")
    p.add_argument("--split", choices=SPLITS, default="heldout", help="configurations to rank")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"subset of: {', '.join(BASELINES)}")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/baselines-<bench>)")
    p.add_argument("--checkpoint", help="model state_dict the bench was built from")
    p.add_argument("--batch", type=options.images, default=128, help="calibration images")
    p.add_argument("--seed", type=options.seed, default=0,
                   help="split / calibration / baseline seed")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_baselines)
    return p
