"""SMPQ: bit-widths from Shapley values (Kang et al., "SMPQ", IJCAI 2023), training-free.

Players are ``(group, candidate)`` pairs (a group is one layer by default). A coalition
sets each group to its highest enabled candidate, or to its lowest candidate when none of
its candidates is enabled. The value of a coalition is the value of that configuration:

* ``table_value``: a phase-1 ``SensitivityTable`` (any Scorer, or measured SQNR), as
  ``1 - sum_g sens[g, c_g] / sum_g sens[g, lowest]`` after shifting so that the all-lowest
  configuration is worth 0 and the all-top one 1 - additive, costs no forward pass;
* ``accuracy_value``: measured top-1 (as a fraction) on validation images;

minus ``lam * relative BOPs``. Shapley values are estimated by Monte-Carlo permutation
sampling (Castro et al. 2009): each permutation removes players one by one from the full
coalition (the reverse of adding them, so the estimate is unbiased) and credits each
player with the value it takes away. **Truncation**: once the value has dropped below
``threshold`` of the full coalition's (both measured above the all-lowest configuration's
value), the network is treated as broken and the remaining players of that permutation
are credited 0. Contribution weights follow the paper's momentum update (eqs. 8-9)::

    q_k = beta * q_{k-1} + (1 - beta) * psi_k / ||psi_k||
    alpha_k = alpha_{k-1} + xi * q_k / ||q_k||

with ``psi_k`` the marginal contributions of permutation ``k``. Defaults are the paper's:
``beta = 0.8`` (Tab. 1, ``lambda = 0.2``), ``xi = 0.1`` (Tab. 1), ``M = 10`` permutations and
``threshold = 0.5`` (Sec. 5.4). Each group takes the candidate of largest ``alpha``; the
result is then repaired greedily to the BOPs budget and filled, with the utility of a
group at candidate ``c`` read as the summed ``alpha`` of ``c`` and every cheaper option:
downgrade the move losing the least utility per BOP saved until it fits, then upgrade the
move gaining the most utility per BOP while it still fits. Values are memoized per configuration, so
``evaluations`` counts distinct configurations valued.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from emq.allocate.budget import Budget, check_size_budget, group_sizes
from emq.allocate.groups import QuantizerGroup, group_costs, layer_bits
from emq.allocate.registry import AllocationRequest, allocator
from emq.allocate.result import Allocation
from emq.allocate.sensitivity import SensitivityTable
from emq.allocate.sqnr import EPS, check_bops_budget

BETA = 0.8
XI = 0.1
PERMUTATIONS = 10
THRESHOLD = 0.5

Choice = tuple[int, ...]


def players(groups: Sequence[QuantizerGroup]) -> list[tuple[int, int]]:
    """Every ``(group, candidate)`` pair, group by group."""
    return [(g, c) for g, grp in enumerate(groups) for c in range(len(grp.candidates))]


def coalition_choice(enabled: Sequence[bool], sizes: Sequence[int]) -> Choice:
    """Each group's highest enabled candidate (index 0 = top), else its lowest."""
    out, start = [], 0
    for size in sizes:
        flags = enabled[start : start + size]
        out.append(next((c for c in range(size) if flags[c]), size - 1))
        start += size
    return tuple(out)


def exact_shapley(value: Callable[[Choice], float], sizes: Sequence[int]) -> np.ndarray:
    """Shapley values by enumerating every coalition (``2^P`` values; small games only)."""
    n = int(sum(sizes))
    if n > 20:
        raise ValueError(f"exact Shapley values need 2^{n} coalitions: too many players")
    v = {}
    for mask in range(1 << n):
        v[mask] = value(coalition_choice([(mask >> i) & 1 for i in range(n)], sizes))
    phi = np.zeros(n)
    fact = [math.factorial(k) for k in range(n + 1)]
    for mask, val in v.items():
        s = bin(mask).count("1")
        for i in range(n):
            if not (mask >> i) & 1:
                phi[i] += fact[s] * fact[n - s - 1] / fact[n] * (v[mask | (1 << i)] - val)
    return phi


