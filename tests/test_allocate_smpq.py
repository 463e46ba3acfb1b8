"""Tests for emq.allocate.smpq: exact vs Monte-Carlo Shapley, momentum, truncation, budget."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.ptq import relative_bops
from emq.allocate.groups import default_groups
from emq.allocate.sensitivity import SensitivityTable
from emq.allocate.smpq import (
    BETA,
    PERMUTATIONS,
    THRESHOLD,
    XI,
    allocate_smpq,
    coalition_choice,
    exact_shapley,
    monte_carlo_shapley,
    table_value,
)

MACS = [1000, 400, 80]


def additive_game(seed: int):
    """3 layers x 2 options; value = sum of a per-layer number per chosen option."""
    f = np.random.default_rng(seed).normal(size=(3, 2))

    def value(choice):
        return float(sum(f[layer, c] for layer, c in enumerate(choice)))

    return f, value


def test_paper_defaults():
    assert (BETA, XI, PERMUTATIONS, THRESHOLD) == (0.8, 0.1, 10, 0.5)


def test_coalition_sets_highest_enabled_or_lowest():
    assert coalition_choice([False, True, True, False, False], [3, 2]) == (1, 1)
    assert coalition_choice([True, True, True, False, True], [3, 2]) == (0, 1)


@pytest.mark.parametrize("seed", range(4))
def test_monte_carlo_recovers_exact_shapley_on_an_additive_game(seed):
    f, value = additive_game(seed)
    exact = exact_shapley(value, [2, 2, 2])
    # closed form: the top option of a layer is worth f[top] - f[low], the low option 0
    assert np.allclose(exact, np.column_stack([f[:, 0] - f[:, 1], np.zeros(3)]).ravel())
    est = monte_carlo_shapley(value, [2, 2, 2], permutations=7, threshold=None, seed=seed)
    assert np.allclose(est.shapley, exact)


def test_momentum_update_matches_the_paper_formula():
    _, value = additive_game(0)
    est = monte_carlo_shapley(value, [2, 2, 2], permutations=3, threshold=None, beta=0.6, xi=0.2)
    psi = est.shapley / np.linalg.norm(est.shapley)  # every permutation gives the same psi
    q, alpha = np.zeros(6), np.zeros(6)
    for _ in range(3):
        q = 0.6 * q + 0.4 * psi
        alpha = alpha + 0.2 * q / np.linalg.norm(q)
    assert np.allclose(est.alpha, alpha)


def test_monte_carlo_converges_on_a_non_additive_game():
    def value(choice):  # interacting layers: the product of per-layer qualities
        q = [(1.0, 0.7, 0.2), (1.0, 0.9, 0.5)]
        return q[0][choice[0]] * q[1][choice[1]]

    exact = exact_shapley(value, [3, 3])
    est = monte_carlo_shapley(value, [3, 3], permutations=4000, threshold=None, seed=1)
    assert np.allclose(est.shapley, exact, atol=0.02)
    assert np.isclose(exact.sum(), value((0, 0)) - value((2, 2)))  # efficiency


def test_truncation_cuts_permutations_once_the_value_collapses():
    def value(choice):
        return 1.0 if all(c == 0 for c in choice) else 0.0

    est = monte_carlo_shapley(value, [2, 2, 2, 2], permutations=20, threshold=0.5, seed=0)
    assert est.truncated == 20
    plain = monte_carlo_shapley(value, [2, 2, 2, 2], permutations=20, threshold=None, seed=0)
    assert plain.truncated == 0
    assert np.isclose(est.shapley.sum(), plain.shapley.sum())


def test_seeded_and_reproducible():
    _, value = additive_game(3)
    a = monte_carlo_shapley(value, [2, 2, 2], permutations=5, seed=11)
    b = monte_carlo_shapley(value, [2, 2, 2], permutations=5, seed=11)
    assert np.array_equal(a.alpha, b.alpha) and a.choice == b.choice


def sens_table() -> SensitivityTable:
    groups = default_groups(["a", "b", "c"])
    values = (np.array([0.0, 0.1, 0.5, 3.0]), np.array([0.0, 0.2, 0.3, 0.4]),
              np.array([0.0, 0.05, 1.0, 2.0]))  # fmt: skip
    return SensitivityTable(tuple(groups), values, "hand", 0.0, 0)


@pytest.mark.parametrize("budget", [0.25, 0.3, 0.4, 0.55, 0.7, 1.0])
@pytest.mark.parametrize("lam", [None, 0.0, 2.0])
def test_smpq_never_exceeds_the_budget(budget, lam):
    table = sens_table()
    res = allocate_smpq(table.groups, MACS, budget, lambda x: table_value(table, MACS, x), lam)
    assert relative_bops(MACS, res.w_bits, res.a_bits) <= budget + 1e-12
    again = allocate_smpq(table.groups, MACS, budget, lambda x: table_value(table, MACS, x), lam)
    assert again.choice == res.choice


def test_smpq_budget_below_floor_is_an_error():
    table = sens_table()
    with pytest.raises(ValueError, match="below the lowest candidates"):
        allocate_smpq(table.groups, MACS, 0.1, lambda x: table_value(table, MACS, x))
