"""Phase 1: the sensitivity of each (quantizer group, candidate), measured or from a Scorer.

Two sources, one table (``SensitivityTable``, lower = less sensitive = flipped first):

* **measured** (AIMET AMP, Pandey et al. 2023, eq. 1): quantize only group ``g`` at
  candidate ``(w, a)`` (its weights at ``w``, its layers' input activations at ``a``, every
  other layer in full precision) and measure the SQNR at the network output over ``N``
  calibration images (``emq.baselines.sqnr_db``: ratio of summed signal to summed error
  energy). The sensitivity is the relative output noise power ``10^(-SQNR/10)``: it sorts
  exactly like the paper's "highest SQNR first" list, and noise powers of independent groups
  add, which makes it a sensible additive value for the Shapley allocator. One forward pass
  per (group, candidate), each written to the cache as it finishes (an interrupted phase 1
  resumes).
* **scorer** (no forward pass on the quantized network): a Scorer's table ``S[l, b]`` over
  weight-bit candidates (higher = more accurate) gives
  ``sensitivity(g, (w, a)) = sum_{l in g} S[l, w_top] - S[l, w]`` - the predicted loss of
  score when flipping the group from its top candidate. **Activation rule:** score tables
  are computed at 8-bit activations and cannot see activation precision, so a candidate
  with ``a > 8`` uses the column of its weight bits (as ``a = 8``: the extra activation
  precision is free in score and only costs BOPs), and a candidate with ``a < 8`` is an
  error asking for the measured source. Weight bits outside the scorer's candidates are an
  error too.

Both are cached as JSON under ``<EMQ cache>/allocate/<key>.json``, the key being a sha256
of the model state, the data, the groups and candidates, and the scorer's identity.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmark.cache import atomic_write_text, cache_dir
from benchmark.ptq import QuantSim, state_fingerprint
from emq.allocate.groups import QuantizerGroup, candidate_name
from emq.baselines import sqnr_db
from emq.graph import gram_scores
from emq.scoring import ScoreContext, chunk_tables, score_table

MEASURED = "sqnr-measured"
CACHE_VERSION = 1


@dataclass(frozen=True)
class SensitivityTable:
    """``values[g][c]``: sensitivity of group ``g`` at its candidate ``c`` (0 = top).

    ``seconds`` and ``evaluations`` (forward passes) are what phase 1 cost when the table
    was computed; ``from_cache`` counts entries that were read from the cache instead.
    """

    groups: tuple[QuantizerGroup, ...]
    values: tuple[np.ndarray, ...]
    source: str
    seconds: float
    evaluations: int
    from_cache: int = 0
    # A joint proxy's Gram [L, B, L, B] over the scorer's weight-bit columns (``columns``):
    # its joint score of any allocation (``joint_scores``); None for any other source.
    gram: np.ndarray | None = field(default=None, repr=False, compare=False)
    columns: tuple[tuple[int, ...], ...] = ()  # per group, each candidate's Gram column
    cross: float = 1.0  # the weight of the Gram's cross-layer terms (the proxy's ``cross``)

    def joint_scores(self, choices: Sequence[Sequence[int]]) -> np.ndarray | None:
        """The joint combination's scores (higher = expected more accurate) of allocations
        given as a candidate index per group, or None without a Gram."""
        if self.gram is None:
            return None
        bit_index = np.zeros((len(choices), self.gram.shape[0]), dtype=np.int64)
        for row, choice in enumerate(choices):
            for g, c, cols in zip(self.groups, choice, self.columns, strict=True):
                bit_index[row, list(g.layers)] = cols[c]
        return gram_scores(self.gram, bit_index, self.cross)

    def flips(self) -> list[tuple[int, int, float]]:
        """Every ``(group, candidate, sensitivity)`` below a group's top candidate."""
        return [(g, c, float(v[c])) for g, v in enumerate(self.values) for c in range(1, len(v))]

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "seconds": self.seconds,
            "evaluations": self.evaluations,
            "groups": [
                {
                    "name": g.name,
                    "sensitivity": {
                        candidate_name(c): float(v) for c, v in zip(g.candidates, vals, strict=True)
                    },
                }
                for g, vals in zip(self.groups, self.values, strict=True)
            ],
        }


def allocate_cache_dir() -> Path:
    """``$EMQ_CACHE/allocate`` (or the user cache dir's ``emq/allocate``)."""
    return cache_dir("allocate")


