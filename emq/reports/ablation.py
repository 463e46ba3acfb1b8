"""The OSP/DPS ablation report: ``ablation.csv`` (one row per variant and seed) and
``ablation.md`` (mean ± std over seeds per variant)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emq.reports.common import write_csv

COLUMNS = (
    "variant", "seed", "validity", "saved_s1", "saved_s2", "saved_s3", "full_evals",
    "unique_ratio", "fitness_search", "heldout_spearman@topk",
)  # fmt: skip


def write_ablation(out: Path, rows: Sequence[dict]) -> None:
    """``ablation.csv`` and ``ablation.md`` in ``out``."""
    write_csv(out / "ablation.csv", COLUMNS, rows)
    (out / "ablation.md").write_text(format_ablation(rows) + "\n")


def format_ablation(rows: Sequence[dict]) -> str:
    """Mean ± std over seeds per variant, as a Markdown table."""
    metrics = COLUMNS[2:]
    lines = [
        "| variant | seeds | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):  # in the order run
        sel = [r for r in rows if r["variant"] == variant]
        cells = []
        for m in metrics:
            vals = np.array([r[m] for r in sel], dtype=float)
            cells.append(
                f"{vals.mean():.3f} ± {vals.std():.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"
            )
        lines.append(f"| {variant} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
