"""EMQ's Table 1: every baseline's correlation with a bench's measured accuracy, and its cost."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmark.bench import Bench
from benchmark.factory import build_model
from emq.baselines.registry import BASELINES, get_baseline
from emq.metrics import CORR_KEYS, correlation_report
from emq.reports.baselines import write_baselines
from emq.score import model_context
from emq.scoring import ScoreContext, chunk_tables, config_scores

SPLITS = ("heldout", "search", "all")


@dataclass(frozen=True)
class BaselineTable:
    """Table 1 of one bench split: a row per baseline (correlations, costs), each
    baseline's score table ``S[L, B]``, its scores of the split's configurations, and
    their measured top-1."""

    rows: list[dict]
    tables: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    accuracy: np.ndarray


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
    model = build_model(bench.model, checkpoint)
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


def evaluate_baselines(
    bench: Bench,
    split: str = "heldout",
    names: Sequence[str] | None = None,
    seed: int = 0,
    cache: Path | str | None | bool = None,
    *,
    checkpoint: Path | str | None = None,
    batch: int = 128,
    context: ScoreContext | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> BaselineTable:
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

    Returns the rows (one per baseline), the score tables, the configuration scores and
    the split's measured accuracy; ``run_baselines`` also writes them.
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

    def opts_of(b) -> dict:
        opts = dict(options.get(b.name, {}))
        if "seed" in b.options():
            opts.setdefault("seed", seed)
        return opts

    # The training-free baselines on the calibration chunks (emq.scoring.chunk_tables: each
    # chunk's inputs computed once for all of them, the tables averaged); the measured ones
    # run on the whole batch below.
    free = [b for b in chosen if not b.measured]
    needs = any(b.needs_inputs for b in free)
    done = chunk_tables([partial(b, **opts_of(b)) for b in free], ctx, needs)
    found = {b.name: (t, s) for b, t, s in zip(free, done.tables, done.seconds, strict=True)}
    inputs_s, inputs_cached = done.inputs_s, done.inputs_cached

    rows, tables, scores = [], {}, {}
    for b in tqdm(chosen, desc="baselines", unit="proxy", disable=not progress):
        if b.name in found:
            table, table_s = found[b.name]
        else:
            start = time.perf_counter()
            table = b(ctx, **opts_of(b))
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
    return BaselineTable(rows, tables, scores, accuracy)


def run_baselines(
    bench: Bench,
    split: str = "heldout",
    out_dir: Path | str | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    cache: Path | str | None | bool = None,
    **keywords: Any,
) -> list[dict]:
    """``evaluate_baselines`` (the same arguments, keyword ones included; costs there),
    written into ``out_dir`` as ``baselines.csv``, ``baselines.png`` and ``tables.npz``
    (``emq.reports.baselines``; default ``runs/baselines-<bench file stem>/``, created).
    Returns the rows.
    """
    result = evaluate_baselines(bench, split, names, seed, cache, **keywords)
    out = Path(out_dir) if out_dir is not None else default_out_dir(bench)
    write_baselines(
        out, result.rows, result.tables, result.scores, result.accuracy, bench.candidates,
        title=f"{bench.model}, {split}",
    )  # fmt: skip
    return result.rows
