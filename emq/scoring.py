"""Score tables: a proxy evaluated once per layer on all bit options, ``S[l, b]``.

A configuration's score is ``sum_l S[l, b_l]`` - a gather and a sum - so scoring N
configurations costs L graph evaluations, not N x L.

``ScoreContext`` is what a scorer looks at; ``Scorer`` is the contract every scorer meets
(an evolved proxy, ``emq.proxy.ProxyScorer``; a baseline, ``emq.baselines.Baseline``);
``emq.scorers.resolve_scorer`` turns a name or path into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from primitives.inputs import INPUT_NAMES, InputSettings, LayerInputs, get_inputs


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


class ScoreContext:
    """What a scorer may look at: the model, a calibration batch and its proxy inputs.

    Inputs come from the primitives cache, computed on first use.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        settings: InputSettings | None = None,
        cache: Path | str | None | bool = None,
    ):
        self.model, self.x, self.y = model, x, y
        self.settings = settings or InputSettings()
        self.cache = cache
        self._inputs: LayerInputs | None = None

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
    """

    name: str
    measured: bool
    inputs: tuple[str, ...]

    def __call__(self, ctx: ScoreContext) -> np.ndarray: ...


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
