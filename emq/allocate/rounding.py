"""``emq allocate --compare-rounding``: nearest rounding vs AdaRound, fixed and mixed precision.

The analogue of Table 4 of the practical mixed-precision paper: measured PTQ accuracy of
fixed precision (``W{b}A8`` everywhere) and of SQNR-allocator mixed precision at relative
BOPs budgets, once with nearest rounding and once with AdaRound in both phases (phase-1
sensitivities measured with AdaRounded weights; phase-2 configurations stitch the
AdaRounded weights of each layer's bit-width). Writes ``rounding.csv`` and ``rounding.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmark.ptq import relative_bops
from emq.allocate.compare import DEFAULT_BUDGETS, parse_budgets, write_csv
from emq.allocate.problem import AllocationProblem
from emq.allocate.sensitivity import MEASURED
from emq.commands.common import adaround_settings

FIXED_BITS = (2, 3, 4, 8)
COLUMNS = ("setting", "rounding", "relative_bops", "test_top1", "seconds", "w_bits", "a_bits")


def rounding_rows(
    problem: AllocationProblem, budgets: list[float], fixed: tuple[int, ...] = FIXED_BITS
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


def format_table(rows: list[dict]) -> str:
    """Settings as rows, nearest and AdaRound side by side."""
    by = {(r["setting"], r["rounding"]): r for r in rows}
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    head = f"{'setting':<20} {'BOPs near':>9} {'top-1 near':>10} {'BOPs ada':>9} {'top-1 ada':>9}"
    lines = [head, "-" * len(head)]
    for s in settings:
        n, a = by[(s, "nearest")], by[(s, "adaround")]
        lines.append(
            f"{s:<20} {n['relative_bops']:>9.4f} {n['test_top1']:>10.2f} "
            f"{a['relative_bops']:>9.4f} {a['test_top1']:>9.2f}"
        )
    return "\n".join(lines)


def run_rounding_compare(args: argparse.Namespace) -> dict:
    """Both roundings on ``--model``: table, CSV and JSON under ``--out``."""
    from emq.allocate.cli import default_out
    from emq.score import build_model

    budgets = parse_budgets(args.budgets if args.budgets is not None else DEFAULT_BUDGETS)
    bits = args.bits
    model = build_model(args.model, args.checkpoint)
    ada = adaround_settings(argparse.Namespace(**{**vars(args), "rounding": "adaround"}))
    rows, timing = [], {}
    for rounding, settings in (("nearest", None), ("adaround", ada)):
        start = time.perf_counter()
        problem = AllocationProblem.for_model(
            args.model, model, args.groups, bits, cache=False, rounding=rounding, adaround=settings
        )
        for budget in budgets:  # validate every budget before any expensive work
            problem.uniform(budget)
        if problem.sim.rounder is not None:
            timing["adaround_cache"] = problem.sim.rounder.prepare(bits)
        rows += rounding_rows(problem, budgets, bits)
        timing[rounding] = time.perf_counter() - start
    fp = problem.fp_accuracy("test")
    out = Path(args.out) if args.out else default_out(args.model)
    write_csv(out / "rounding.csv", COLUMNS, rows)
    doc = {"model": args.model, "fp_top1": fp, "budgets": budgets, "rows": rows,
           "adaround": ada.to_dict(), "seconds": timing}  # fmt: skip
    (out / "rounding.json").write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.model}: FP top-1 {fp:.2f} %; PTQ top-1 on the 10,000 test images")
        print(format_table(rows))
        print(f"\nwrote {out / 'rounding.csv'}, {out / 'rounding.json'}")
    return doc