def scorer_identity(scorer: object) -> str:
    """A stable name of a Scorer: the proxy formula, the baseline name, or the class name."""
    formula = getattr(scorer, "formula", None)
    if formula:
        return f"proxy:{formula}"
    name = getattr(scorer, "name", None)
    if name:
        return f"baseline:{name}"
    return f"scorer:{type(scorer).__module__}.{type(scorer).__qualname__}"


def cache_key(model: torch.nn.Module, tensors: Sequence[torch.Tensor], *parts: object) -> str:
    """sha256 of the model state, the data tensors and any JSON-able parts."""
    h = hashlib.sha256(f"allocate-v{CACHE_VERSION}".encode())
    h.update(state_fingerprint(model).encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _groups_key(groups: Sequence[QuantizerGroup]) -> list:
    return [[list(g.layer_names), [list(c) for c in g.candidates]] for g in groups]


class _JsonCache:
    """A dict persisted as JSON, rewritten atomically after every ``put``."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {}
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except (ValueError, RecursionError, OSError):  # JSON, UTF-8, depth, a directory
                self.data = {}  # a torn or foreign file: recompute rather than fail
            if not isinstance(self.data, dict):
                self.data = {}

    # A value of the wrong type or shape, or not finite (a torn, edited or foreign file):
    # a miss, recomputed and written over, never a wrong allocation or a traceback.

    def number(self, key: str) -> float | None:
        """The finite number stored at ``key``, else None."""
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    def table(self, key: str, columns: int, min_rows: int) -> np.ndarray | None:
        """The finite 2-D table at ``key`` with ``columns`` columns and at least ``min_rows``
        rows, else None."""
        try:
            table = np.asarray(self.data.get(key), dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return None
        if table.ndim != 2 or table.shape[1] != columns or table.shape[0] < min_rows:
            return None
        return table if np.all(np.isfinite(table)) else None

    def put(self, key: str, value: object) -> None:
        self.data[key] = value
        if self.path is None:
            return
        atomic_write_text(self.path, json.dumps(self.data))


def rounding_key(sim: QuantSim) -> list[str]:
    """The cache-key part of ``sim``'s weight rounding: AdaRound's learned-rounding cache key,
    nothing for nearest rounding (whose keys predate the rounding option)."""
    return [f"adaround-{sim.rounder.key}"] if sim.rounder is not None else []


def _cache_path(cache: Path | str | bool | None, key: str) -> Path | None:
    if cache is False:
        return None
    folder = allocate_cache_dir() if cache is None or cache is True else Path(cache)
    return folder / f"{key}.json"


def measured_sensitivity(
    sim: QuantSim,
    x: torch.Tensor,
    groups: Sequence[QuantizerGroup],
    cache: Path | str | bool | None = None,
    on_measure: Callable[[int, int], None] | None = None,
) -> SensitivityTable:
    """Output SQNR with only one group quantized per forward pass (see module docstring).

    ``x``: the N calibration images; ``cache``: folder, ``None`` = default, ``False`` = off.
    ``on_measure(group, candidate)`` is called after each new measurement (progress, tests).
    """
    parts = [MEASURED, _groups_key(groups), sim.clip_grid, *rounding_key(sim)]
    key = cache_key(sim.model, [sim.calib, x], *parts)
    store = _JsonCache(_cache_path(cache, key))
    start = time.perf_counter()
    fp: list[int | None] = [None] * sim.num_layers
    ref: torch.Tensor | None = None
    values, evaluations, hits = [], 0, 0
    try:
        for gi, g in enumerate(groups):
            row = np.empty(len(g.candidates))
            for ci, (w, a) in enumerate(g.candidates):
                entry = f"{gi}|{candidate_name((w, a))}"
                cached = store.number(entry)
                if cached is not None:
                    row[ci], hits = cached, hits + 1
                    continue
                if ref is None:
                    sim.set_fp()
                    ref = sim.forward(x)
                w_bits, a_bits = list(fp), list(fp)
                for i in g.layers:
                    w_bits[i], a_bits[i] = w, a
                sim.set_config(w_bits, a_bits)
                sqnr = sqnr_db(ref, sim.forward(x))
                row[ci] = 10.0 ** (-sqnr / 10.0)
                evaluations += 1
                store.put(entry, float(row[ci]))
                if on_measure is not None:
                    on_measure(gi, ci)
            values.append(row)
    finally:
        sim.set_fp()
    return SensitivityTable(
        tuple(groups), tuple(values), MEASURED, time.perf_counter() - start, evaluations, hits
    )


def scorer_columns(groups: Sequence[QuantizerGroup], candidates: Sequence[int]) -> list[list[int]]:
    """Column of the score table used for each group's candidates (the activation rule)."""
    col = {int(b): j for j, b in enumerate(candidates)}
    out = []
    for g in groups:
        row = []
        for w, a in g.candidates:
            if a < 8:
                raise ValueError(
                    f"group {g.name!r}: candidate {candidate_name((w, a))} has activations "
                    "below 8 bits, which a score table (computed at A8) cannot rank; use "
                    f"--scorer {MEASURED} for such candidates"
                )
            if w not in col:
                raise ValueError(
                    f"group {g.name!r}: candidate {candidate_name((w, a))} has weight bits {w} "
                    f"outside the scorer's candidates {sorted(col)}"
                )
            row.append(col[w])
        out.append(row)
    return out


def table_sensitivity(table: np.ndarray, groups: Sequence[QuantizerGroup], candidates) -> list:
    """``sum_{l in g} S[l, top] - S[l, cand]`` for every group and candidate."""
    table = np.asarray(table, dtype=np.float64)
    values = []
    for g, cols in zip(groups, scorer_columns(groups, candidates), strict=True):
        per_cand = table[list(g.layers)][:, cols].sum(0)
        values.append(per_cand[0] - per_cand)
    return values


def scorer_sensitivity(
    scorer: Callable[[ScoreContext], np.ndarray],
    ctx: ScoreContext,
    groups: Sequence[QuantizerGroup],
    cache: Path | str | bool | None = None,
) -> SensitivityTable:
    """Sensitivities read from a Scorer's table ``S[l, b]`` (no quantized forward pass)."""
    scorer_columns(groups, ctx.candidates)  # validate before paying for the table
    ident = scorer_identity(scorer)
    key = cache_key(  # the chunking is part of what the table means
        ctx.model, [ctx.x, ctx.y], ident, list(ctx.candidates), f"{ctx.settings!r} {ctx.chunk}"
    )
    store = _JsonCache(_cache_path(cache, key))
    start = time.perf_counter()
    hits = 0
    n_layers = max(i for g in groups for i in g.layers) + 1
    cached = store.table("table", len(ctx.candidates), n_layers)
    # a joint proxy's Gram (a measured configuration scorer such as kl_measured has none)
    joint = bool(getattr(scorer, "joint", False)) and callable(getattr(scorer, "gram", None))
    gram = None
    if joint and cached is not None:
        size = cached.shape[0] * len(ctx.candidates)
        gram = store.table("gram", size, size)
        cached = None if gram is None else cached  # an entry from before: compute both
    if cached is not None:
        table, hits = cached, 1
    else:
        if joint:  # the table and the joint Gram from one pass over the chunks' inputs
            both = chunk_tables([scorer, scorer.gram], ctx, needs_inputs=False).tables
            table, gram = both[0], both[1].reshape(len(both[1]) * len(ctx.candidates), -1)
        else:
            table = score_table(scorer, ctx)  # averaged over calibration chunks
        if table.ndim != 2 or table.shape[1] != len(ctx.candidates):
            raise ValueError(
                f"scorer {ident} returned a table of shape {table.shape}, expected "
                f"(layers, {len(ctx.candidates)})"
            )
        if not np.all(np.isfinite(table)) or (gram is not None and not np.all(np.isfinite(gram))):
            raise ValueError(f"scorer {ident} returned non-finite scores")
        if gram is not None:
            store.put("gram", gram.tolist())
        store.put("table", table.tolist())
    if table.shape[0] < n_layers:
        raise ValueError(f"scorer table has {table.shape[0]} layers, the groups use {n_layers}")
    values = table_sensitivity(table, groups, ctx.candidates)
    # a measured baseline (e.g. sqnr_measured) ran one forward pass per table entry
    evaluations = table.size if getattr(scorer, "measured", False) and not hits else 0
    if gram is not None:
        bits = len(ctx.candidates)
        gram = np.asarray(gram).reshape(table.shape[0], bits, table.shape[0], bits)
    columns = tuple(tuple(c) for c in scorer_columns(groups, ctx.candidates))
    return SensitivityTable(
        tuple(groups), tuple(values), ident, time.perf_counter() - start, evaluations, hits,
        gram, columns, float(getattr(scorer, "cross", 1.0)),
    )  # fmt: skip
