"""Rank correlation between proxy scores and measured accuracy (scipy.stats)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

RATIOS = (0.2, 0.5, 1.0)
CONVENTIONS = ("predicted", "true")

# The correlation columns of reports (keys of ``correlation_report``).
CORR_KEYS = ("spearman@20%", "spearman@50%", "spearman@100%", "spearman@topk", "kendall")


def _finite_corr(value: float) -> float:
    return float(value) if math.isfinite(value) else float("nan")


def spearman(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman rho; NaN when either side is constant or non-finite."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if len(pred) < 2 or not np.all(np.isfinite(pred)) or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan")
    return _finite_corr(stats.spearmanr(pred, true).statistic)


def kendall(pred: np.ndarray, true: np.ndarray) -> float:
    """Kendall tau-b; NaN when either side is constant or non-finite."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if len(pred) < 2 or not np.all(np.isfinite(pred)) or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan")
    return _finite_corr(stats.kendalltau(pred, true).statistic)


def spearman_topk(
    pred: np.ndarray, true: np.ndarray, ratio: float, convention: str = "predicted"
) -> float:
    """Spearman rho inside the top ``k = max(2, ceil(ratio * N))`` configurations.

    (At least two points: a correlation of one point is undefined.)

    ``convention="predicted"`` (EMQ's) takes the top-k by predicted score; ``"true"`` takes
    the top-k by measured accuracy.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown top-k convention {convention!r}: expected {CONVENTIONS}")
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    k = max(2, math.ceil(ratio * len(pred)))
    key = pred if convention == "predicted" else true
    if not np.all(np.isfinite(key)):
        return float("nan")
    top = np.argsort(-key, kind="stable")[:k]
    return spearman(pred[top], true[top])


def spearman_at_topk(
    pred: np.ndarray,
    true: np.ndarray,
    ratios: Sequence[float] = RATIOS,
    convention: str = "predicted",
) -> float:
    """EMQ's fitness: mean of Spearman@top-k over ``ratios`` (NaN if any is undefined)."""
    return float(np.mean([spearman_topk(pred, true, r, convention) for r in ratios]))


def correlation_report(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Spearman@20/50/100 %, their mean, Kendall tau, and the true-top-k variant."""
    out = {f"spearman@{int(r * 100)}%": spearman_topk(pred, true, r) for r in RATIOS}
    out["spearman@topk"] = spearman_at_topk(pred, true)
    out["spearman@topk(true)"] = spearman_at_topk(pred, true, convention="true")
    out["kendall"] = kendall(pred, true)
    return out
