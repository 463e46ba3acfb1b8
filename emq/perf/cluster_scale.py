"""Cluster scaling, measured in one run and printed side by side.

Configurations per second of a bench build and genome evaluations per second of a short
campaign, on local joblib (1 and 2 processes) and on a Dask ``LocalCluster`` of 1 and 2
single-threaded worker processes (joblib's dask backend, inputs sent once per worker).
Rates are wall clock of the whole call, one-time costs included (the coordinator's FP pass
and loading; shipping inputs to workers); the cluster's own start-up is printed apart.
Every setup must give the same results, which is checked and printed.

    python emq/perf/cluster_scale.py [--configs 8] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from benchmark.bench import Bench, build_bench, default_bench
from emq.context import bench_evaluator
from emq.evolve import Campaign, CampaignSettings

# Targets for a 2-worker cluster against one local process (a cluster must be worth its
# set-up): checked here, printed, never asserted in tests.
TARGET = {"bench": 1.6, "campaign": 1.3}


def _setups():
    """(name, local jobs, cluster workers or None) of every setup, local first."""
    yield "joblib, 1 process", 1, None
    yield "joblib, 2 processes", 2, None
    for n in (1, 2):
        yield f"LocalCluster, {n} worker{'s' if n > 1 else ''}", 1, n


def _bench_run(jobs, client, n_configs, tmp: Path):
    out = tmp / "bench.sqlite"
    start = time.perf_counter()
    result = build_bench("resnet20", n_configs, 0, out, jobs=jobs, progress=False, client=client)
    wall = time.perf_counter() - start
    b = Bench.open(out)
    rows = list(zip(b.keys, b.accuracy.tolist(), b.loss.tolist(), strict=True))
    return result["measured"] / wall, wall, result["measured"], rows


def _campaign_run(jobs, client, steps, bench, evaluator, tmp: Path):
    settings = CampaignSettings(population=16, offspring=8, seed=0)
    camp = Campaign(tmp / "run", bench, evaluator, settings, jobs, progress=False, client=client)
    start = time.perf_counter()
    camp.run_steps(steps)
    wall = time.perf_counter() - start
    ck = json.loads((tmp / "run" / "checkpoint.json").read_text())
    return camp.evaluations / wall, wall, camp.evaluations, ck["population"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=8, help="random configs (+4 uniform)")
    p.add_argument("--steps", type=int, default=4, help="campaign steps")
    args = p.parse_args()
    bench = Bench.open(default_bench("resnet20"))
    evaluator = bench_evaluator(bench)  # inputs computed (or loaded from the cache) once
    rows = []
    for name, jobs, workers in _setups():
        cluster = client = None
        startup = 0.0
        if workers:
            t0 = time.perf_counter()
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=None,
            )  # fmt: skip
            client = Client(cluster)
            startup = time.perf_counter() - t0
        try:
            with tempfile.TemporaryDirectory() as tmp:
                b = _bench_run(jobs, client, args.configs, Path(tmp))
            with tempfile.TemporaryDirectory() as tmp:
                c = _campaign_run(jobs, client, args.steps, bench, evaluator, Path(tmp))
        finally:
            if client is not None:
                client.close()
                cluster.close()
        rows.append({"name": name, "startup": startup, "bench": b, "campaign": c})
        print(
            f"  {name}: {b[2]} configs in {b[1]:.1f} s, {c[2]} evaluations in {c[1]:.1f} s"
            + (f" (cluster start-up {startup:.1f} s, not counted)" if workers else ""),
            flush=True,
        )

    base = rows[0]
    print(
        f"\nbench build ({base['bench'][2]} configurations, full test set each) and campaign "
        f"(population 16, 8 offspring, {args.steps} steps), wall clock:\n"
    )
    # Ratios against one local process, and against local joblib with as many processes.
    print(
        f"{'setup':<26} {'configs/s':>10} {'vs 1 proc':>10} {'vs joblib':>10} "
        f"{'evals/s':>9} {'vs 1 proc':>10} {'vs joblib':>10}"
    )
    for i, r in enumerate(rows):
        peer = rows[i - 2] if i >= 2 else r  # cluster of n workers vs joblib with n processes
        cells = [r["name"].ljust(26)]
        for kind, fmt in (("bench", ">10.3f"), ("campaign", ">9.2f")):
            rate = r[kind][0]
            cells += [format(rate, fmt), f"{rate / base[kind][0]:>9.2f}x",
                      f"{rate / peer[kind][0]:>9.2f}x"]  # fmt: skip
        print(" ".join(cells))
    same_bench = all(r["bench"][3] == base["bench"][3] for r in rows)
    same_camp = all(r["campaign"][3] == base["campaign"][3] for r in rows)
    print(f"\nsame bench rows in every setup: {same_bench}; same final population: {same_camp}")
    two = rows[-1]
    for kind, idx in (("bench", 0), ("campaign", 0)):
        ratio = two[kind][idx] / base[kind][idx]
        verdict = "met" if ratio >= TARGET[kind] else "NOT met"
        print(f"target {kind}: 2 workers >= {TARGET[kind]}x one process: {ratio:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