@dataclass(frozen=True)
class ShapleyEstimate:
    """Monte-Carlo Shapley values, momentum contribution weights and the choice they give."""

    shapley: np.ndarray  # mean marginal contribution per player
    alpha: np.ndarray  # contribution weights after M momentum updates
    choice: Choice  # argmax alpha per group
    evaluations: int  # distinct configurations valued
    truncated: int  # permutations cut short


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def monte_carlo_shapley(
    value: Callable[[Choice], float],
    sizes: Sequence[int],
    permutations: int = PERMUTATIONS,
    threshold: float | None = THRESHOLD,
    beta: float = BETA,
    xi: float = XI,
    seed: int = 0,
) -> ShapleyEstimate:
    """Truncated Monte-Carlo Shapley with the SMPQ momentum update (module docstring)."""
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    memo: dict[Choice, float] = {}

    def v(choice: Choice) -> float:
        if choice not in memo:
            memo[choice] = float(value(choice))
        return memo[choice]

    n = int(sum(sizes))
    full = v(tuple(0 for _ in sizes))
    empty = v(tuple(s - 1 for s in sizes))
    cut = None
    if threshold is not None and full > empty:
        cut = empty + threshold * (full - empty)
    rng = np.random.default_rng(seed)
    total, q, alpha = np.zeros(n), np.zeros(n), np.zeros(n)
    truncated = 0
    for _ in range(permutations):
        psi = np.zeros(n)
        enabled = [True] * n
        prev = full
        for k, p in enumerate(rng.permutation(n)):
            enabled[p] = False
            cur = v(coalition_choice(enabled, sizes))
            psi[p] = prev - cur
            prev = cur
            if cut is not None and cur < cut and k + 1 < n:
                truncated += 1  # the rest of this permutation is credited 0
                break
        total += psi
        q = beta * q + (1.0 - beta) * _unit(psi)
        alpha = alpha + xi * _unit(q)
    starts = np.cumsum([0, *sizes])
    choice = tuple(int(np.argmax(alpha[starts[g] : starts[g + 1]])) for g in range(len(sizes)))
    return ShapleyEstimate(total / permutations, alpha, choice, len(memo), truncated)


def table_value(
    table: SensitivityTable,
    macs: Sequence[int],
    lam: float = 0.0,
    costs: Sequence[np.ndarray] | None = None,
) -> Callable[[Choice], float]:
    """Additive value from phase-1 sensitivities, in [0, 1], minus ``lam * relative BOPs``.

    ``costs``: the penalized cost per group and candidate instead of relative BOPs (e.g. the
    weight size of a size-only budget).
    """
    values = [np.asarray(v, dtype=np.float64) for v in table.values]
    costs = group_costs(table.groups, macs) if costs is None else costs
    lowest = sum(float(v[-1]) for v in values)
    top = sum(float(v[0]) for v in values)
    span = lowest - top if lowest - top > 0 else 1.0

    def value(choice: Choice) -> float:
        sens = sum(float(v[c]) for v, c in zip(values, choice, strict=True))
        bops = sum(float(k[c]) for k, c in zip(costs, choice, strict=True))
        return (lowest - sens) / span - lam * bops

    return value


def accuracy_value(
    evaluate: Callable[[list[int], list[int]], float],
    groups: Sequence[QuantizerGroup],
    macs: Sequence[int],
    lam: float = 0.0,
    costs: Sequence[np.ndarray] | None = None,
) -> Callable[[Choice], float]:
    """Measured accuracy (``evaluate`` returns %, used as a fraction) minus ``lam`` BOPs.

    ``costs``: the penalized cost instead of relative BOPs (as ``table_value``).
    """
    costs = group_costs(groups, macs) if costs is None else costs

    def value(choice: Choice) -> float:
        bops = sum(float(k[c]) for k, c in zip(costs, choice, strict=True))
        return evaluate(*layer_bits(groups, choice, len(macs))) / 100.0 - lam * bops

    return value


