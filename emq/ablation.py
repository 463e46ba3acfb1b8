"""Ablations of OSP and DPS: several campaigns per variant and seed, one table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmark.bench import Bench
from emq.evolve import Campaign, CampaignSettings, read_checkpoint
from emq.fitness import Evaluator
from emq.reports.ablation import write_ablation

VARIANTS = {
    "full": {},
    "no-osp": {"osp": False},
    "no-dps": {"dps": False},
}


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
    """Run each variant for each seed (resumable campaigns under ``out``); write the table
    (``emq.reports.ablation``: ``ablation.csv``, ``ablation.md``)."""
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
    write_ablation(out, rows)
    return rows
