"""Score tables: a proxy evaluated once per layer on all bit options, ``S[l, b]``.

A configuration's score is ``sum_l S[l, b_l]`` - a gather and a sum - so scoring N
configurations costs L graph evaluations, not N x L.

``ScoreContext`` is what a scorer looks at; ``Scorer`` is the contract every scorer meets
(an evolved proxy, ``emq.proxy.ProxyScorer``; a baseline, ``emq.baselines.Baseline``);
``emq.scorers.resolve_scorer`` turns a name or path into one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from primitives.inputs import (
    INPUT_NAMES,
    InputSettings,
    LayerInputs,
    get_inputs,
    reuse_quantized_weights,
)


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


def config_scores(table: np.ndarray, bit_index: np.ndarray) -> np.ndarray:
    """Scores of configurations ``bit_index [N, L]`` (indices into the candidates)."""
    table = np.asarray(table, dtype=np.float64)
    bit_index = np.asarray(bit_index)
    if bit_index.ndim != 2 or bit_index.shape[1] != table.shape[0]:
        raise ValueError(
            f"configurations have {bit_index.shape[-1]} layers, score table has {table.shape[0]}"
        )
    if bit_index.size and (bit_index.min() < 0 or bit_index.max() >= table.shape[1]):
        raise ValueError(f"candidate indices must be in 0..{table.shape[1] - 1}")
    return table[np.arange(table.shape[0]), bit_index].sum(1)


RANK_DIGITS = 9


def rank_scores(scores: np.ndarray, digits: int = RANK_DIGITS) -> np.ndarray:
    """Scores rounded to ``digits`` significant digits of their largest magnitude.

    What rankings (fitness, fingerprints) are computed from: differences below the rounding
    (floating-point noise of another summation order) become exact ties, whose ranks are
    then fixed (average ranks, stable sorts), instead of flipping with the machine.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    if scale == 0.0:
        return scores
    step = 10.0 ** (math.floor(math.log10(scale)) - digits + 1)
    return np.round(scores / step) * step


def bits_to_index(configs: np.ndarray, candidates: Sequence[int]) -> np.ndarray:
    """Map bit-widths ``[N, L]`` to candidate indices, with a clear error for unknown bits."""
    raw = np.asarray(configs)
    if raw.dtype.kind == "f" and not np.all(raw == np.round(raw)):
        bad = sorted(set(raw[raw != np.round(raw)].tolist()))
        raise ValueError(f"bit-width(s) {bad} are not integers")
    configs = raw.astype(np.int64)
    lut = {int(b): i for i, b in enumerate(candidates)}
    bad = sorted(set(np.unique(configs).tolist()) - set(lut))
    if bad:
        raise ValueError(f"bit-width(s) {bad} not among the candidates {list(candidates)}")
    return np.vectorize(lut.__getitem__, otypes=[np.int64])(configs)


# Training-free scoring outside campaigns (emq score, emq allocate, emq baselines) reads
# SCORING_IMAGES calibration images, SCORING_CHUNK at a time (``score_table``): a proxy's
# ranking is an estimate over images, and 128 of them leave it noisy (the default proxy's
# S@topk on the eight zoo benches: mean 73.8 / 70.2 / 68.7 over three seeded 128-image
# batches, 78.3 / 75.5 over two of 512; README "Calibration images"). Campaigns keep the
# 128 images of their fitness (EvolveSettings.calib_images): cost and memory.
SCORING_IMAGES = 512
SCORING_CHUNK = 128


