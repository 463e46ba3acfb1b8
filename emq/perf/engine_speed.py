"""Engine speed, measured in one run and printed side by side.

1. Time per genome: the score table (L graph evaluations + one gather over all bench
   configurations) vs. the naive way (the graph re-evaluated per configuration and layer,
   as EMQ does), with the two score vectors compared.
2. Genome evaluations per second in a short campaign with 1 and 2 jobs.

    python emq/perf/engine_speed.py [--bench PATH] [--genomes 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark.bench import Bench, default_bench
from emq.context import bench_evaluator
from emq.evolve import Campaign, CampaignSettings
from emq.fitness import naive_scores
from emq.genome import from_string
from emq.graph import canonical
from emq.scoring import config_scores

GENOMES = [
    "mul(softmax(abslog(mul(V, b))), sqrt(relu(mul(W, b))))",
    "revert(mul(to_mean_scalar(H), sq_norm(E)))",
    "revert(abs(sum(mul(Ga, D))))",
    "sub(l1_norm(sigmoid(Wq)), logsoftmax(add(Wq, abslog(abs(to_std_scalar(E))))))",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", default=str(default_bench("resnet20")))
    p.add_argument("--genomes", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    bench = Bench.open(args.bench)
    evaluator = bench_evaluator(bench)
    idx = bench.bit_index()
    print(f"bench {bench.path}: {len(bench)} configurations x {bench.num_layers} layers\n")
    print(f"{'genome':<58} {'table s':>9} {'naive s':>9} {'speed-up':>9} {'max |diff|':>11}")
    ratios = []
    for text in GENOMES[: args.genomes]:
        expr = canonical(from_string(text))
        t0 = time.perf_counter()
        fast = config_scores(evaluator.table(expr), idx)
        t1 = time.perf_counter()
        slow = naive_scores(expr, evaluator.inputs, idx)
        t2 = time.perf_counter()
        diff = float(np.max(np.abs(fast - slow)) / max(np.max(np.abs(slow)), 1e-30))
        ratios.append((t2 - t1) / (t1 - t0))
        name = text if len(text) <= 58 else text[:55] + "..."
        print(f"{name:<58} {t1 - t0:>9.3f} {t2 - t1:>9.2f} {ratios[-1]:>8.0f}x {diff:>11.1e}")
    print(f"\nscore table vs naive: geometric mean speed-up {np.exp(np.mean(np.log(ratios))):.0f}x")

    print("\ncampaign (population 16, 8 offspring per step):")
    rates = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            settings = CampaignSettings(population=16, offspring=8, seed=0)
            camp = Campaign(Path(tmp) / "run", bench, evaluator, settings, jobs, progress=False)
            start = time.perf_counter()
            camp.run_steps(args.steps)
            wall = time.perf_counter() - start
            rates[jobs] = camp.evaluations / wall
            print(
                f"  jobs={jobs}: {camp.evaluations} evaluations in {wall:.1f} s "
                f"-> {rates[jobs]:.1f} evals/s (wall clock, incl. screening and I/O)"
            )
    print(f"  2 jobs / 1 job: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
