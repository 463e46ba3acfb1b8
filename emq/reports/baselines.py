"""The baselines report (EMQ's Table 1): ``baselines.csv``, ``baselines.png`` (score vs.
accuracy per baseline), ``tables.npz`` (the score tables) and the text table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from emq.metrics import CORR_KEYS
from emq.reports.common import write_csv

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


def write_baselines(
    out: Path,
    rows: Sequence[dict],
    tables: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    accuracy: np.ndarray,
    candidates: Sequence[int],
    title: str = "",
) -> None:
    """Write ``baselines.csv`` (one row per baseline: correlations in [-1, 1], NaN when
    undefined; costs in s), ``baselines.png`` and ``tables.npz`` into ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "baselines.csv", CSV_COLUMNS, rows)
    plot_scatter(scores, accuracy, rows, out / "baselines.png", title=title)
    np.savez(out / "tables.npz", candidates=np.asarray(candidates), **tables)


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


def format_baselines(rows: Sequence[dict]) -> str:
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
