"""Fitness of a genome: its score table's Spearman@topk on the bench's search split.

``Evaluator`` holds the proxy inputs and the bench arrays. It pickles without the tensors:
a worker process maps them from the inputs cache file (``primitives.inputs.load_inputs``)
the first time it sees that file and keeps the mapping, and its subexpression cache, for
every later task; workers on one machine so share one copy of the inputs (the OS page
cache) instead of each holding its own. On a cluster whose workers cannot read that file,
``portable()`` gives a copy that carries them (sent once per worker). A task evaluates a
batch of genomes given as formula text (``evaluate_texts``).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from benchmark.bench import Bench
from emq.genome import from_string
from emq.graph import (
    Expr,
    SubexpressionCache,
    as_float64,
    canonical,
    check_cross,
    evaluate,
    infer_shape,
    joint_operand,
    joint_scores,
    score_table,
)
from emq.metrics import RATIOS, correlation_report, spearman_at_topk
from emq.scoring import config_scores, rank_scores, reduce_to_bits
from primitives.inputs import LayerInputs, load_inputs
from primitives.operations import ShapeError

INVALID = -1.0  # fitness of rejected genomes (never admitted to a population)
# Fitness is kept to 6 decimals: closer genomes tie and the older survives (same on every
# machine), rather than a last-bit difference deciding.
FITNESS_DIGITS = 6


# How a campaign combines a configuration's layers (``--combine``): ``table``, the sum of a
# genome's per-layer table (every genome); ``auto``, a genome ``revert(sq_norm(X))`` whose
# ``X`` adds up across layers (``joint_candidate``) is also scored jointly, ``-|sum_l
# X_l[b_l]|^2`` (``emq.graph.joint_scores``), and keeps the combination with the better
# fitness, recorded with it (the proxy file's ``combine``).
COMBINES = ("table", "auto")
# ``X`` of at most this many values per layer and bit-width is scored jointly (``Dz`` of 512
# images and 10 classes has 5,120; a per-sample loss change, one per image): the joint sum
# reads every value of every layer once per configuration.
JOINT_MAX_ELEMENTS = 1 << 16


def check_combine(combine: str) -> str:
    """``combine`` if it is one of ``COMBINES``, or a clear error."""
    if combine not in COMBINES:
        raise ValueError(f"unknown --combine {combine!r}: expected one of {', '.join(COMBINES)}")
    return combine


def joint_candidate(expr: Expr, shapes: list[dict[str, tuple[int, ...]]]) -> bool:
    """Whether ``expr`` can be combined jointly on inputs of these per-layer ``shapes``: a
    proxy ``revert(sq_norm(X))`` whose ``X`` depends on the bit-width and has one shape, of
    at most ``JOINT_MAX_ELEMENTS`` values, in every layer (static shapes only)."""
    try:
        operand = joint_operand(expr)
    except ValueError:
        return False
    try:
        found = {infer_shape(operand, layer) for layer in shapes}
    except (ShapeError, KeyError):
        return False
    if len(found) != 1:
        return False
    (shape,) = found
    return len(shape) > 1 and shape[0] > 1 and math.prod(shape[1:]) <= JOINT_MAX_ELEMENTS


# Per process: the inputs mapped from each cache file (keyed by path and the file's
# identity, so a file written anew is mapped anew) and one subexpression cache per file.
# Mappings cost address space, not memory, so every file a campaign reads stays mapped.
_MAPPED: dict[str, tuple[tuple[int, int, int], LayerInputs]] = {}
_CACHES: dict[str, SubexpressionCache] = {}


def mapped_inputs(path: str) -> LayerInputs:
    """The inputs of cache file ``path``, mapped once per process (``load_inputs``)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(
            f"input cache file {path} cannot be read ({exc.strerror}): run the command again "
            "on this machine to recompute it, or give cluster workers a shared cache folder"
        ) from None
    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _MAPPED.get(path)
    if hit is None or hit[0] != ident:
        hit = _MAPPED[path] = (ident, load_inputs(Path(path)))
        _CACHES.pop(path, None)
    return hit[1]


def shared_cache(path: str) -> SubexpressionCache:
    """This process's subexpression cache for the inputs of cache file ``path``."""
    cache = _CACHES.get(path)
    if cache is None:
        cache = _CACHES[path] = SubexpressionCache()
    return cache


