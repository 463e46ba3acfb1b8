"""``emq allocate --compare``: every method x scorer at fixed relative BOPs budgets.

Scorers: the best exported proxy (``--proxy``), HAWQ-V3 (``hawq_v3``) and measured SQNR;
methods: every registered allocator (SQNR greedy, SMPQ, ILP, ...), plus uniform precision.
Budgets: ``--budgets`` (relative BOPs), each combined with ``--budget-size`` when given (alone, a
size budget is the only one). With ``--verify K`` (the default) every allocation has two
rows: the method's own answer and the verified one (measured phase 2 on validation images,
its time and evaluations included); the plot marks verified points with large hollow
markers. Each allocation is measured with the bench's settings (full test set). Phase-1
caches are off so the times are cold; every allocation's time includes its scorer's phase 1
(computed once, counted in each allocation that uses it). ``Q_b(W)`` of every candidate is
computed once before any timing (the quantizer's set-up, shared by measured SQNR's phase 1
and every configuration; a proxy's inputs compute their own, in float64). Writes
``compare.csv``, ``compare.json`` and ``compare.png`` (accuracy vs
BOPs: the bench's configurations as dots, each scorer's SQNR front - ``--front-points``
points measured on the test set - and each method x scorer's allocations at the budgets).
The command (``emq.commands.allocate``) builds the problem and prints; the table and the
plot are ``emq.reports.allocate``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.bench import Bench, BenchError, default_bench
from emq.allocate.budget import DEFAULT_BUDGETS, Budget, relative_size
from emq.allocate.groups import layer_bits
from emq.allocate.problem import AllocationProblem
from emq.allocate.registry import allocator_names, get_allocator
from emq.allocate.result import make_allocation
from emq.allocate.sensitivity import MEASURED
from emq.allocate.sqnr import greedy_front
from emq.baselines import BASELINES
from emq.reports.allocate import COMPARE_COLUMNS, UNIFORM, plot_compare, row_methods
from emq.reports.common import write_csv, write_json

HAWQ = "hawq_v3"


def check_proxy(spec: str) -> str:
    """The proxy spec if it is a baseline name or an existing file/folder, else a clear error."""
    if spec in BASELINES or spec == "default" or Path(spec).exists():
        return spec
    raise ValueError(
        f"best exported proxy {spec} not found: export a campaign's proxy there "
        "(emq export RUN) or pass --proxy FILE|RUN_DIR|BASELINE"
    )


class _Measured:
    """Test-set accuracy memoized per configuration."""

    def __init__(self, problem: AllocationProblem):
        self.problem, self.memo = problem, {}

    def __call__(self, w: Sequence[int], a: Sequence[int]) -> float:
        key = (tuple(w), tuple(a))
        if key not in self.memo:
            self.memo[key] = self.problem.accuracy(list(w), list(a), "test")
        return self.memo[key]


def check_methods(methods: Sequence[str] | None = None) -> tuple[str, ...]:
    """``methods`` (default: every registered allocator), each one registered."""
    names = allocator_names() if methods is None else tuple(methods)
    for name in names:
        get_allocator(name)  # a clear error naming the registered ones
    return names


def budget_name(bops: float | None, size: float | None) -> str:
    """``"0.35"``, ``"size 0.5"`` or ``"0.35 + size 0.5"`` (the table's budget column)."""
    parts = [f"{bops:g}"] if bops is not None else []
    return " + ".join([*parts, *([f"size {size:.4g}"] if size is not None else [])])


def compare_rows(
    problem: AllocationProblem,
    scorers: dict[str, str],
    budgets: Sequence[tuple[float | None, float | None]],
    measured,
    verify: int = 0,
    methods: Sequence[str] | None = None,
) -> list[dict]:
    """One row per budget x (uniform, method x scorer [, verified]).

    ``methods``: registered allocators (default: every one, in registration order), each
    checked before any allocation runs. ``budgets``: ``(relative BOPs, weight size as a
    fraction of W8)`` pairs, ``None`` = free.
    With ``verify=K`` each allocation gives two rows: the method's own answer and the
    verified one (``emq.allocate.verify``), whose time and evaluations include the race.
    """
    methods = check_methods(methods)
    rows = []
    for bops, size in budgets:
        allocs = [(problem.uniform(bops, size), False)]
        for method in methods:
            for label, spec in scorers.items():
                alloc = problem.allocate(
                    method, spec, budget_bops=bops, budget_size=size, verify=verify
                )
                # Allocation time from scratch: phase 1 is computed once per scorer and
                # reused, so add its (cold, uncached) time to every allocation that uses it.
                phase1 = problem.sensitivity(spec).seconds
                alloc.seconds += phase1 - float(alloc.details.get("phase1_seconds", 0.0))
                alloc.scorer = label
                un = alloc.details.get("unverified")
                if un is not None:
                    plain = make_allocation(
                        alloc.method, label, alloc.layer_names, problem.macs, un["w_bits"],
                        un["a_bits"], un["seconds"] + phase1 - alloc.details["phase1_seconds"],
                        un["evaluations"],
                    )  # fmt: skip
                    allocs.append((plain, False))
                allocs.append((alloc, un is not None))
        for alloc, verified in allocs:
            ver = alloc.details.get("verify") if verified else None
            rows.append({
                "budget": budget_name(bops, size), "budget_bops": bops, "budget_size": size,
                "method": alloc.method, "scorer": alloc.scorer, "verified": verified,
                "relative_bops": alloc.relative_bops,
                "relative_size": relative_size(problem.weights, alloc.w_bits),
                "test_top1": measured(alloc.w_bits, alloc.a_bits),
                "seconds": alloc.seconds, "evaluations": alloc.evaluations,
                "validation_images": ver["images"] if ver else 0,
                "w_bits": ",".join(map(str, alloc.w_bits)),
                "a_bits": ",".join(map(str, alloc.a_bits)),
            })  # fmt: skip
    return rows


def sqnr_fronts(
    problem: AllocationProblem, scorers: dict[str, str], points: int, measured
) -> dict[str, list[tuple[float, float]]]:
    """``points`` evenly spaced points of each scorer's greedy front, measured on test."""
    out = {}
    for label, spec in scorers.items():
        front = greedy_front(problem.sensitivity(spec), problem.macs)
        idx = np.unique(np.linspace(0, len(front) - 1, max(points, 2)).round().astype(int))
        curve = []
        for k in idx:
            w, a = layer_bits(problem.groups, front[k].choice, len(problem.macs))
            curve.append((front[k].relative_bops, measured(w, a)))
        out[label] = curve
    return out


def bench_dots(model: str, macs: Sequence[int], rounding: str = "nearest") -> np.ndarray:
    """(relative BOPs, top-1) of the shipped bench's configurations (empty when none)."""
    try:  # user models (module:factory) have no shipped bench
        path = default_bench(model)
        if rounding != "nearest":
            path = path.with_name(f"{path.stem}-{rounding}{path.suffix}")
        bench = Bench.open(path)
    except (BenchError, ValueError):
        return np.empty((0, 2))
    if bench.num_layers != len(macs):
        return np.empty((0, 2))
    return np.column_stack([bench.bops / (64.0 * float(np.sum(macs))), bench.accuracy])


def verdicts(rows: Sequence[dict], proxy: str) -> list[str]:
    """The issue's targets per budget and method: proxy vs uniform, vs measured SQNR, time.

    Verified rows are judged when there are any (issue 19: >= every uniform configuration
    within the budget, within 0.3 points of measured SQNR, >= 10x less time), else the
    method's own answers (issue 7's 0.5 points).
    """
    lines = []
    verified = any(r["verified"] for r in rows)
    bound = 0.3 if verified else 0.5
    for budget in dict.fromkeys(r["budget"] for r in rows):
        at = {(r["method"], r["scorer"], r["verified"]): r for r in rows if r["budget"] == budget}
        uni = at[(UNIFORM, "-", False)]
        for method in row_methods(rows):
            p, m = at[(method, proxy, verified)], at[(method, MEASURED, verified)]
            ok_u = p["test_top1"] >= uni["test_top1"]
            gap = p["test_top1"] - m["test_top1"]
            ratio = m["seconds"] / max(p["seconds"], 1e-9)
            tag = " verified" if verified else ""
            lines.append(
                f"budget {budget} {method}{tag}: proxy {p['test_top1']:.2f} vs uniform "
                f"{uni['test_top1']:.2f} [{'ok' if ok_u else 'MISS'}], vs measured SQNR "
                f"{m['test_top1']:.2f} (gap {gap:+.2f}) [{'ok' if gap >= -bound else 'MISS'}], "
                f"time x{ratio:.1f} less [{'ok' if ratio >= 10 else 'MISS'}]"
            )
    return lines


def compare_budgets(
    bops: Sequence[float] | None = None, size: float | None = None
) -> list[tuple[float | None, float | None]]:
    """``(relative BOPs, weight size)`` pairs: each BOPs budget (default ``DEFAULT_BUDGETS``)
    with the size budget, or the size budget alone when only it is given."""
    if bops is None and size is not None:
        return [(None, size)]
    return [(float(b), size) for b in (DEFAULT_BUDGETS if bops is None else bops)]


def run_compare(
    problem: AllocationProblem,
    proxy: str,
    budgets: Sequence[tuple[float | None, float | None]],
    out: Path,
    front_points: int = 6,
    verify: int = 0,
    methods: Sequence[str] | None = None,
    size_text: str = "",
) -> dict:
    """Every method x scorer at ``budgets`` on ``problem``: ``compare.csv``, ``compare.json``
    and ``compare.png`` under ``out``; returns the JSON document.

    ``problem`` should have its phase-1 cache off (``cache=False``) so the times are cold;
    ``budgets``: ``compare_budgets``' pairs; ``methods``: registered allocators (default
    every one); ``size_text``: the size budget as the user gave it (for messages). The
    proxy, the methods and every budget are checked before any expensive work.
    """
    proxy = check_proxy(proxy)
    methods = check_methods(methods)
    label = "proxy:" + problem.scorer_name(proxy)
    scorers = {label: proxy, HAWQ: HAWQ, MEASURED: MEASURED}
    for bops_, size_ in budgets:  # validate every budget before any expensive work
        problem.check_budget(Budget(bops_, size_), size_text)
        problem.uniform(bops_, size_)
    # Q_b(W) of every candidate once, before any timing: shared by all scorers and configs.
    setup = problem.prepare()
    measured = _Measured(problem)
    rows = compare_rows(problem, scorers, budgets, measured, verify, methods)
    fronts = sqnr_fronts(problem, scorers, front_points, measured)
    fp = problem.fp_accuracy("test")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", COMPARE_COLUMNS, rows)
    lines = verdicts(rows, label)
    doc = {"model": problem.name, "rounding": problem.rounding, "proxy": proxy, "fp_top1": fp,
           "budgets": [budget_name(b, s_) for b, s_ in budgets], "verify": verify,
           "quantizer_setup_seconds": setup,
           "rows": rows, "fronts": fronts, "targets": lines}  # fmt: skip
    write_json(out / "compare.json", doc)
    plot_compare(rows, fronts, bench_dots(problem.name, problem.macs, problem.rounding), fp,
                 out / "compare.png", f"{problem.name} ({problem.rounding} rounding): allocators "
                 "at fixed BOPs budgets")  # fmt: skip
    return doc
