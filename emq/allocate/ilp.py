"""The ILP allocator: the exact optimum of phase 1's additive sensitivities under a BOPs budget.

HAWQ-V3 (Yao et al., ICML 2021) allocates bits by integer linear programming: one binary
variable per (group, candidate), exactly one candidate per group, total BOPs within the
budget, total sensitivity minimal. With the sensitivities of phase 1 (measured SQNR noise
power, or a Scorer's predicted loss of score ``S[l, top] - S[l, b]``) that is the
configuration the scorer itself ranks best among all that fit the budget - a proxy's
config score is additive, so nothing better exists for it. The SQNR allocator's greedy
front is a heuristic for the same problem: it flips in order of sensitivity regardless of
the BOPs a flip saves, so at a budget it can keep a costly layer high and push cheap ones
low. The ILP sees costs and sensitivities together.

Solved by ``scipy.optimize.milp`` (HiGHS): a few dozen groups and a handful of candidates
each solve in milliseconds. No forward pass; a BOPs budget only (an accuracy target needs
measured points: use the SQNR allocator's front).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import block_diag
from scipy.optimize import Bounds, LinearConstraint, milp

from emq.allocate.groups import group_costs, layer_bits
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


def solve_choice(
    values: Sequence[np.ndarray], costs: Sequence[np.ndarray], budget: float
) -> tuple[int, ...]:
    """Candidate index per group minimizing ``sum values[g][c]`` with ``sum costs[g][c] <= budget``.

    A layer whose costlier candidates are no more sensitive keeps them while the budget
    allows (``_keep_free_precision``). Give integer costs (e.g. BOPs) for an exact budget:
    the solver's feasibility tolerance (1e-7) cannot then admit an excess.
    """
    sizes = [len(v) for v in values]
    if [len(c) for c in costs] != sizes:
        raise ValueError("every group needs one cost per candidate")
    sens = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
    cost = np.concatenate([np.asarray(c, dtype=np.float64) for c in costs])
    sens = sens / max(float(np.abs(sens).max()), 1e-300)  # scale-free solver tolerances
    one_each = block_diag(*(np.ones((1, n)) for n in sizes))  # one candidate per group
    feasible = [LinearConstraint(one_each, 1, 1),
                LinearConstraint(cost[None, :], -np.inf, budget)]  # fmt: skip
    res = milp(
        sens,
        integrality=np.ones(len(sens)),
        bounds=Bounds(0, 1),
        constraints=feasible,
        # exact optimum (no 1e-4 relative gap); presolve off: on some of these programs
        # HiGHS's presolve prints a C++ debug line to stdout, and they are small anyway
        options={"mip_rel_gap": 0.0, "presolve": False},
    )
    if not res.success:
        raise ValueError(f"no configuration meets the budget {budget:g}: {res.message}")
    picks = np.split(np.round(res.x), np.cumsum(sizes)[:-1])
    choice = [int(np.argmax(p)) for p in picks]
    return _keep_free_precision(choice, values, costs, budget)


def _keep_free_precision(choice, values, costs, budget) -> tuple[int, ...]:
    """Raise a group to a costlier candidate of no greater sensitivity while the budget allows.

    The total sensitivity cannot grow, so the choice stays optimal; among equally good
    choices this one spends the budget on precision instead of leaving it unused.
    """
    choice = list(choice)
    spent = sum(float(c[k]) for c, k in zip(costs, choice, strict=True))
    for g, (v, c) in enumerate(zip(values, costs, strict=True)):
        k = choice[g]
        free = [j for j in range(len(v)) if v[j] <= v[k] and c[j] > c[k]]
        fits = [j for j in free if spent - c[k] + c[j] <= budget]
        if fits:
            j = max(fits, key=lambda j: (c[j], -j))
            spent += float(c[j] - c[k])
            choice[g] = j
    return tuple(choice)


def allocate_ilp(table: SensitivityTable, macs: Sequence[int], budget_bops: float) -> IlpResult:
    """The configuration of least total sensitivity whose relative BOPs fit ``budget_bops``."""
    groups = table.groups
    check_bops_budget(budget_bops, groups, macs)
    costs = group_costs(groups, macs)
    # Integer BOPs (MACs x w x a) and budget, so the solution fits the budget exactly.
    total = 64.0 * float(np.sum(macs))
    bops = [np.round(c * total) for c in costs]
    choice = solve_choice(table.values, bops, float(np.floor(budget_bops * total + EPS * total)))
    w, a = layer_bits(groups, choice, len(macs))
    rel = float(sum(c[k] for c, k in zip(costs, choice, strict=True)))
    sens = float(sum(v[k] for v, k in zip(table.values, choice, strict=True)))
    return IlpResult(choice, w, a, rel, sens)
