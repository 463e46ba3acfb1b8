"""Parallel campaigns, measured in one run and printed side by side (issue 17's targets).

Runs the default campaign (``emq evolve``: fitness over every search-set bench of the zoo)
for ``--steps`` steps in a subprocess per setup:

- one process, with 1 and with 2 torch threads (its best thread setting is the baseline);
- ``--jobs 2`` (two local worker processes, one torch thread each);
- ``--scheduler`` on a Dask ``LocalCluster`` of 2 single-threaded worker processes.

For each it prints wall clock, evaluations/s, start-up (seconds to the first evaluation
result: workers started, inputs mapped), and the peak memory of the whole process tree
(the campaign's processes and, for Dask, the cluster's), sampled every 0.5 s as the sum of
PSS - proportional set size: pages shared by several processes, such as the memory-mapped
proxy inputs, count once in all, not once per process - next to the sum of RSS. Then the
ratios against one process and whether every setup ended on the same population.
Asserts nothing.

    python -m emq.perf.campaign_scale [--steps 100] [--keep DIR] [-- extra evolve options]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

TARGETS = {"speed": 1.6, "memory": 1.3, "startup": 2.0}


def tree(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes and all their descendants, each once."""
    out: dict[int, psutil.Process] = {}
    for p in procs:
        try:
            for q in [p, *p.children(recursive=True)]:
                out.setdefault(q.pid, q)
        except psutil.Error:
            pass
    return list(out.values())


def memory(procs: list[psutil.Process]) -> tuple[int, int]:
    """Sum of PSS and sum of RSS of the processes (0 for those already gone)."""
    pss = rss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        pss += getattr(info, "pss", info.rss)
        rss += info.rss
    return pss, rss


def run(argv: list[str], env: dict, also: list[psutil.Process], setup: str = "") -> dict:
    """``emq evolve argv --json`` in a subprocess (after the Python statements ``setup``);
    wall, peak memory, its JSON summary."""
    start = time.perf_counter()
    code = f"{setup}\nimport sys\nfrom emq.cli import main\nsys.exit(main())"
    proc = psutil.Popen(
        [sys.executable, "-c", code, "evolve", *argv, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        pss, rss = memory(tree([proc, *also]))
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.5)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"emq evolve {' '.join(argv)} failed (exit {proc.returncode})")
    return {
        "wall": time.perf_counter() - start,
        "peak_pss": peak_pss,
        "peak_rss": peak_rss,
        **json.loads(out),
    }


def population(run_dir: Path) -> list:
    return json.loads((run_dir / "checkpoint.json").read_text())["population"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="campaign steps (default 100)")
    p.add_argument("--keep", type=Path, help="keep the run folders here (default: temp)")
    p.add_argument("extra", nargs="*", help="more emq evolve options, after --")
    args = p.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="emq-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k != "EMQ_SCHEDULER"}
    common = ["--steps", str(args.steps), *args.extra]

    def env(threads: int) -> dict:
        return {**base_env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    rows = []

    def record(name: str, res: dict, run_dir: Path) -> None:
        res.update(name=name, run=run_dir)
        rows.append(res)
        print(
            f"  {name}: {res['evaluations']} evaluations in {res['wall']:.0f} s, start-up "
            f"{res.get('startup_seconds', float('nan')):.1f} s, peak PSS "
            f"{res['peak_pss'] / 2**30:.2f} GiB",
            flush=True,
        )

    for threads in (1, 2):
        d = root / f"one-{threads}t"
        record(
            f"1 process, {threads} thread(s)", run([*common, "--run", str(d)], env(threads), []), d
        )
    d = root / "jobs2"
    record("--jobs 2", run([*common, "--run", str(d), "--jobs", "2"], env(2), []), d)

    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    try:
        workers = [c for c in psutil.Process().children(recursive=True)]
        d = root / "dask2"
        argv2 = [*common, "--run", str(d), "--scheduler", cluster.scheduler_address]
        record("LocalCluster, 2 workers", run(argv2, env(2), workers), d)
    finally:
        cluster.close()

    ones = [r for r in rows if r["name"].startswith("1 process")]
    base = min(ones, key=lambda r: r["wall"])
    print(
        f"\ndefault campaign, {args.steps} steps, baseline = {base['name']} (the faster one "
        "process):\n"
    )
    print(
        f"{'setup':<26} {'wall s':>8} {'evals/s':>8} {'speed':>7} {'start-up s':>10} "
        f"{'vs 1':>6} {'peak PSS GiB':>12} {'vs 1':>6} {'peak RSS GiB':>12}"
    )
    for r in rows:
        rate = r["evaluations"] / r["wall"]
        su, su0 = r.get("startup_seconds", float("nan")), base.get("startup_seconds", 1.0)
        print(
            f"{r['name']:<26} {r['wall']:>8.0f} {rate:>8.2f} "
            f"{base['wall'] / r['wall']:>6.2f}x {su:>10.1f} {su / su0:>5.2f}x "
            f"{r['peak_pss'] / 2**30:>12.2f} {r['peak_pss'] / base['peak_pss']:>5.2f}x "
            f"{r['peak_rss'] / 2**30:>12.2f}"
        )
    same = all(population(r["run"]) == population(base["run"]) for r in rows)
    print(f"\nsame final population in every setup: {same}")
    for r in rows:
        if r is base or r["name"].startswith("1 process"):
            continue
        speed = base["wall"] / r["wall"]
        mem = r["peak_pss"] / base["peak_pss"]
        su = r.get("startup_seconds", float("nan")) / base.get("startup_seconds", 1.0)
        print(
            f"{r['name']}: speed {speed:.2f}x (target >= {TARGETS['speed']}x, "
            f"{'met' if speed >= TARGETS['speed'] else 'NOT met'}); memory {mem:.2f}x "
            f"(target <= {TARGETS['memory']}x, {'met' if mem <= TARGETS['memory'] else 'NOT met'}"
            f"); start-up {su:.2f}x (target <= {TARGETS['startup']}x, "
            f"{'met' if su <= TARGETS['startup'] else 'NOT met'})"
        )
    print(f"\nrun folders: {root}")


if __name__ == "__main__":
    main()