def repair_to_budget(
    choice: Choice,
    utility: Sequence[np.ndarray],
    costs: Sequence[np.ndarray],
    budget: float,
    fill: bool = True,
    extra: Sequence[tuple[Sequence[np.ndarray], float]] = (),
) -> Choice:
    """Downgrade greedily until ``sum costs <= budget``, then (``fill``) upgrade while it fits.

    A move's rate is its ``utility`` change per relative BOP; downgrades take the smallest
    loss per BOP saved, upgrades the largest positive gain per BOP spent. ``extra`` limits
    (e.g. weight size: ``(costs, budget)``) must hold too: a downgrade is then rated per
    unit saved of the limits still exceeded, an upgrade per unit spent of all of them, each
    limit's units scaled to the first's (its budget over theirs).
    """
    limits = [(costs, budget), *extra]
    scale = [1.0] + [budget / max(b, EPS) for _, b in extra]
    cur = list(choice)
    totals = [sum(float(k[c]) for k, c in zip(ks, cur, strict=True)) for ks, _ in limits]

    def move(g: int, c: int) -> None:
        for d, (ks, _) in enumerate(limits):
            totals[d] += float(ks[g][c] - ks[g][cur[g]])
        cur[g] = c

    steps = 0
    while any(t > b + EPS for t, (_, b) in zip(totals, limits, strict=True)):
        over = [d for d, (t, (_, b)) in enumerate(zip(totals, limits, strict=True)) if t > b + EPS]
        best = None
        for g, u in enumerate(utility):
            for c in range(len(u)):
                saved = sum(scale[d] * float(limits[d][0][g][cur[g]] - limits[d][0][g][c])
                            for d in over)  # fmt: skip
                if saved > EPS:
                    rate = (float(u[cur[g]] - u[c]) / saved, g, c)
                    best = rate if best is None or rate < best else best
        steps += 1
        if best is None or steps > 100 * sum(len(u) for u in utility):
            what = ", ".join(f"{b:g}" for _, b in limits)
            raise ValueError(f"budget {what} cannot be met by these groups")
        move(best[1], best[2])
    while fill:
        best = None
        for g, u in enumerate(utility):
            for c in range(len(u)):
                deltas = [float(ks[g][c] - ks[g][cur[g]]) for ks, _ in limits]
                spent = sum(s * dlt for s, dlt in zip(scale, deltas, strict=True))
                gain = float(u[c] - u[cur[g]])
                fits = all(t + dlt <= b + EPS for t, dlt, (_, b) in
                           zip(totals, deltas, limits, strict=True))  # fmt: skip
                if spent > EPS and gain > 0 and fits:
                    rate = (-gain / spent, g, c)
                    best = rate if best is None or rate < best else best
        if best is None:
            break
        move(best[1], best[2])
    return tuple(cur)


@dataclass(frozen=True)
class SmpqResult:
    """The allocation, the Shapley estimate behind it and the value settings used."""

    choice: Choice
    w_bits: list[int]
    a_bits: list[int]
    estimate: ShapleyEstimate
    lam: float
    seconds: float


