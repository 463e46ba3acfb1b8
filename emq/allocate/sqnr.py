"""Phase 2 of the SQNR allocator: a greedy Pareto front and the two budget modes.

AIMET AMP (Pandey et al. 2023, Alg. 1): start with every group at its top candidate and
flip ``(group, candidate)`` pairs in increasing order of sensitivity (phase 1), a flip
applying only when it lowers the group's current candidate. Each applied flip is one point
of the front; relative BOPs update in O(1) per flip. Points are evaluated lazily
(``ParetoFront.accuracy`` runs the evaluation the first time a search probes a point).

Budget modes:

* ``choose_by_bops`` / ``choose_by_budget``: the first point (fewest flips) whose relative
  BOPs (and weight size) fit the budget - chosen by cost alone, no evaluation;
* ``search_accuracy``: the largest flip count whose measured accuracy stays at or above a
  target, by ``linear``, ``binary`` or ``interpolation`` search (the paper's binary +
  interpolation: ``binary_steps`` halvings, then interpolation search inside the remaining
  piece, assuming the front is locally linear). All three return the same point when
  accuracy is non-increasing along the front.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from emq.allocate.budget import check_size_budget, group_sizes
from emq.allocate.groups import QuantizerGroup, group_costs, layer_bits
from emq.allocate.registry import AllocationRequest, allocator
from emq.allocate.result import Allocation
from emq.allocate.sensitivity import SensitivityTable

SEARCHES = ("linear", "binary", "interpolation")
EPS = 1e-12


@dataclass(frozen=True)
class ParetoPoint:
    """One point of the front: candidate index per group after ``flips`` applied flips."""

    flips: int
    choice: tuple[int, ...]
    relative_bops: float
    flipped: tuple[int, int] | None  # (group, candidate) applied to reach this point


def flip_order(table: SensitivityTable, costs: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """``(group, candidate)`` pairs, least sensitive first.

    Ties go to the larger BOPs saving, then to the group and candidate order.
    """
    flips = table.flips()

    def key(f: tuple[int, int, float]) -> tuple:
        g, c, sens = f
        return (sens, -(costs[g][0] - costs[g][c]), g, c)

    return [(g, c) for g, c, _ in sorted(flips, key=key)]


def greedy_front(
    table: SensitivityTable, macs: Sequence[int], order: Sequence[tuple[int, int]] | None = None
) -> list[ParetoPoint]:
    """The Pareto front: point 0 = every group at its top candidate, then one per flip."""
    costs = group_costs(table.groups, macs)
    order = list(order) if order is not None else flip_order(table, costs)
    choice = [0] * len(table.groups)
    rel = float(sum(c[0] for c in costs))
    points = [ParetoPoint(0, tuple(choice), rel, None)]
    for g, c in order:
        if c <= choice[g]:
            continue  # the group is already at this or a cheaper candidate
        rel += float(costs[g][c] - costs[g][choice[g]])
        choice[g] = c
        points.append(ParetoPoint(len(points), tuple(choice), rel, (g, c)))
    return points


@dataclass
class ParetoFront:
    """A front whose points' accuracies are lazy thunks, each evaluated at most once."""

    points: list[ParetoPoint]
    evaluate: Callable[[tuple[int, ...]], float]
    _accuracy: dict[int, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def accuracies(self) -> dict[int, float]:
        """Accuracy of every point evaluated so far, by flip count."""
        return dict(self._accuracy)

    @property
    def evaluations(self) -> int:
        """How many points have been evaluated so far."""
        return len(self._accuracy)

    def accuracy(self, k: int) -> float:
        """Accuracy of point ``k`` (evaluated on first request)."""
        if k not in self._accuracy:
            self._accuracy[k] = float(self.evaluate(self.points[k].choice))
        return self._accuracy[k]


def lowest_bops(groups: Sequence[QuantizerGroup], macs: Sequence[int]) -> float:
    """Relative BOPs with every group at its cheapest candidate."""
    return float(sum(c.min() for c in group_costs(groups, macs)))


def check_bops_budget(budget: float, groups: Sequence[QuantizerGroup], macs: Sequence[int]) -> None:
    """Clear error when no configuration can meet ``budget``."""
    floor = lowest_bops(groups, macs)
    if not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"BOPs budget must be a positive number (relative to W8A8), got {budget}")
    if budget < floor - EPS:
        raise ValueError(
            f"BOPs budget {budget:g} is below the lowest candidates' relative BOPs {floor:.4g}: "
            "no configuration can meet it"
        )
    ceiling = float(sum(c.max() for c in group_costs(groups, macs)))
    if budget > ceiling + EPS:
        raise ValueError(
            f"BOPs budget {budget:g} is above the highest candidates' relative BOPs "
            f"{ceiling:.4g} (every group at its top candidate); give a budget in "
            f"[{floor:.4g}, {ceiling:.4g}]"
        )


def choose_by_bops(points: Sequence[ParetoPoint], budget: float) -> ParetoPoint:
    """The first point (most bits) with relative BOPs at most ``budget`` (no evaluation)."""
    for p in points:
        if p.relative_bops <= budget + EPS:
            return p
    raise ValueError(
        f"BOPs budget {budget:g} is below the front's lowest relative BOPs "
        f"{points[-1].relative_bops:.4g}"
    )


