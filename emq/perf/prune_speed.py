"""Pruned vs. full evaluation of the default campaign, side by side in one run.

Runs the default campaign (every search-set bench, the default settings) for ``--steps``
steps twice in this process, in new run folders: once evaluating every child on every bench,
once stopping a child as soon as it cannot reach the population's minimum
(``MultiEvaluator.evaluate``, cheapest bench first). Prints each run's wall-clock time,
evaluation time, evaluations and pruned children, the ratio, and whether the two campaigns
ended identical (population, fitness, per-step best and median, hall of fame). Asserts
nothing. The proxy inputs come from the cache (``EMQ_CACHE``): run once cold to fill it.

    python -m emq.perf.prune_speed [--steps 40] [--seed 0] [--jobs 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmark.bench import Bench, default_bench
from benchmark.models import search_models
from emq.evolve import CampaignSettings
from emq.transfer import bench_campaign


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="campaign steps (default 40)")
    p.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="evaluation processes (default 1)")
    args = p.parse_args(argv)
    benches = [Bench.open(default_bench(m)) for m in search_models()]
    settings = CampaignSettings(seed=args.seed)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for prune in (False, True):
            camp = bench_campaign(
                Path(tmp) / f"prune-{prune}", benches, settings, jobs=args.jobs, progress=False
            )
            camp.prune = prune
            start = time.perf_counter()
            camp.run_steps(args.steps)
            runs[prune] = (camp, time.perf_counter() - start)
    print(f"default campaign, {args.steps} steps, seed {args.seed}, {args.jobs} job(s), "
          f"{len(benches)} search benches ({', '.join(b.model for b in benches)})")  # fmt: skip
    print(f"{'evaluation':<10} {'wall s':>8} {'eval s':>8} {'evals':>6} {'pruned':>7}")
    for prune, (camp, wall) in runs.items():
        label = "pruned" if prune else "full"
        print(f"{label:<10} {wall:>8.1f} {camp.eval_seconds:>8.1f} {camp.evaluations:>6} "
              f"{camp.screener.counts['pruned']:>7}")  # fmt: skip
    (full, full_wall), (pruned, pruned_wall) = runs[False], runs[True]

    def outcome(c):
        return (
            [(str(g), g.fitness.values) for g in c.population],
            [(h["best"], h["median"]) for h in c.history],
            c.hof,
        )

    same = outcome(full) == outcome(pruned)
    print(f"pruned is {full_wall / pruned_wall:.2f}x faster (wall); the campaigns end "
          f"{'identical' if same else 'DIFFERENT'}; best {pruned.best()}")  # fmt: skip


if __name__ == "__main__":
    main()
