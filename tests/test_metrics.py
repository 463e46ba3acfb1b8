"""Rank correlations: Spearman@topk conventions against an independent scipy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from emq.metrics import (
    RATIOS,
    correlation_report,
    kendall,
    spearman,
    spearman_at_topk,
    spearman_topk,
)

# Top half by prediction (configs 0-2) is ranked backwards; top half by accuracy (3-5) is
# ranked correctly, so the two conventions give -1 and +1.
PRED = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
TRUE = np.array([1.0, 2.0, 3.0, 6.0, 5.0, 4.0])


def _random_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n)
    pred = true + rng.normal(scale=1.0, size=n)  # correlated, no ties
    return pred, true


def _reference(pred: np.ndarray, true: np.ndarray, by: str) -> float:
    """Mean over r of scipy's Spearman rho inside the ceil(r*N) best configurations."""
    n, key = len(pred), (pred if by == "predicted" else true)
    rhos = []
    for r in RATIOS:
        k = -(-n * round(r * 10) // 10)  # ceil(r * N) in integer arithmetic
        top = sorted(range(n), key=lambda i: key[i], reverse=True)[:k]
        rhos.append(stats.spearmanr(pred[top], true[top]).statistic)
    return float(np.mean(rhos))


def test_conventions_differ_on_a_hand_made_example():
    assert spearman_topk(PRED, TRUE, 0.5) == pytest.approx(-1.0)
    assert spearman_topk(PRED, TRUE, 0.5, convention="predicted") == pytest.approx(-1.0)
    assert spearman_topk(PRED, TRUE, 0.5, convention="true") == pytest.approx(1.0)
    full = stats.spearmanr(PRED, TRUE).statistic
    assert spearman_topk(PRED, TRUE, 1.0) == pytest.approx(full)
    assert spearman_topk(PRED, TRUE, 1.0, convention="true") == pytest.approx(full)
    assert spearman_at_topk(PRED, TRUE, ratios=(0.5,)) == pytest.approx(-1.0)
    assert spearman_at_topk(PRED, TRUE, ratios=(0.5,), convention="true") == pytest.approx(1.0)


@pytest.mark.parametrize("n", [10, 35, 37, 101, 250])
@pytest.mark.parametrize("convention", ["predicted", "true"])
def test_spearman_at_topk_matches_independent_scipy(n, convention):
    pred, true = _random_pair(n, seed=n)
    expected = _reference(pred, true, convention)
    assert spearman_at_topk(pred, true, convention=convention) == pytest.approx(expected)
    singles = [spearman_topk(pred, true, r, convention) for r in RATIOS]
    assert np.mean(singles) == pytest.approx(expected)


def test_topk_size_is_ceil_of_ratio_times_n():
    # With N = 11 and r = 0.2, k = 3: the 3 best by prediction are ranked perfectly only
    # if exactly those three are used (a 4th config breaks the order).
    pred = np.arange(11, 0, -1, dtype=float)
    true = np.array([9.0, 8.0, 7.0, 10.0] + [0.0] * 7) + np.arange(11) * 1e-3
    assert math.ceil(0.2 * 11) == 3
    assert spearman_topk(pred, true, 0.2) == pytest.approx(1.0)
    assert spearman_topk(pred, true, 4 / 11) < 0.5


def test_constant_predictions_give_nan():
    true = np.arange(10.0)
    const = np.full(10, 3.0)
    assert math.isnan(spearman(const, true))
    assert math.isnan(spearman_topk(const, true, 1.0))
    assert math.isnan(spearman_at_topk(const, true))
    assert math.isnan(kendall(const, true))
    assert math.isnan(spearman_at_topk(true, const))


def test_non_finite_predictions_give_nan():
    pred, true = _random_pair(20, seed=0)
    pred[3] = np.nan
    assert math.isnan(spearman_at_topk(pred, true))
    pred[3] = np.inf
    assert math.isnan(spearman(pred, true))


def test_kendall_equals_scipy():
    for seed in range(5):
        pred, true = _random_pair(40, seed)
        pred = np.round(pred, 1)  # ties exercise tau-b
        assert kendall(pred, true) == pytest.approx(stats.kendalltau(pred, true).statistic)


def test_spearman_equals_scipy():
    pred, true = _random_pair(50, seed=3)
    assert spearman(pred, true) == pytest.approx(stats.spearmanr(pred, true).statistic)
    assert spearman(pred, -true) == pytest.approx(-spearman(pred, true))


def test_correlation_report():
    pred, true = _random_pair(60, seed=4)
    report = correlation_report(pred, true)
    assert set(report) == {
        "spearman@20%", "spearman@50%", "spearman@100%", "spearman@topk",
        "spearman@topk(true)", "kendall",
    }  # fmt: skip
    assert report["spearman@20%"] == spearman_topk(pred, true, 0.2)
    assert report["spearman@100%"] == pytest.approx(stats.spearmanr(pred, true).statistic)
    assert report["spearman@topk"] == pytest.approx(_reference(pred, true, "predicted"))
    assert report["spearman@topk(true)"] == pytest.approx(_reference(pred, true, "true"))
    assert report["kendall"] == pytest.approx(stats.kendalltau(pred, true).statistic)
    assert all(isinstance(v, float) for v in report.values())


def test_unknown_convention_raises():
    with pytest.raises(ValueError, match="'best'"):
        spearman_topk(PRED, TRUE, 0.5, convention="best")
    with pytest.raises(ValueError, match="'Predicted'"):
        spearman_at_topk(PRED, TRUE, convention="Predicted")
