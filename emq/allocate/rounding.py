"""``emq allocate --compare-rounding``: nearest rounding vs AdaRound, fixed and mixed precision.

The analogue of Table 4 of the practical mixed-precision paper: measured PTQ accuracy of
fixed precision (``W{b}A8`` everywhere) and of SQNR-allocator mixed precision at relative
BOPs budgets, once with nearest rounding and once with AdaRound in both phases (phase-1
sensitivities measured with AdaRounded weights; phase-2 configurations stitch the
AdaRounded weights of each layer's bit-width). Writes ``rounding.csv`` and ``rounding.json``
(the table is ``emq.reports.allocate.format_rounding``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from benchmark.adaround import AdaRoundSettings
from benchmark.ptq import relative_bops
from emq.allocate.problem import AllocationProblem
from emq.allocate.sensitivity import MEASURED
from emq.reports.allocate import ROUNDING_COLUMNS
from emq.reports.common import write_csv, write_json

FIXED_BITS = (2, 3, 4, 8)


def rounding_rows(
    problem: AllocationProblem, budgets: Sequence[float], fixed: Sequence[int] = FIXED_BITS
) -> list[dict]:
    """Fixed-precision and SQNR-allocator rows of one problem (one rounding)."""
    n = len(problem.layer_names)
    rows = []

    def row(setting: str, w: list[int], a: list[int], seconds: float) -> dict:
        return {
            "setting": setting, "rounding": problem.rounding,
            "relative_bops": relative_bops(problem.macs, w, a),
            "test_top1": problem.accuracy(w, a, "test"), "seconds": seconds,
            "w_bits": ",".join(map(str, w)), "a_bits": ",".join(map(str, a)),
        }  # fmt: skip

    for b in fixed:
        rows.append(row(f"fixed W{b}A8", [b] * n, [8] * n, 0.0))
    for budget in budgets:
        start = time.perf_counter()
        alloc = problem.allocate("sqnr", MEASURED, budget_bops=budget)
        rows.append(row(f"mixed SQNR @{budget:g}", list(alloc.w_bits), list(alloc.a_bits),
                        time.perf_counter() - start))  # fmt: skip
    return rows


def run_rounding_compare(
    name: str,
    model: nn.Module,
    budgets: Sequence[float],
    adaround: AdaRoundSettings,
    out: Path,
    bits: Sequence[int] = FIXED_BITS,
    groups_file: Path | str | None = None,
) -> dict:
    """Both roundings on ``model``: ``rounding.csv`` and ``rounding.json`` under ``out``.

    ``bits``: the fixed precisions and the default groups' weight candidates; ``adaround``:
    the AdaRound settings of the second pass. Returns the JSON document.
    """
    budgets = [float(b) for b in budgets]
    rows, timing = [], {}
    for rounding, settings in (("nearest", None), ("adaround", adaround)):
        start = time.perf_counter()
        problem = AllocationProblem.for_model(
            name, model, groups_file, bits, cache=False, rounding=rounding, adaround=settings
        )
        for budget in budgets:  # validate every budget before any expensive work
            problem.uniform(budget)
        if problem.sim.rounder is not None:
            timing["adaround_cache"] = problem.sim.rounder.prepare(bits, progress=True)
        rows += rounding_rows(problem, budgets, bits)
        timing[rounding] = time.perf_counter() - start
    fp = problem.fp_accuracy("test")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "rounding.csv", ROUNDING_COLUMNS, rows)
    doc = {"model": name, "fp_top1": fp, "budgets": budgets, "rows": rows,
           "adaround": adaround.to_dict(), "seconds": timing}  # fmt: skip
    write_json(out / "rounding.json", doc)
    return doc
