"""The ``emq allocate`` reports: one allocation, the ``--compare`` table and plot, and the
``--compare-rounding`` table (``emq.allocate.compare`` and ``rounding`` write them)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emq.allocate.groups import candidate_name
from emq.allocate.result import Allocation

COMPARE_COLUMNS = ("budget", "budget_bops", "budget_size", "method", "scorer", "verified",
                   "relative_bops", "relative_size", "test_top1", "seconds", "evaluations",
                   "validation_images", "w_bits", "a_bits")  # fmt: skip
ROUNDING_COLUMNS = ("setting", "rounding", "relative_bops", "test_top1", "seconds", "w_bits",
                    "a_bits")  # fmt: skip
UNIFORM = "uniform"
# Plot markers of the built-in methods; any other registered method takes the next spare one.
MARKERS = {"sqnr": "o", "smpq": "s", "ilp": "^", UNIFORM: "x"}
SPARE_MARKERS = ("D", "v", "P", "*", "X", "<", ">", "h", "p", "d")


def format_allocation(alloc: Allocation, top1: float) -> str:
    """Per-layer bits and the summary lines of one allocation."""
    width = max(len(n) for n in alloc.layer_names)
    lines = [f"{'layer':<{width}}  bits"]
    for n, w, a in zip(alloc.layer_names, alloc.w_bits, alloc.a_bits, strict=True):
        lines.append(f"{n:<{width}}  {candidate_name((w, a))}")
    lines += [
        f"method          {alloc.method} (scorer {alloc.scorer})",
        f"relative BOPs   {alloc.relative_bops:.4f}  (vs W8A8)",
        f"weight size     {alloc.details['size_mb']:.4g} MB  ({alloc.details['relative_size']:.4f} "
        "of W8)",
        f"test top-1      {top1:.2f} %  (PTQ, 10,000 test images)",
        f"time            {alloc.seconds:.2f} s, {alloc.evaluations} quantized evaluations",
    ]
    ver = alloc.details.get("verify")
    if ver is not None:
        un = alloc.details["unverified"]
        kept = "kept" if ver["chosen"] == "answer" else f"replaced by {ver['chosen']}"
        lines.append(
            f"verified        {ver['evaluations']} candidates raced on {ver['images']} "
            f"validation image passes in {ver['seconds']:.2f} s; the method's answer "
            f"(rel. BOPs {un['relative_bops']:.4f}) {kept}"
        )
        for row in ver["candidates"]:
            mark = "*" if row["chosen"] else " "
            lines.append(
                f"  {mark} {row['source']:<14} rel. BOPs {row['relative_bops']:.4f}  size "
                f"{row['size_mb']:.4g} MB  validation {row['validation_top1']:6.2f} % "
                f"({row['images']} images)"
            )
    if alloc.details.get("accuracy_target") is not None:
        d = alloc.details
        lines.append(
            f"search          {d['search']}: {d['phase2_evaluations']} of {d['front_points']} "
            f"Pareto points evaluated; {d['flips']} flips kept"
        )
    return "\n".join(lines)


def row_methods(rows: Sequence[dict]) -> list[str]:
    """The allocators of the comparison rows, in row order (uniform precision left out)."""
    return [m for m in dict.fromkeys(r["method"] for r in rows) if m != UNIFORM]


def method_markers(methods: Sequence[str]) -> dict[str, str]:
    """A plot marker per method: the built-ins keep theirs, others take the spare ones."""
    spare = cycle(SPARE_MARKERS)
    return {m: MARKERS[m] if m in MARKERS else next(spare) for m in methods}


def format_rows(rows: Sequence[dict]) -> str:
    """Aligned text table of the comparison."""
    header = ("budget", "method", "scorer", "verified", "rel BOPs", "rel size", "top-1 %",
              "time s", "evals", "val images")  # fmt: skip
    body = [
        (r["budget"], r["method"], r["scorer"], "yes" if r["verified"] else "-",
         f"{r['relative_bops']:.4f}", f"{r['relative_size']:.4f}", f"{r['test_top1']:.2f}",
         f"{r['seconds']:.2f}", str(r["evaluations"]), str(r["validation_images"]))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in
             [header, *body]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_compare(
    rows: Sequence[dict], fronts: dict, dots: np.ndarray, fp_top1: float, path: Path, title: str
) -> None:
    """Accuracy vs relative BOPs (Agg, no pyplot)."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    if len(dots):
        ax.scatter(dots[:, 0], dots[:, 1], s=6, c="0.75", label="bench configurations")
    for label, curve in fronts.items():
        xs, ys = zip(*curve, strict=True)
        ax.plot(xs, ys, "--", lw=1, label=f"SQNR front ({label})")
    methods = [*row_methods(rows), UNIFORM]
    markers = method_markers(methods)
    for method in methods:
        for scorer in sorted({r["scorer"] for r in rows if r["method"] == method}):
            for verified in (False, True):
                pts = sorted((r["relative_bops"], r["test_top1"]) for r in rows
                             if r["method"] == method and r["scorer"] == scorer
                             and r["verified"] == verified)  # fmt: skip
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                marker = markers[method]
                if verified:  # verified points: large hollow markers, solid line
                    ax.plot(xs, ys, marker=marker, ms=10, mfc="none", mew=1.8, lw=1.5,
                            label=f"{method} / {scorer}, verified")  # fmt: skip
                else:
                    ax.plot(
                        xs,
                        ys,
                        marker=marker,
                        ms=5,
                        lw=1,
                        ls="--" if any(r["verified"] for r in rows) else "-",
                        label=f"{method} / {scorer}",
                    )
    ax.axhline(fp_top1, color="k", lw=0.8, ls=":", label="full precision")
    ax.set_xlabel("relative BOPs (vs W8A8)")
    ax.set_ylabel("PTQ top-1 (%), test set")
    ax.set_title(title)
    ax.set_ylim(bottom=max(0.0, min(r["test_top1"] for r in rows) - 5))
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=110)


def format_rounding(rows: list[dict]) -> str:
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


def compare_summary(doc: dict, out: Path) -> str:
    """The ``--compare`` text output: header, table, the issue's targets, files written."""
    return "\n".join([
        f"{doc['model']}: FP top-1 {doc['fp_top1']:.2f} %, proxy {doc['proxy']}; PTQ top-1 on "
        "the test set",
        f"Q_b(W) of every candidate computed once in {doc['quantizer_setup_seconds']:.2f} s "
        "before timing (shared by every scorer and configuration)",
        format_rows(doc["rows"]), "", *doc["targets"],
        f"\nwrote {out / 'compare.csv'}, {out / 'compare.json'}, {out / 'compare.png'}",
    ])  # fmt: skip


def rounding_summary(doc: dict, out: Path) -> str:
    """The ``--compare-rounding`` text output: header, table, files written."""
    return "\n".join([
        f"{doc['model']}: FP top-1 {doc['fp_top1']:.2f} %; PTQ top-1 on the 10,000 test images",
        format_rounding(doc["rows"]),
        f"\nwrote {out / 'rounding.csv'}, {out / 'rounding.json'}",
    ])  # fmt: skip