@dataclass
class Evaluator:
    """Scores genomes against one bench; picklable to worker processes."""

    inputs_path: str
    bit_index: np.ndarray  # [N, L] candidate indices of every bench configuration
    accuracy: np.ndarray  # [N]
    search: np.ndarray  # indices of the search split
    heldout: np.ndarray  # indices of the held-out split
    ratios: tuple[float, ...] = RATIOS
    convention: str = "predicted"
    probe_layers: tuple[int, ...] = ()
    ship_inputs: bool = False  # pickle with the tensors (see ``portable``)
    combine: str = "table"  # ``COMBINES``
    cross: float = 1.0  # the joint combination's cross-layer weight (``emq.graph.DEFAULT_CROSS``)
    _inputs: LayerInputs | None = field(default=None, repr=False)
    _cache: SubexpressionCache | None = field(default=None, repr=False)

    @classmethod
    def from_bench(
        cls, bench: Bench, inputs: LayerInputs, inputs_path: Path, split_seed: int = 0, **kw
    ) -> Evaluator:
        if inputs.num_layers != bench.num_layers or inputs.candidates != bench.candidates:
            raise ValueError(
                f"inputs have {inputs.num_layers} layers / bits {inputs.candidates}, bench "
                f"{bench.path} has {bench.num_layers} layers / bits {bench.candidates}"
            )
        search, heldout = check_rankable(bench, split_seed)
        # The numeric probe runs on the two layers with the smallest inputs.
        sizes = [sum(t.numel() for t in layer.values()) for layer in inputs.tensors]
        probe = tuple(int(i) for i in np.argsort(sizes, kind="stable")[:2])
        ev = cls(
            str(inputs_path), bench.bit_index(), np.asarray(bench.accuracy), search, heldout,
            probe_layers=probe, **kw,
        )  # fmt: skip
        ev._inputs = inputs
        return ev

    def __post_init__(self) -> None:
        check_combine(self.combine)
        self.cross = check_cross(self.cross)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # each process builds its own
        if not self.ship_inputs:
            state["_inputs"] = None
        return state

    def portable(self) -> Evaluator:
        """A copy that pickles with its inputs, for workers without the inputs cache file."""
        return replace(self, ship_inputs=True, _inputs=self.inputs, _cache=None)

    @property
    def inputs(self) -> LayerInputs:
        if self._inputs is None:
            self._inputs = mapped_inputs(self.inputs_path)
        return self._inputs

    @property
    def cache(self) -> SubexpressionCache:
        """Small subexpression results shared by the genomes this evaluator scores (in a
        worker, by every task on the same inputs: ``shared_cache``)."""
        if self._cache is None:
            own = self._inputs
            from_file = own is None or str(own.path) == self.inputs_path
            if from_file and not self.ship_inputs:
                self._cache = shared_cache(self.inputs_path)
            else:  # inputs held in memory (shipped, or not from the cache file)
                self._cache = SubexpressionCache()
        return self._cache

    def shapes(self) -> list[dict[str, tuple[int, ...]]]:
        return self.inputs.shapes()

    def release(self) -> None:
        """Drop this evaluator's mapped input pages from the process (``LayerInputs.release``):
        done after each bench of a multi-bench evaluation, so a process holds the pages of one
        model at a time, not of all of them."""
        if self._inputs is not None:
            self._inputs.release()

    def table(self, expr: Expr) -> np.ndarray:
        return score_table(expr, self.inputs, cache=self.cache)

    def fitness_of_scores(self, scores: np.ndarray, split: str = "search") -> float:
        """Spearman@topk of ``scores`` on a split, rounded to ``FITNESS_DIGITS`` decimals."""
        idx = self.search if split == "search" else self.heldout
        fit = spearman_at_topk(
            rank_scores(scores[idx]), self.accuracy[idx], self.ratios, self.convention
        )
        return round(fit, FITNESS_DIGITS) if np.isfinite(fit) else fit

    def joint(self, expr: Expr) -> bool:
        """Whether this evaluator also scores ``expr`` jointly (``combine`` 'auto')."""
        return self.combine == "auto" and joint_candidate(expr, self.shapes())

    def scores(self, expr: Expr, combine: str = "table") -> np.ndarray:
        """Every bench configuration's score, its layers combined as ``combine`` says
        (``table`` or ``joint``)."""
        if combine == "joint":
            return joint_scores(expr, self.inputs, self.bit_index, self.cross)
        return config_scores(self.table(expr), self.bit_index)

    def report(
        self, expr: Expr, split: str = "heldout", combine: str = "table"
    ) -> dict[str, float]:
        """Correlation report of a proxy on a split (``search``, ``heldout`` or ``all``),
        its layers combined as ``combine`` says."""
        scores = rank_scores(self.scores(expr, combine))
        idx = {"search": self.search, "heldout": self.heldout}.get(split)
        idx = np.arange(len(scores)) if idx is None else idx
        return correlation_report(scores[idx], self.accuracy[idx])

    def probe(self, expr: Expr) -> str | None:
        """Stage 3: numeric probe on the two smallest layers; a reason, or None if passed."""
        try:
            table = score_table(expr, self.inputs, self.probe_layers, self.cache)
        except ShapeError:
            return "shape"
        except RuntimeError:
            return "runtime"
        if not np.all(np.isfinite(table)):
            return "nonfinite"
        if np.all(np.ptp(table, axis=1) == 0):
            return "constant"
        return None

    def evaluate(self, expr: Expr, floor: float | None = None) -> dict:
        """Probe, then full score table and fitness. Never returns NaN as fitness.

        ``floor`` is for multi-bench pruning (``MultiEvaluator.evaluate``); one bench has
        nothing left to skip, so it is ignored here."""
        start = time.perf_counter()
        reason = self.probe(expr)
        out: dict = {"status": "probe", "reason": reason, "fitness": INVALID}
        if reason is None:
            try:
                table = self.table(expr)
            except (ShapeError, RuntimeError):
                table = np.full((1, 1), np.nan)
            if not np.all(np.isfinite(table)):
                out.update(status="invalid", reason="nonfinite")
            else:
                scores = config_scores(table, self.bit_index)
                fit = self.fitness_of_scores(scores)
                if not np.isfinite(fit):
                    out.update(status="invalid", reason="constant")
                else:
                    out.update(status="ok", reason=None, fitness=float(fit), combine="table")
                    out["fingerprint"] = rank_fingerprint(scores[self.search])
                    if self.joint(expr):
                        self._add_joint(expr, out)
        out["seconds"] = time.perf_counter() - start
        return out

    def _add_joint(self, expr: Expr, out: dict) -> None:
        """The joint combination's fitness beside the table's (``fitness_table``,
        ``fitness_joint``); the better one is the fitness (the table on a tie), and the
        fingerprint is of both rankings."""
        try:
            scores = joint_scores(expr, self.inputs, self.bit_index, self.cross)
        except (ShapeError, RuntimeError, ValueError):
            return
        joint = self.fitness_of_scores(scores)
        if not np.isfinite(joint):
            return
        fp = rank_fingerprint(scores[self.search])
        out["fitness_table"], out["fitness_joint"] = out["fitness"], float(joint)
        if joint > out["fitness"]:
            out.update(fitness=float(joint), combine="joint")
        out["fingerprint"] = hashlib.sha1(f"{out['fingerprint']}/{fp}".encode()).hexdigest()[:16]


