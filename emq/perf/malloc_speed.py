"""glibc's malloc told to keep freed memory (``GLIBC_TUNABLES``) against its defaults, side
by side: a setting users can choose, measured, not a default of EMQ's.

PyTorch takes every CPU tensor from ``malloc``. glibc serves a request above its mmap
threshold (at most 32 MiB) with fresh pages and gives them back on ``free``, so a loop that
allocates large tensors of the same size again (each class's backward pass of the true
Fisher) takes a page fault on every 4 KiB of them every time.
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824`` serves
every request from the heap and keeps up to 1 GiB freed at its top, so freed blocks are
reused in place (PyTorch's tuning guide suggests jemalloc/tcmalloc via ``LD_PRELOAD`` for
the same reason).

Runs the commands users run, each in a subprocess with and without that variable,
alternating which goes first from round to round, each with an empty inputs cache of its own:

- ``emq score --model M --bench ...`` with the default proxy (the true Fisher, 512 images)
  for each of ``--models``;
- ``emq score --proxy sqnr_measured`` on the first of them (L x B quantized forward passes);
- ``emq bench build`` of ``--bench-configs`` configurations of the first model (PTQ on the
  10,000 test images);
- ``emq evolve --steps --campaign-steps`` (the default campaign, its inputs cache filled by
  one untimed run first; loky workers).

Prints each command's median wall time, its peak memory (the process tree's PSS and RSS,
sampled every 0.5 s), the ratios, and whether both settings printed the same results (the
scores' correlations, the bench rows, the campaign's best proxy and held-out figures).
Asserts nothing.

    python -m emq.perf.malloc_speed [--models resnet20,mobilenetv2] [--rounds 2]
                                    [--bench-configs 4] [--campaign-steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from benchmark.bench import default_bench
from benchmark.models import check_model_name
from emq.perf.campaign_scale import memory, tree

KEEP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"
SETTINGS = ("defaults", "keep")
ENTRY = "import sys\nfrom emq.cli import main\nsys.exit(main())"


def run(args: list[str], env: dict) -> dict:
    """``emq args`` in a subprocess: wall seconds, peak PSS/RSS of its tree, stdout."""
    start = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-c", ENTRY, *args], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        pss, rss = memory(tree([proc]))
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.5)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"emq {' '.join(args)} failed (exit {proc.returncode}): {err.strip()}")
    return {"wall": time.perf_counter() - start, "pss": peak_pss, "rss": peak_rss, "out": out}


def bench_rows(path: Path) -> list:
    """A built bench's measured rows, in key order (what must not depend on the setting)."""
    with sqlite3.connect(path) as con:
        query = "SELECT config, idx, top1, loss, bops FROM results ORDER BY config"
        return con.execute(query).fetchall()


def campaign_result(out: str) -> tuple:
    res = json.loads(out)
    held = tuple((r["model"], r["spearman@topk"]) for r in res.get("heldout_models", []))
    return res["formula"], res["fitness_search"], held


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bench-configs", type=int, default=4)
    p.add_argument("--campaign-steps", type=int, default=40, help="0: no campaign")
    args = p.parse_args(argv)
    models = [check_model_name(m) for m in args.models.split(",")]
    first = models[0]
    root = Path(tempfile.mkdtemp(prefix="emq-malloc-"))
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "EMQ_SCHEDULER")}

    def env(setting: str, cache: Path) -> dict:
        tunables = {"GLIBC_TUNABLES": KEEP} if setting == "keep" else {}
        return {**base, **tunables, "EMQ_CACHE": str(cache)}

    jobs: dict[str, Callable[[Path], tuple]] = {}
    for m in models:
        bench = str(default_bench(m))
        jobs[f"score {m}"] = lambda d, m=m, b=bench: (["score", "--model", m, "--bench", b], None)
    jobs[f"score {first} sqnr_measured"] = lambda d: (
        ["score", "--model", first, "--bench", str(default_bench(first)), "--proxy",
         "sqnr_measured"], None)  # fmt: skip
    jobs[f"bench build {first}"] = lambda d: (
        ["bench", "build", "--model", first, "--configs", str(args.bench_configs),
         "--out", str(d / "bench.sqlite"), "--jobs", "1"], d / "bench.sqlite")  # fmt: skip
    campaign_cache = root / "campaign-cache"
    if args.campaign_steps:
        steps = ["--steps", str(args.campaign_steps), "--json"]
        print(f"filling the campaign's inputs cache ({campaign_cache}) ...", flush=True)
        run(["evolve", "--run", str(root / "warmup"), *steps], env("defaults", campaign_cache))
        jobs["evolve (inputs cached)"] = lambda d: (["evolve", "--run", str(d / "run"), *steps],
                                                    "campaign")  # fmt: skip

    results: dict[str, dict[str, list[dict]]] = {k: {s: [] for s in SETTINGS} for k in jobs}
    for r in range(args.rounds):
        for name, job in jobs.items():
            for setting in SETTINGS if r % 2 == 0 else reversed(SETTINGS):
                d = root / f"{name.replace(' ', '-')}-{setting}-{r}"
                d.mkdir(parents=True)
                cmd, product = job(d)
                cache = campaign_cache if product == "campaign" else d / "cache"
                res = run(cmd, env(setting, cache))
                if product == "campaign":
                    res["result"] = campaign_result(res["out"])
                elif product is not None:
                    res["result"] = bench_rows(product)
                else:
                    res["result"] = res["out"]
                results[name][setting].append(res)
                print(f"  round {r}: {name}, {setting}: {res['wall']:.1f} s, peak PSS "
                      f"{res['pss'] / 1e9:.2f} GB", flush=True)  # fmt: skip

    print(f"\n{args.rounds} round(s), median wall time; peak PSS (RSS) of the process tree")
    print(f"{'command':<34} {'defaults s':>10} {'keep s':>8} {'ratio':>6} "
          f"{'defaults GB':>15} {'keep GB':>15} {'same results':>13}")  # fmt: skip
    for name, per in results.items():
        wall = {s: statistics.median(x["wall"] for x in per[s]) for s in SETTINGS}
        gb = {s: f"{max(x['pss'] for x in per[s]) / 1e9:.2f} "
                 f"({max(x['rss'] for x in per[s]) / 1e9:.2f})" for s in SETTINGS}  # fmt: skip
        outs = [x["result"] for s in SETTINGS for x in per[s]]
        same = "yes" if all(o == outs[0] for o in outs) else "NO"
        d, k = SETTINGS
        print(f"{name:<34} {wall[d]:>10.1f} {wall[k]:>8.1f} {wall[d] / wall[k]:>5.2f}x "
              f"{gb[d]:>15} {gb[k]:>15} {same:>13}")  # fmt: skip
    print(f"(run folders under {root})")


if __name__ == "__main__":
    main()