def choose_by_budget(
    points: Sequence[ParetoPoint],
    budget_bops: float | None,
    budget_size: float | None = None,
    sizes: Sequence[np.ndarray] | None = None,
) -> ParetoPoint:
    """The first point (most bits) within relative BOPs and weight size (no evaluation).

    ``sizes``: each group's weight size (fraction of W8) per candidate (``budget.group_sizes``).
    """
    if budget_size is None:
        return choose_by_bops(points, budget_bops)
    if sizes is None:
        raise ValueError("a weight-size budget needs the groups' weight sizes")
    for p in points:
        size = sum(float(s[c]) for s, c in zip(sizes, p.choice, strict=True))
        if (budget_bops is None or p.relative_bops <= budget_bops + EPS) and (
            size <= budget_size + EPS
        ):
            return p
    raise ValueError(
        f"no point of the greedy front meets relative BOPs {budget_bops} and weight size "
        f"{budget_size:.4g} of W8 together"
    )


def _linear(ok: Callable[[int], bool], n: int) -> int:
    k = 0
    while k + 1 < n and ok(k + 1):
        k += 1
    return k


def _binary(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest k in [lo, hi) with ok(k), given ok(lo) and not ok(hi) (hi may be n)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def search_accuracy(front: ParetoFront, target: float, method: str = "interpolation",
                    binary_steps: int = 2) -> int:  # fmt: skip
    """Largest flip count whose accuracy is at least ``target`` (accuracy non-increasing).

    Raises when even point 0 (every group at its top candidate) misses the target.
    """
    if method not in SEARCHES:
        raise ValueError(f"unknown search {method!r}: expected one of {', '.join(SEARCHES)}")
    n = len(front)

    def ok(k: int) -> bool:
        return front.accuracy(k) >= target

    if not ok(0):
        raise ValueError(
            f"accuracy target {target:g} is unreachable: with every group at its top candidate "
            f"the validation accuracy is {front.accuracy(0):.2f}"
        )
    if method == "linear":
        return _linear(ok, n)
    if ok(n - 1):
        return n - 1
    lo, hi = 0, n - 1  # invariant: ok(lo), not ok(hi)
    if method == "binary":
        return _binary(ok, lo, hi)
    for _ in range(binary_steps):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    while hi - lo > 1:
        a_lo, a_hi = front.accuracy(lo), front.accuracy(hi)
        frac = (a_lo - target) / (a_lo - a_hi) if a_lo > a_hi else 0.5
        k = min(hi - 1, max(lo + 1, lo + int(frac * (hi - lo))))
        lo, hi = (k, hi) if ok(k) else (lo, k)
    return lo


@dataclass(frozen=True)
class SqnrResult:
    """The chosen point, the whole front and how many points were evaluated."""

    point: ParetoPoint
    front: list[ParetoPoint]
    w_bits: list[int]
    a_bits: list[int]
    evaluations: int
    accuracies: dict[int, float]


def allocate_sqnr(
    table: SensitivityTable,
    macs: Sequence[int],
    budget_bops: float | None = None,
    accuracy_target: float | None = None,
    evaluate: Callable[[list[int], list[int]], float] | None = None,
    search: str = "interpolation",
    fp_accuracy: float | None = None,
    budget_size: float | None = None,
    weights: Sequence[int] | None = None,
) -> SqnrResult:
    """Phase 2 under a budget (relative BOPs and/or weight size) or an accuracy target.

    ``evaluate(w_bits, a_bits) -> accuracy`` is required for an accuracy target, and
    ``fp_accuracy`` (on the same data) bounds the target. ``budget_size`` is a fraction of
    the W8 weight memory, ``weights`` the weight elements per layer.
    """
    budgeted = budget_bops is not None or budget_size is not None
    if budgeted == (accuracy_target is not None):
        raise ValueError("give exactly one of a budget (BOPs, weight size) or an accuracy target")
    groups, n_layers = table.groups, len(macs)
    points = greedy_front(table, macs)
    if budgeted:
        if budget_bops is not None:
            check_bops_budget(budget_bops, groups, macs)
        sizes = None
        if budget_size is not None:
            if weights is None:
                raise ValueError("a weight-size budget needs the weight elements of every layer")
            check_size_budget(budget_size, groups, weights)
            sizes = group_sizes(groups, weights)
        point, front = choose_by_budget(points, budget_bops, budget_size, sizes), None
    else:
        if evaluate is None:
            raise ValueError("an accuracy target needs an evaluate(w_bits, a_bits) function")
        if fp_accuracy is not None and accuracy_target > fp_accuracy:
            raise ValueError(
                f"accuracy target {accuracy_target:g} is above the full-precision accuracy "
                f"{fp_accuracy:.2f} on the validation images"
            )
        front = ParetoFront(points, lambda ch: evaluate(*layer_bits(groups, ch, n_layers)))
        point = points[search_accuracy(front, accuracy_target, search)]
    w, a = layer_bits(groups, point.choice, n_layers)
    return SqnrResult(
        point, points, w, a, front.evaluations if front else 0,
        front.accuracies if front else {},
    )  # fmt: skip


def _check_search(options: dict) -> None:
    if options["search"] not in SEARCHES:
        raise ValueError(
            f"unknown search {options['search']!r}: expected one of {', '.join(SEARCHES)}"
        )


@allocator(
    "sqnr", doc="SQNR greedy Pareto front (AIMET AMP): budget or accuracy target",
    accuracy_target=True, check=_check_search,
)  # fmt: skip
def sqnr_allocator(request: AllocationRequest, search: str = "interpolation") -> Allocation:
    """``allocate_sqnr`` on the request's table; an accuracy target is searched on the front."""
    start = time.perf_counter()
    res = allocate_sqnr(
        request.table, request.macs, request.budget.bops, request.accuracy_target,
        evaluate=request.evaluate, search=search, budget_size=request.budget.size,
        weights=request.weights,
    )  # fmt: skip
    return request.allocation(
        res.point.choice, time.perf_counter() - start, res.evaluations, flips=res.point.flips,
        front_points=len(res.front), search=search, phase2_evaluations=res.evaluations,
        accuracy_target=request.accuracy_target,
    )  # fmt: skip
