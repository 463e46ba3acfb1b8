"""The leave-one-architecture-out report: ``transfer.csv``, ``transfer.json`` and
``transfer.png`` (heatmap of S@topk, proxy x left-out model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emq.metrics import CORR_KEYS
from emq.reports.common import clean, number, write_csv, write_json

EVOLVED = "evolved"  # the proxy column of the evolved proxy's rows


def write_transfer(out: Path, rows: Sequence[dict], summary: Sequence[dict]) -> None:
    """``transfer.csv`` (one row per left-out model, seed and proxy), ``transfer.json``
    (rows and per-model summary) and ``transfer.png`` (heatmap of S@topk)."""
    cols = ["left_out", "seed", "proxy", "kind", *CORR_KEYS, "formula", "combine"]
    write_csv(out / "transfer.csv", cols, rows)
    write_json(out / "transfer.json", {"rows": [clean(r) for r in rows],
                                        "summary": [clean(s) for s in summary]})  # fmt: skip
    plot_heatmap(rows, out / "transfer.png")


def plot_heatmap(rows: Sequence[dict], path: Path) -> None:
    """Proxy x left-out model heatmap of S@topk (the evolved proxy: mean over seeds)."""
    models = list(dict.fromkeys(r["left_out"] for r in rows))
    proxies = list(dict.fromkeys(r["proxy"] for r in rows))
    grid = np.full((len(proxies), len(models)), np.nan)
    for i, p in enumerate(proxies):
        for j, m in enumerate(models):
            vals = [
                number(r["spearman@topk"]) for r in rows if r["proxy"] == p and r["left_out"] == m
            ]
            if vals:
                grid[i, j] = np.nanmean(vals) if np.isfinite(vals).any() else np.nan
    fig = Figure(figsize=(1.1 * len(models) + 3, 0.42 * len(proxies) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(grid * 100, cmap="RdYlGn", vmin=-40, vmax=100, aspect="auto")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_yticks(range(len(proxies)), proxies)
    for i in range(len(proxies)):
        for j in range(len(models)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j] * 100:.0f}", ha="center", va="center", fontsize=7)
    ax.set_title("S@topk (%) on the left-out model (evolved: mean over seeds)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
