"""Tests for emq.allocate.ilp: the exact optimum under a BOPs budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_allocate_sqnr import MACS, hand_table

from benchmark.ptq import relative_bops
from emq.allocate.groups import default_groups, group_costs
from emq.allocate.ilp import allocate_ilp, solve_choice
from emq.allocate.sensitivity import SensitivityTable
from emq.allocate.sqnr import allocate_sqnr


def brute_force(values, costs, budget):
    """Least total sensitivity over every configuration that fits (enumeration)."""
    best = None
    for choice in itertools.product(*(range(len(v)) for v in values)):
        cost = sum(c[k] for c, k in zip(costs, choice, strict=True))
        if cost > budget + 1e-12:
            continue
        sens = sum(v[k] for v, k in zip(values, choice, strict=True))
        if best is None or sens < best[0] - 1e-12:
            best = (sens, choice)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_ilp_matches_enumeration_on_random_problems(seed):
    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(5)]
    groups = default_groups(names)
    macs = rng.integers(50, 5000, size=len(names)).tolist()
    total = 64 * sum(macs)
    costs = [np.round(c * total) for c in group_costs(groups, macs)]  # integer BOPs
    values = [np.concatenate([[0.0], np.sort(rng.random(3))]) for _ in names]
    budget = float(np.floor(rng.uniform(0.3, 0.9) * total))
    best_sens, _ = brute_force(values, costs, budget)
    choice = solve_choice(values, costs, budget)
    got = sum(v[k] for v, k in zip(values, choice, strict=True))
    assert got == pytest.approx(best_sens, abs=1e-9)
    assert sum(c[k] for c, k in zip(costs, choice, strict=True)) <= budget + 1e-9


@pytest.mark.parametrize("budget", np.linspace(0.25, 1.0, 16))
def test_ilp_never_exceeds_the_budget_and_beats_the_greedy_front(budget):
    table = hand_table()
    res = allocate_ilp(table, MACS, float(budget))
    assert relative_bops(MACS, res.w_bits, res.a_bits) <= budget + 1e-12
    assert res.relative_bops == pytest.approx(relative_bops(MACS, res.w_bits, res.a_bits))
    greedy = allocate_sqnr(table, MACS, budget_bops=float(budget))
    greedy_sens = sum(v[k] for v, k in zip(table.values, greedy.point.choice, strict=True))
    assert res.sensitivity <= greedy_sens + 1e-12


def test_ilp_uses_the_budget_where_the_greedy_front_does_not():
    # Layer a: huge, barely sensitive at W4; layer b: tiny and sensitive. At 0.5 the greedy
    # front flips b first (least sensitive pair) and then must push a to W2; the ILP puts
    # a at W4 and keeps b at W8.
    groups = default_groups(["a", "b"], [(8, 8), (4, 8), (2, 8)])
    values = (np.array([0.0, 0.2, 5.0]), np.array([0.0, 0.1, 0.15]))
    table = SensitivityTable(tuple(groups), values, "hand", 0.0, 0)
    macs = [1000, 10]
    ilp = allocate_ilp(table, macs, 0.51)
    assert ilp.w_bits == [4, 8]
    greedy = allocate_sqnr(table, macs, budget_bops=0.51)
    assert greedy.w_bits == [4, 2] and ilp.sensitivity < sum(
        v[k] for v, k in zip(values, greedy.point.choice, strict=True)
    )


def test_ties_keep_the_higher_precision():
    groups = default_groups(["a", "b"])
    values = (np.zeros(4), np.array([0.0, 1.0, 2.0, 3.0]))  # a: every width is free
    table = SensitivityTable(tuple(groups), values, "hand", 0.0, 0)
    res = allocate_ilp(table, [100, 100], 1.0)
    assert res.w_bits == [8, 8]


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="below the lowest candidates"):
        allocate_ilp(hand_table(), MACS, 0.1)
    with pytest.raises(ValueError, match="one cost per candidate"):
        solve_choice([np.zeros(2)], [np.zeros(3)], 1.0)


def test_next_best_solves_stop_at_their_time_limit():
    """The next-best choices (verification candidates) come from exact solves with no-good
    cuts, each given ``next_time_limit`` seconds; the first (the answer) has no limit."""
    from emq.allocate.ilp import solve_choices

    rng = np.random.default_rng(0)
    values = [np.sort(rng.random(4))[::-1] * -1 + 1 for _ in range(12)]  # 0 at the widest
    costs = [np.array([2.0, 3.0, 4.0, 8.0]) for _ in values]
    limits = [(costs, 12 * 4.0)]
    full = solve_choices(values, limits, 5)
    assert len(full) == 5 and len(set(full)) == 5
    cut_short = solve_choices(values, limits, 5, next_time_limit=0.0)
    assert cut_short == full[:1]
