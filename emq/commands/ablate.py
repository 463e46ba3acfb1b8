"""``emq ablate``: OSP/DPS ablation over several seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark import options
from benchmark.bench import Bench, default_bench
from benchmark.lock import created_folder, exclusive, run_folder_lock
from emq.ablation import VARIANTS, run_ablation
from emq.commands.common import POPULATION, check_output_folder
from emq.context import bench_evaluator
from emq.evolve import CampaignSettings
from emq.reports.ablation import format_ablation


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    a = subparsers.add_parser("ablate", help="OSP/DPS ablation over several seeds")
    a.add_argument("--bench", help="bench file (default: shipped ResNet-20 bench)")
    a.add_argument("--out", help="output folder (default: runs/ablation-<model>)")
    a.add_argument("--steps", type=options.nonneg_int, default=20)
    a.add_argument("--population", type=POPULATION, default=32)
    a.add_argument("--offspring", type=options.positive_int, default=8)
    a.add_argument(
        "--seeds", type=options.seed_list, default="0,1,2", help="comma-separated campaign seeds"
    )
    a.add_argument("--jobs", type=options.jobs, default=1)
    return a


def run(args: argparse.Namespace) -> None:
    seeds = list(args.seeds)
    base = CampaignSettings(population=args.population, offspring=args.offspring)
    bench = Bench.open(args.bench or default_bench())
    out = Path(args.out or f"runs/ablation-{bench.model}")
    check_output_folder(out, "--out", ("ablation.csv", "ablation.md", *VARIANTS))
    with created_folder(out), exclusive(run_folder_lock(out), f"ablation folder {out}"):
        evaluator = bench_evaluator(bench, base.calib_images, base.calib_seed, base.split_seed)
        rows = run_ablation(bench, evaluator, base, args.steps, seeds, out, args.jobs)
    print(format_ablation(rows))
    print(f"\nper-seed rows: {out / 'ablation.csv'}")