class ScoreContext:
    """What a scorer may look at: the model, a calibration batch and its proxy inputs.

    Inputs come from the primitives cache, computed on first use. ``chunk``: the most
    images whose inputs ``score_table`` computes at once (``chunks``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: InputSettings | None = None,
        cache: Path | str | None | bool = None,
        chunk: int = SCORING_CHUNK,
    ):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 image, got {chunk}")
        self.model, self.x, self.y = model, x, y
        self.settings = settings or InputSettings()
        self.cache = cache
        self.chunk = chunk
        self._inputs: LayerInputs | None = None

    def chunks(self) -> list[ScoreContext]:
        """The batch split into ``ceil(n / chunk)`` chunks of (nearly) equal size, each a
        context of its own; ``[self]`` when it fits in one. Chunk inputs are not cached
        (four chunks of MobileNetV2's ``D`` would take 6 GB of disk); the allocator caches
        the averaged table instead."""
        k = math.ceil(len(self.x) / self.chunk)
        if k <= 1:
            return [self]
        ys = torch.tensor_split(self.y, k) if self.y is not None else [None] * k
        return [
            ScoreContext(self.model, x, y, self.settings, False, self.chunk)
            for x, y in zip(torch.tensor_split(self.x, k), ys, strict=True)
        ]

    def drop_inputs(self) -> None:
        """Forget the computed inputs (a chunk's, once its table is scored)."""
        self._inputs = None

    @property
    def candidates(self) -> tuple[int, ...]:
        return tuple(self.settings.candidates)

    @property
    def inputs(self) -> LayerInputs:
        if self._inputs is None:
            self._inputs = get_inputs(self.model, self.x, self.y, self.settings, self.cache)
        return self._inputs


@runtime_checkable
class Scorer(Protocol):
    """A scorer: ``scorer(ctx) -> S[L, B]``, float64, higher = expected more accurate.

    ``name``: how it is called (a baseline name, a proxy file's name); ``measured``: it runs
    the quantized network (L x B forward passes) instead of reading cached inputs;
    ``inputs``: the proxy inputs (``primitives.inputs.INPUT_NAMES``) it reads from
    ``ctx.inputs``, so only those are computed (empty: none).

    A scorer may also score whole configurations (``joint`` true and a method
    ``configs(ctx, bit_index) -> scores [N]``): ``configuration_scores`` then asks it, and
    the allocators still take its table.
    """

    name: str
    measured: bool
    inputs: tuple[str, ...]

    def __call__(self, ctx: ScoreContext) -> np.ndarray: ...


@dataclass
class ChunkTables:
    """``chunk_tables``' result: each scorer's averaged table and the seconds it spent, the
    seconds spent computing the chunks' inputs, and whether they all came from the cache."""

    tables: list[np.ndarray]
    seconds: list[float]
    inputs_s: float
    inputs_cached: bool


def chunk_tables(
    scorers: Sequence[Callable[[ScoreContext], np.ndarray]],
    ctx: ScoreContext,
    needs_inputs: bool = True,
) -> ChunkTables:
    """Training-free ``scorers``' tables on ``ctx``: the mean of their tables on
    ``ctx.chunks()``. Each chunk's inputs are computed once for all of them (when
    ``needs_inputs``), its tables scored, then the inputs freed (a chunk's, never ``ctx``'s
    own); ``Q_b(W)`` is computed once for all chunks (``reuse_quantized_weights``)."""
    parts = ctx.chunks()
    totals: list[np.ndarray | None] = [None] * len(scorers)
    seconds = [0.0] * len(scorers)
    inputs_s, cached = 0.0, needs_inputs
    with reuse_quantized_weights():
        for part in parts:
            if needs_inputs:
                start = time.perf_counter()
                cached = bool(part.inputs.from_cache) and cached
                inputs_s += time.perf_counter() - start
            for i, scorer in enumerate(scorers):
                start = time.perf_counter()
                table = np.asarray(scorer(part), dtype=np.float64)
                seconds[i] += time.perf_counter() - start
                totals[i] = table if totals[i] is None else totals[i] + table
            if part is not ctx:
                part.drop_inputs()  # one chunk's inputs alive at a time
    return ChunkTables([t / len(parts) for t in totals], seconds, inputs_s, cached)


def score_table(scorer: Callable[[ScoreContext], np.ndarray], ctx: ScoreContext) -> np.ndarray:
    """``S[l, b]`` of ``scorer`` on ``ctx``: the mean of its tables on ``ctx.chunks()``
    (``chunk_tables``).

    A measured scorer runs the quantized network on the whole batch instead. For the
    output-space Fisher term (a sum over images of squared per-image loss changes) and
    Hutchinson traces the mean over equal chunks ranks like the whole batch (the loss is a
    mean, so each chunk's table is the whole batch's part times a constant); for any other
    proxy it is the mean of per-chunk estimates.
    """
    if getattr(scorer, "measured", False):
        return np.asarray(scorer(ctx), dtype=np.float64)
    return chunk_tables([scorer], ctx, needs_inputs=False).tables[0]


def configuration_scores(
    scorer: Callable[[ScoreContext], np.ndarray], ctx: ScoreContext, bit_index: np.ndarray
) -> np.ndarray:
    """Scores of configurations ``bit_index [N, L]`` (candidate indices).

    A scorer that scores configurations jointly (``scorer.joint``; its ``configs(ctx,
    bit_index)``, e.g. a proxy with the combination ``joint``) is asked chunk by chunk and
    the chunks' scores are averaged, like tables; any other scorer's configurations are
    ``config_scores`` of its table (``score_table``).
    """
    if not getattr(scorer, "joint", False):
        return config_scores(score_table(scorer, ctx), bit_index)
    if getattr(scorer, "measured", False):  # runs the network on the whole batch
        return np.asarray(scorer.configs(ctx, bit_index), dtype=np.float64)
    parts = ctx.chunks()
    total = np.zeros(len(bit_index), dtype=np.float64)
    with reuse_quantized_weights():
        for part in parts:
            total += np.asarray(scorer.configs(part, bit_index), dtype=np.float64)
            if part is not ctx:
                part.drop_inputs()  # one chunk's inputs alive at a time
    return total / len(parts)


def scorer_inputs(scorer: Callable[[ScoreContext], np.ndarray]) -> tuple[str, ...]:
    """Proxy inputs to compute for ``scorer``: what a ``Scorer`` declares (at least ``W``,
    which every layer has), or all of them for a plain callable that declares nothing."""
    names = getattr(scorer, "inputs", None)  # a plain function may stand in for a Scorer
    if names is None:
        return INPUT_NAMES
    return tuple(n for n in INPUT_NAMES if n in set(names)) or ("W",)


def scorer_label(scorer: Scorer) -> str:
    """What reports call a scorer: an evolved proxy's formula, else its name."""
    return getattr(scorer, "formula", None) or scorer.name
