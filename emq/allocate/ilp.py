"""The ILP allocator: the exact optimum of phase 1's additive sensitivities under a BOPs budget.

HAWQ-V3 (Yao et al., ICML 2021) allocates bits by integer linear programming: one binary
variable per (group, candidate), exactly one candidate per group, total BOPs (and/or total
weight memory: one more linear constraint) within the budget, total sensitivity minimal.
With the sensitivities of phase 1 (measured SQNR noise power, or a Scorer's predicted loss
of score ``S[l, top] - S[l, b]``) that is the configuration the scorer itself ranks best
among all that fit the budget - a proxy's config score is additive, so nothing better exists
for it. The SQNR allocator's greedy front is a heuristic for the same problem: it flips in
order of sensitivity regardless of the BOPs a flip saves, so at a budget it can keep a
costly layer high and push cheap ones low. The ILP sees costs and sensitivities together.

Solved by ``scipy.optimize.milp`` (HiGHS): a few dozen groups and a handful of candidates
each solve in milliseconds. No forward pass; BOPs and weight-size budgets only (an accuracy
target needs measured points: use the SQNR allocator's front). The next-best solutions,
for a measured phase 2, come from no-good cuts: each found choice is excluded and the
program solved again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import block_diag
from scipy.optimize import Bounds, LinearConstraint, milp

from emq.allocate.budget import check_size_budget, group_sizes
from emq.allocate.groups import group_costs, layer_bits
from emq.allocate.registry import AllocationRequest, allocator
from emq.allocate.result import Allocation
from emq.allocate.sensitivity import SensitivityTable
from emq.allocate.sqnr import EPS, check_bops_budget


@dataclass(frozen=True)
class IlpResult:
    """Chosen candidate per group, its bits, relative BOPs and total sensitivity."""

    choice: tuple[int, ...]
    w_bits: list[int]
    a_bits: list[int]
    relative_bops: float
    sensitivity: float
    alternatives: tuple[tuple[int, ...], ...] = ()  # next-best choices, best first


def solve_choice(
    values: Sequence[np.ndarray], costs: Sequence[np.ndarray], budget: float
) -> tuple[int, ...]:
    """Candidate index per group minimizing ``sum values[g][c]`` with ``sum costs[g][c] <= budget``.

    A layer whose costlier candidates are no more sensitive keeps them while the budget
    allows (``_keep_free_precision``). Give integer costs (e.g. BOPs) for an exact budget:
    the solver's feasibility tolerance (1e-7) cannot then admit an excess.
    """
    return solve_choices(values, [(costs, budget)], 1)[0]


NEXT_TIME_LIMIT = 10.0  # seconds for all next-best solves together (the first has no limit)


def solve_choices(
    values: Sequence[np.ndarray],
    limits: Sequence[tuple[Sequence[np.ndarray], float]],
    count: int = 1,
    next_time_limit: float = NEXT_TIME_LIMIT,
) -> list[tuple[int, ...]]:
    """The ``count`` best choices under every ``(costs, budget)`` limit, best first.

    The first is ``solve_choice``'s optimum; each next one is the optimum once every choice
    found so far is excluded by a no-good cut (``sum of its picked variables <= groups - 1``),
    so they come in order of total sensitivity. Fewer are returned when fewer fit, or when
    the next ones take more than ``next_time_limit`` seconds in all: many raw optima can map
    to one choice (``_keep_free_precision``), each excluded by a cut of its own, and on
    EfficientNet-lite at 0.5 BOPs with a 512-image table they never ran out. The first limit
    is the cost that spare budget is spent on (``_keep_free_precision``).
    """
    sizes = [len(v) for v in values]
    for costs, _ in limits:
        if [len(c) for c in costs] != sizes:
            raise ValueError("every group needs one cost per candidate")
    sens = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
    sens = sens / max(float(np.abs(sens).max()), 1e-300)  # scale-free solver tolerances
    one_each = block_diag(*(np.ones((1, n)) for n in sizes))  # one candidate per group
    feasible = [LinearConstraint(one_each, 1, 1)]
    for costs, budget in limits:
        cost = np.concatenate([np.asarray(c, dtype=np.float64) for c in costs])
        feasible.append(LinearConstraint(cost[None, :], -np.inf, budget))
    starts = np.cumsum([0, *sizes[:-1]])
    cuts: list[np.ndarray] = []
    found: list[tuple[int, ...]] = []
    deadline = math.inf
    while len(found) < count:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        cut = [LinearConstraint(np.stack(cuts), -np.inf, len(sizes) - 1)] if cuts else []
        res = milp(
            sens,
            integrality=np.ones(len(sens)),
            bounds=Bounds(0, 1),
            constraints=feasible + cut,
            # exact optimum (no 1e-4 relative gap); presolve off: on some of these programs
            # HiGHS's presolve prints a C++ debug line to stdout, and they are small anyway
            options={"mip_rel_gap": 0.0, "presolve": False}
            | ({"time_limit": left} if found else {}),
        )
        if not res.success:
            if not found:
                budgets = ", ".join(f"{b:g}" for _, b in limits)
                raise ValueError(f"no configuration meets the budget {budgets}: {res.message}")
            break  # every feasible choice is found already, or the next took too long
        picks = np.split(np.round(res.x), np.cumsum(sizes)[:-1])
        raw = tuple(int(np.argmax(p)) for p in picks)
        choice = _keep_free_precision(raw, values, limits)
        for c in {raw, choice}:  # both excluded: the raw one would map to the same choice
            row = np.zeros(len(sens))
            row[starts + np.asarray(c)] = 1.0
            cuts.append(row)
        if choice not in found:
            found.append(choice)
        if deadline == math.inf:
            deadline = time.perf_counter() + next_time_limit
    return found


def _keep_free_precision(choice, values, limits) -> tuple[int, ...]:
    """Raise a group to a costlier candidate of no greater sensitivity while the budget allows.

    The total sensitivity cannot grow, so the choice stays optimal; among equally good
    choices this one spends the budget (the first limit's cost) on precision instead of
    leaving it unused, every other limit still met.
    """
    choice = list(choice)
    spent = [sum(float(c[k]) for c, k in zip(costs, choice, strict=True)) for costs, _ in limits]
    main = limits[0][0]
    for g, v in enumerate(values):
        k = choice[g]
        free = [j for j in range(len(v)) if v[j] <= v[k] and main[g][j] > main[g][k]]
        fits = [
            j for j in free
            if all(s - c[g][k] + c[g][j] <= b for s, (c, b) in zip(spent, limits, strict=True))
        ]  # fmt: skip
        if fits:
            j = max(fits, key=lambda j: (main[g][j], -j))
            spent = [s + float(c[g][j] - c[g][k]) for s, (c, _) in zip(spent, limits, strict=True)]
            choice[g] = j
    return tuple(choice)


def allocate_ilp(
    table: SensitivityTable,
    macs: Sequence[int],
    budget_bops: float | None,
    budget_size: float | None = None,
    weights: Sequence[int] | None = None,
    solutions: int = 1,
) -> IlpResult:
    """The configuration of least total sensitivity within relative BOPs and/or weight size.

    ``budget_size`` is a fraction of the W8 weight memory (``weights``: weight elements per
    layer). ``solutions > 1`` also returns the next-best choices (``IlpResult.alternatives``).
    """
    groups = table.groups
    if budget_bops is None and budget_size is None:
        raise ValueError("the ILP allocator needs a BOPs or a weight-size budget")
    limits: list[tuple[list[np.ndarray], float]] = []
    costs = group_costs(groups, macs)
    if budget_bops is not None:
        check_bops_budget(budget_bops, groups, macs)
        # Integer BOPs (MACs x w x a) and budget, so the solution fits the budget exactly.
        total = 64.0 * float(np.sum(macs))
        bops = [np.round(c * total) for c in costs]
        limits.append((bops, float(np.floor(budget_bops * total + EPS * total))))
    if budget_size is not None:
        if weights is None:
            raise ValueError("a weight-size budget needs the weight elements of every layer")
        check_size_budget(budget_size, groups, weights)
        total = 8.0 * float(np.sum(weights))  # integer weight bits, as BOPs above
        bits = [np.round(c * total) for c in group_sizes(groups, weights)]
        limits.append((bits, float(np.floor(budget_size * total + EPS * total))))
    choices = solve_choices(table.values, limits, solutions)
    choice = choices[0]
    w, a = layer_bits(groups, choice, len(macs))
    rel = float(sum(c[k] for c, k in zip(costs, choice, strict=True)))
    sens = float(sum(v[k] for v, k in zip(table.values, choice, strict=True)))
    return IlpResult(choice, w, a, rel, sens, tuple(choices[1:]))


@allocator("ilp", doc="ILP (HAWQ-V3): exact least total sensitivity within the budget")
def ilp_allocator(request: AllocationRequest) -> Allocation:
    """``allocate_ilp`` on the request's table and budget."""
    start = time.perf_counter()
    res = allocate_ilp(
        request.table, request.macs, request.budget.bops, request.budget.size, request.weights
    )
    return request.allocation(
        res.choice, time.perf_counter() - start, 0, total_sensitivity=res.sensitivity
    )