def check_rankable(
    bench: Bench, split_seed: int = 0, min_search: int = 0, min_heldout: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The bench's search and held-out splits; a clear error when the search split's
    configurations all have the same top-1 (nothing for a proxy to rank), or when a split
    holds fewer configurations than ``min_search`` / ``min_heldout``."""
    search, heldout = bench.split(split_seed)
    if len(search) < min_search or len(heldout) < min_heldout:
        raise ValueError(
            f"bench {bench.path} holds {len(bench)} configurations, {len(search)} to "
            f"search on and {len(heldout)} held out: too few to rank (at least "
            f"{min_search} and {min_heldout}); add configurations with emq bench "
            "build --configs N and the bench's --seed"
        )
    top1 = np.asarray(bench.accuracy)[search]
    if len(top1) and np.ptp(top1) == 0:
        raise ValueError(
            f"bench {bench.path}: every configuration of its search split has the same "
            f"top-1 ({top1[0]:g} %), so no proxy can rank them (an untrained model?); "
            "build the bench from trained weights (--checkpoint)"
        )
    return search, heldout


def rank_fingerprint(scores: np.ndarray) -> str:
    """Stage 4: hash of the order the proxy puts configurations in (semantic identity)."""
    order = np.argsort(rank_scores(scores), kind="stable")
    return hashlib.sha1(order.astype(np.int32).tobytes()).hexdigest()[:16]


def evaluate_text(
    evaluator: Evaluator | MultiEvaluator, text: str, floor: float | None = None
) -> dict:
    """Evaluate a canonical formula given as text (``floor``: ``MultiEvaluator.evaluate``)."""
    return evaluator.evaluate(canonical(from_string(text)), floor)


def evaluate_texts(
    evaluator: Evaluator | MultiEvaluator, texts: list[str], floor: float | None = None
) -> list[dict]:
    """Worker entry point: a batch of formulas, evaluated in order with one torch thread
    (workers share the cores; one thread each is their fastest setting)."""
    torch.set_num_threads(1)
    return [evaluate_text(evaluator, t, floor) for t in texts]


def naive_scores(expr: Expr, inputs: LayerInputs, bit_index: np.ndarray) -> np.ndarray:
    """Config scores the slow way (as EMQ does): the graph re-evaluated per configuration
    and layer on that layer's inputs at the configuration's bit-width."""
    out = np.zeros(len(bit_index))
    for n, row in enumerate(bit_index):
        total = 0.0
        for layer, j in enumerate(row):
            sliced = {
                k: (v[j : j + 1] if v.shape[0] > 1 else v) for k, v in inputs.tensors[layer].items()
            }
            total += float(reduce_to_bits(evaluate(expr, as_float64(sliced)), 1)[0])
        out[n] = total
    return out


def _mean_minus_std(values: list[float]) -> float:
    return float(np.mean(values) - np.std(values))


# How a multi-bench fitness combines the benches' Spearman@topk: the mean; the median (one
# odd bench cannot decide); the worst bench (a proxy must hold everywhere); the mean minus
# the standard deviation (rewards agreement across architectures without letting one bench
# decide). ``emq transfer --pool`` compares them by leave-one-out selection.
AGGREGATES = {
    "mean": np.mean,
    "median": np.median,
    "min": np.min,
    "mean-std": _mean_minus_std,
}


def _largest_mean_minus_std(done: list[float], left: int) -> float:
    """The largest mean - std that ``done`` can reach with ``left`` more values in [-1, 1].

    mean - std is concave (std is a norm of a linear map) and symmetric in the values not yet
    known, so its maximum has them all equal: a concave function of one value ``t``, found
    by ternary search on [-1, 1].
    """

    def value(t: float) -> float:
        return _mean_minus_std([*done, *([t] * left)])

    lo, hi = -1.0, 1.0
    for _ in range(80):  # the bracket shrinks to (2/3)^80 * 2 < 1e-13
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if value(a) < value(b):
            lo = a
        else:
            hi = b
    return max(value(lo), value(hi), value((lo + hi) / 2))


def _with_ones(fn: Callable) -> Callable:
    return lambda done, left: float(fn([*done, *([1.0] * left)]))


# For pruning: an upper bound of the aggregate from the benches evaluated so far (``done``)
# and the number ``left``, over every fitness the others may have (Spearman <= 1). The mean,
# median and min grow with each value, so the bound sets the others to 1; mean - std is not
# monotone (a perfect bench can raise the std), so its bound is a one-dimensional maximum.
AGGREGATE_BOUNDS: dict[str, Callable[[list[float], int], float]] = {
    "mean": _with_ones(np.mean),
    "median": _with_ones(np.median),
    "min": _with_ones(np.min),
    "mean-std": _largest_mean_minus_std,
}


@dataclass
class MultiEvaluator:
    """Scores genomes against several benches at once: their Spearman@topk aggregated (``agg``).

    ``parts[0]`` is the primary bench (held-out report, plots, export). A genome is valid
    only when it is valid on every bench; its static shapes are checked on every model.
    Searching on two views of one model (e.g. nearest and AdaRound rounding, whose accuracy
    rankings differ) rewards proxies that track what quantization does to the network
    rather than one bench's quirks.
    """

    parts: list[Evaluator]
    agg: str = "mean"  # how the benches' fitness combine (``AGGREGATES``)
    _order: list[int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("MultiEvaluator needs at least one Evaluator")
        if self.agg not in AGGREGATES:
            raise ValueError(
                f"unknown bench aggregate {self.agg!r}: expected one of {', '.join(AGGREGATES)}"
            )

    # The primary bench's arrays (plots, held-out scatter).
    @property
    def bit_index(self) -> np.ndarray:
        return self.parts[0].bit_index

    @property
    def accuracy(self) -> np.ndarray:
        return self.parts[0].accuracy

    @property
    def search(self) -> np.ndarray:
        return self.parts[0].search

    @property
    def heldout(self) -> np.ndarray:
        return self.parts[0].heldout

    def portable(self) -> MultiEvaluator:
        return MultiEvaluator([p.portable() for p in self.parts], self.agg, self._order)

    def shapes(self) -> list[dict[str, tuple[int, ...]]]:
        return [s for p in self.parts for s in p.shapes()]

    def table(self, expr: Expr) -> np.ndarray:
        return self.parts[0].table(expr)

    def scores(self, expr: Expr, combine: str = "table") -> np.ndarray:
        return self.parts[0].scores(expr, combine)

    def report(
        self, expr: Expr, split: str = "heldout", combine: str = "table"
    ) -> dict[str, float]:
        return self.parts[0].report(expr, split, combine)

    def reports(
        self, expr: Expr, split: str = "heldout", combine: str = "table"
    ) -> list[dict[str, float]]:
        """One correlation report per bench, in order."""
        out = []
        for part in self.parts:
            out.append(part.report(expr, split, combine))
            part.release()
        return out

    def order(self) -> list[int]:
        """The benches in evaluation order: cheapest first (fewest input elements; shapes
        only, so the order is the same on every machine), so a pruned genome is stopped
        having spent little. The fitness does not depend on this order."""
        if self._order is None:
            sizes = [sum(math.prod(s) for layer in p.shapes() for s in layer.values())
                     for p in self.parts]  # fmt: skip
            self._order = [int(i) for i in np.argsort(sizes, kind="stable")]
        return self._order

    def evaluate(self, expr: Expr, floor: float | None = None) -> dict:
        """Fitness over every bench (``agg``), or the first invalid bench's result.

        With ``floor`` (a steady-state campaign's population minimum: a child below it is
        dropped), evaluation stops as soon as the aggregate cannot reach ``floor`` even if
        the benches not yet evaluated scored their best (``AGGREGATE_BOUNDS``; for the mean,
        a perfect 1 on each): the result is ``pruned``, with that upper bound as its
        fitness, and the genome is dropped as its full evaluation would have had it dropped.
        ``bench_fingerprints`` holds each bench's rank fingerprint (None for a bench a pruned
        genome skipped): two genomes that differ on a bench are not semantic duplicates
        (``Campaign._screen_batch``).
        """
        start = time.perf_counter()
        results: list[dict | None] = [None] * len(self.parts)
        done: list[float] = []  # the table's fitness on each bench so far
        # the joint combination's, while every bench so far has one (``Evaluator.joint``)
        joint: list[float] | None = [] if all(p.joint(expr) for p in self.parts) else None
        for i in self.order():
            part = self.parts[i]
            res = part.evaluate(expr)
            part.release()
            if res["status"] != "ok":
                res["seconds"] = time.perf_counter() - start
                return res
            results[i] = res
            done.append(res.get("fitness_table", res["fitness"]))
            if joint is not None:
                joint = joint + [res["fitness_joint"]] if "fitness_joint" in res else None
            left = len(self.parts) - len(done)
            if floor is not None and left:
                # A margin of 1e-9 (far below the rounding step) so that summation order
                # or the bound's search cannot put the full fitness above it.
                bounds = [AGGREGATE_BOUNDS[self.agg](f, left) for f in (done, joint) if f]
                bound = round(max(bounds) + 1e-9, FITNESS_DIGITS)
                if bound < floor:
                    return {
                        "status": "pruned", "reason": f"below {floor:g} after {len(done)} "
                        f"of {len(self.parts)} benches",
                        "fitness": bound,
                        "bench_fingerprints": [r and r["fingerprint"] for r in results],
                        "seconds": time.perf_counter() - start,
                    }  # fmt: skip
        fits, combine = [r.get("fitness_table", r["fitness"]) for r in results], "table"
        fitness = round(float(AGGREGATES[self.agg](fits)), FITNESS_DIGITS)
        out: dict = {}
        if joint is not None:
            joint_fits = [r["fitness_joint"] for r in results]
            joint_fitness = round(float(AGGREGATES[self.agg](joint_fits)), FITNESS_DIGITS)
            out = {"fitness_table": fitness, "fitness_joint": joint_fitness}
            if joint_fitness > fitness:  # the table on a tie
                fits, combine, fitness = joint_fits, "joint", joint_fitness
        fps = [r["fingerprint"] for r in results]
        return {
            "status": "ok", "reason": None, "fitness": fitness, "combine": combine, **out,
            "fitness_per_bench": fits, "bench_fingerprints": fps,
            "fingerprint": hashlib.sha1("/".join(fps).encode()).hexdigest()[:16],
            "seconds": time.perf_counter() - start,
        }  # fmt: skip