def allocate_smpq(
    groups: Sequence[QuantizerGroup],
    macs: Sequence[int],
    budget_bops: float | None,
    value_of: Callable[[float], Callable[[Choice], float]],
    lam: float | None = None,
    permutations: int = PERMUTATIONS,
    threshold: float | None = THRESHOLD,
    beta: float = BETA,
    xi: float = XI,
    seed: int = 0,
    lam_steps: int = 12,
    budget_size: float | None = None,
    weights: Sequence[int] | None = None,
) -> SmpqResult:
    """SMPQ under a BOPs and/or weight-size budget; ``value_of(lam)`` builds the value function.

    ``lam=None`` (only sensible for cheap, table-based values) bisects ``lam`` in [0, 4]
    for ``lam_steps`` steps so the argmax-alpha choice lands just under the budget before
    the greedy repair; a given ``lam`` runs the estimate once. ``lam`` weighs the first
    budgeted cost (relative BOPs, else weight size: give ``value_of`` that cost);
    ``budget_size`` is a fraction of the W8 weight memory, ``weights`` the weight elements
    per layer.
    """
    if budget_bops is None and budget_size is None:
        raise ValueError("the SMPQ allocator needs a BOPs or a weight-size budget")
    if budget_bops is not None:
        check_bops_budget(budget_bops, groups, macs)
    if budget_size is not None:
        if weights is None:
            raise ValueError("a weight-size budget needs the weight elements of every layer")
        check_size_budget(budget_size, groups, weights)
    limits = Budget(budget_bops, budget_size).limits(groups, macs, weights or [])
    costs, budget_main = limits[0][1], limits[0][2]
    extra = [(ks, b) for _, ks, b in limits[1:]]
    start = time.perf_counter()
    sizes = [len(g.candidates) for g in groups]

    def run(lam_: float) -> ShapleyEstimate:
        return monte_carlo_shapley(value_of(lam_), sizes, permutations, threshold, beta, xi, seed)

    def over(choice: Choice) -> bool:
        return any(
            sum(float(k[c]) for k, c in zip(ks, choice, strict=True)) > b + EPS
            for _, ks, b in limits
        )

    if lam is None:
        lo, hi = 0.0, 4.0
        est = run(lo)
        if over(est.choice):
            best = run(hi)
            for _ in range(lam_steps):
                mid = 0.5 * (lo + hi)
                trial = run(mid)
                if over(trial.choice):
                    lo = mid
                else:
                    hi, best = mid, trial
            est, lam = best, hi
        else:
            lam = lo
    else:
        est = run(lam)
    starts = np.cumsum([0, *sizes])
    # utility of a group at candidate c: the contributions of c and every cheaper option,
    # i.e. the value built up by enabling options from the cheapest to c
    utility = [
        np.cumsum(est.alpha[starts[g] : starts[g + 1]][::-1])[::-1] for g in range(len(groups))
    ]
    choice = repair_to_budget(est.choice, utility, costs, budget_main, extra=extra)
    w, a = layer_bits(groups, choice, len(macs))
    return SmpqResult(choice, w, a, est, float(lam), time.perf_counter() - start)


SMPQ_VALUES = ("table", "accuracy")


def _needs_table(options: dict) -> bool:
    return options["smpq_value"] == "table"  # a measured-accuracy value needs no phase 1


def _check_value(options: dict) -> None:
    if options["smpq_value"] not in SMPQ_VALUES:
        raise ValueError(
            f"unknown SMPQ value {options['smpq_value']!r}: expected 'table' or 'accuracy'"
        )


@allocator(
    "smpq", doc="SMPQ Shapley values (table or measured value)", needs_table=_needs_table,
    check=_check_value,
)  # fmt: skip
def smpq_allocator(
    request: AllocationRequest,
    smpq_value: str = "table",
    lam: float | None = None,
    permutations: int = PERMUTATIONS,
    threshold: float | None = THRESHOLD,
    beta: float = BETA,
    xi: float = XI,
    seed: int = 0,
) -> Allocation:
    """``allocate_smpq`` valuing choices by the request's table or its measured accuracy.

    ``lam`` weighs the first budgeted cost: relative BOPs, else weight size. On measured
    accuracy (no table) ``lam`` defaults to 0.5 and the scorer is recorded as "accuracy".
    """
    _check_value({"smpq_value": smpq_value})
    groups, macs, budget = request.groups, request.macs, request.budget
    penalty = None if budget.bops is not None else group_sizes(groups, request.weights)
    scorer = None
    if smpq_value == "table":

        def value_of(lam_: float):
            return table_value(request.table, macs, lam_, penalty)

    else:
        lam, scorer = (0.5 if lam is None else lam), "accuracy"

        def value_of(lam_: float):
            return accuracy_value(request.evaluate, groups, macs, lam_, penalty)

    start = time.perf_counter()
    res = allocate_smpq(groups, macs, budget.bops, value_of, lam, permutations, threshold, beta,
                        xi, seed, budget_size=budget.size, weights=request.weights)  # fmt: skip
    measured = res.estimate.evaluations if smpq_value == "accuracy" else 0
    return request.allocation(
        res.choice, time.perf_counter() - start, measured, scorer=scorer, lam=res.lam,
        permutations=permutations, threshold=threshold, beta=beta, xi=xi, seed=seed,
        value=smpq_value, truncated=res.estimate.truncated,
    )  # fmt: skip
