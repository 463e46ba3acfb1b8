"""Tests for emq.allocate.sqnr: greedy order, BOPs budgets, accuracy-target searches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from allocate_tiny import tiny_net

from benchmark.data import calibration_batch
from benchmark.ptq import QuantSim, layer_table, relative_bops
from emq.allocate.groups import default_groups, group_costs, layer_bits
from emq.allocate.sensitivity import SensitivityTable, measured_sensitivity
from emq.allocate.sqnr import (
    ParetoFront,
    ParetoPoint,
    allocate_sqnr,
    flip_order,
    greedy_front,
    lowest_bops,
    search_accuracy,
)

MACS = [1000, 400, 80]


def hand_table() -> SensitivityTable:
    """Three layers, candidates W8/W4/W3/W2 (A8), sensitivities chosen by hand."""
    groups = default_groups(["a", "b", "c"])
    values = (
        np.array([0.0, 0.1, 0.5, 3.0]),
        np.array([0.0, 0.2, 0.3, 0.4]),
        np.array([0.0, 0.05, 2.0, 1.0]),  # W2 "less sensitive" than W3: W3 is skipped after
    )
    return SensitivityTable(tuple(groups), values, "hand", 0.0, 0)


def test_greedy_front_follows_the_sensitivity_list():
    table = hand_table()
    order = flip_order(table, group_costs(table.groups, MACS))
    sens = [float(table.values[g][c]) for g, c in order]
    assert sens == sorted(sens)
    front = greedy_front(table, MACS)
    applied = [p.flipped for p in front[1:]]
    # the list order, minus flips to a candidate the group is already at or below
    expected, cur = [], [0, 0, 0]
    for g, c in order:
        if c > cur[g]:
            expected.append((g, c))
            cur[g] = c
    assert applied == expected
    assert (2, 2) not in applied  # c went W4 -> W2 before W3 came up
    assert front[-1].choice == (3, 3, 3)
    for p in front:
        w, a = layer_bits(table.groups, p.choice, 3)
        assert np.isclose(p.relative_bops, relative_bops(MACS, w, a))
    assert all(x.relative_bops > y.relative_bops for x, y in zip(front, front[1:], strict=False))


def test_measured_front_on_a_real_model_follows_sqnr_order():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, _ = calibration_batch(64, 0)
        net = tiny_net()
        sim = QuantSim(net, x)
        groups = default_groups(["0", "3", "7"])
        table = measured_sensitivity(sim, x[:32], groups, cache=False)
        macs = [i.macs for i in layer_table(net)]
    finally:
        torch.set_num_threads(threads)
    front = greedy_front(table, macs)
    sens = [float(table.values[g][c]) for g, c in (p.flipped for p in front[1:])]
    assert sens == sorted(sens)  # applied flips keep the list order (least sensitive first)


@pytest.mark.parametrize("budget", np.linspace(0.25, 1.0, 31))
def test_bops_budget_is_never_exceeded(budget):
    table = hand_table()
    res = allocate_sqnr(table, MACS, budget_bops=float(budget))
    assert relative_bops(MACS, res.w_bits, res.a_bits) <= budget + 1e-12
    assert res.evaluations == 0
    earlier = [p for p in res.front if p.flips < res.point.flips]
    assert all(p.relative_bops > budget for p in earlier)  # the first point that fits


def test_impossible_budget_and_target_are_clear_errors():
    table = hand_table()
    assert np.isclose(lowest_bops(table.groups, MACS), 0.25)
    with pytest.raises(ValueError, match="below the lowest candidates"):
        allocate_sqnr(table, MACS, budget_bops=0.2)
    with pytest.raises(ValueError, match="above the full-precision accuracy"):
        allocate_sqnr(table, MACS, accuracy_target=95.0, evaluate=lambda w, a: 90.0,
                      fp_accuracy=92.0)  # fmt: skip
    with pytest.raises(ValueError, match="unreachable"):
        allocate_sqnr(table, MACS, accuracy_target=91.0, evaluate=lambda w, a: 90.0)


def monotone_front(acc: np.ndarray) -> ParetoFront:
    """A front of ``len(acc)`` points whose k-th point measures ``acc[k]`` (probed lazily)."""
    points = [ParetoPoint(k, (k,), 1.0 - k / len(acc), None) for k in range(len(acc))]
    return ParetoFront(points, lambda choice: float(acc[choice[0]]))


@pytest.mark.parametrize("seed", range(8))
def test_searches_agree_with_a_linear_scan(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    acc = 95.0 - np.cumsum(rng.exponential(0.3, n) * (rng.random(n) < 0.8))
    for target in np.concatenate([acc[rng.integers(0, n, 5)], rng.uniform(acc[-1] - 1, acc[0], 5)]):
        if target > acc[0]:
            continue
        found = {m: search_accuracy(monotone_front(acc), float(target), m)
                 for m in ("linear", "binary", "interpolation")}  # fmt: skip
        assert len(set(found.values())) == 1, found
        k = found["linear"]
        assert acc[k] >= target and (k == n - 1 or acc[k + 1] < target)


def test_binary_searches_use_fewer_evaluations():
    acc = np.linspace(95.0, 10.0, 400)
    counts = {}
    for m in ("linear", "binary", "interpolation"):
        front = monotone_front(acc)
        search_accuracy(front, 60.0, m)
        counts[m] = front.evaluations
    assert counts["binary"] <= 12 < counts["linear"]
    assert counts["interpolation"] <= counts["binary"]
