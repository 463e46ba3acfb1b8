"""Ablations of OSP and DPS: several campaigns per variant and seed, one table."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmark.bench import Bench
from emq.evolve import Campaign, CampaignSettings, read_checkpoint
from emq.fitness import Evaluator

VARIANTS = {
    "full": {},
    "no-osp": {"osp": False},
    "no-dps": {"dps": False},
}
COLUMNS = (
    "variant", "seed", "validity", "saved_s1", "saved_s2", "saved_s3", "full_evals",
    "unique_ratio", "fitness_search", "heldout_spearman@topk",
)  # fmt: skip


def run_ablation(
    bench: Bench,
    evaluator: Evaluator,
    base: CampaignSettings,
    steps: int,
    seeds: list[int],
    out: Path,
    jobs: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Run each variant for each seed (resumable campaigns under ``out``); write the table."""
    if len(seeds) < 1:
        raise ValueError("give at least one seed")
    rows = []
    for variant, change in VARIANTS.items():
        for seed in seeds:
            settings = replace(base, seed=seed, **change)
            run = out / f"{variant}-seed{seed}"
            summary = Campaign(run, bench, evaluator, settings, jobs, progress).run_steps(steps)
            last = read_checkpoint(run / "checkpoint.json", settings)["history"][-1]
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "validity": last["validity"],
                    "saved_s1": last["s1_equivalent"],
                    "saved_s2": last["s2_shape"] + last["s2_no_bits"],
                    "saved_s3": last["s3_probe"],
                    "full_evals": last["evaluated"] + last["invalid"],
                    "unique_ratio": last["unique_ratio"],
                    "fitness_search": summary["fitness_search"],
                    "heldout_spearman@topk": summary["heldout"]["spearman@topk"],
                }
            )
    with open(out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "ablation.md").write_text(format_table(rows) + "\n")
    return rows


def format_table(rows: list[dict]) -> str:
    """Mean ± std over seeds per variant, as a Markdown table."""
    metrics = COLUMNS[2:]
    lines = [
        "| variant | seeds | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for variant in VARIANTS:
        sel = [r for r in rows if r["variant"] == variant]
        if not sel:
            continue
        cells = []
        for m in metrics:
            vals = np.array([r[m] for r in sel], dtype=float)
            cells.append(
                f"{vals.mean():.3f} ± {vals.std():.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"
            )
        lines.append(f"| {variant} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
