"""Heap trimming after every score table vs. only once the heap has grown, side by side.

Runs the default campaign (every search-set bench, the default settings) for ``--steps``
steps in a fresh subprocess per run, alternating the two settings for ``--rounds`` rounds:
``emq.graph.TRIM_GROWTH = 0`` (glibc ``malloc_trim`` after every score table, as before
2026-12-06) and the default (a trim only once the anonymous resident memory has grown by
``TRIM_GROWTH`` since the last one). Prints each run's wall-clock time and peak memory of
the process tree (PSS and RSS, sampled every 0.5 s), the median ratio, and whether every
run ended on the same best proxy and fitness (trimming never changes a value). Asserts
nothing. The proxy inputs come from the cache (``EMQ_CACHE``): run once cold to fill it.

    python -m emq.perf.trim_speed [--steps 40] [--rounds 2] [-- extra evolve options]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import emq.graph
from emq.perf.campaign_scale import population, run

SETTINGS = {
    "trim after every table": "import emq.graph\nemq.graph.TRIM_GROWTH = 0",
    f"trim after {emq.graph.TRIM_GROWTH >> 20} MB of growth": "",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="campaign steps (default 40)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each setting (default 2)")
    p.add_argument("extra", nargs="*", help="more emq evolve options, after --")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "EMQ_SCHEDULER"}
    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    outcomes = set()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, setup) in enumerate(SETTINGS.items()):
                run_dir = Path(tmp) / f"run-{r}-{i}"
                argv_ = ["--run", str(run_dir), "--steps", str(args.steps), *args.extra]
                res = run([*argv_, "--heldout", "none"], env, [], setup)
                walls[name].append(res["wall"])
                pop = [(g["formula"], g["fitness"]) for g in population(run_dir)]
                outcomes.add((res["formula"], res["fitness_search"], repr(pop)))
                print(f"{name:<28} round {r}: {res['wall']:7.1f} s, {res['evaluations']} "
                      f"evaluations, peak PSS {res['peak_pss'] / 2**30:.2f} GiB, "
                      f"RSS {res['peak_rss'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
    (always, always_t), (gated, gated_t) = walls.items()
    ratio = statistics.median(always_t) / statistics.median(gated_t)
    print(f"default campaign, {args.steps} steps: '{gated}' is {ratio:.2f}x as fast as "
          f"'{always}' (median wall of {args.rounds}); every run ended on "
          f"{'the same' if len(outcomes) == 1 else 'DIFFERENT'} population")  # fmt: skip


if __name__ == "__main__":
    main()
