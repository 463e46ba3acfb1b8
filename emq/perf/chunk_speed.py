"""Sample-chunked vs. whole evaluation of real campaign genomes, side by side in one run.

Takes the distinct genomes of the shipped zoo campaigns' final populations and halls of fame
(``runs/zoo40-seed{0,1,2}/checkpoint.json``) and evaluates each on the six search-set benches,
as a multi-bench campaign does (fitness per bench, each model's mapped inputs released after
its part), twice per round, each timed run starting with an empty subexpression cache: with
the per-sample inputs' pointwise chains computed whole, and a few calibration samples at a
time (``emq.graph.CHUNK_ELEMENTS``, the default). Prints both times, their ratio and how many
fitness values differ. Asserts nothing.

    python -m emq.perf.chunk_speed [--genomes 40] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import emq.graph
from benchmark.bench import Bench, default_bench
from benchmark.models import search_models
from emq.context import bench_evaluator
from emq.fitness import evaluate_text

RUNS = Path(__file__).resolve().parents[2] / "runs"


def campaign_genomes() -> list[str]:
    """Distinct formulas of the shipped zoo campaigns' populations and halls of fame."""
    texts: list[str] = []
    for seed in (0, 1, 2):
        state = json.loads((RUNS / f"zoo40-seed{seed}" / "checkpoint.json").read_text())
        for rec in state["population"] + state.get("hall_of_fame", []):
            if rec["formula"] not in texts:
                texts.append(rec["formula"])
    return texts


def timed_fitness(evaluators: list, texts: list[str], chunked: bool) -> tuple[float, np.ndarray]:
    saved = emq.graph.CHUNK_MIN_ELEMENTS
    emq.graph.CHUNK_MIN_ELEMENTS = saved if chunked else 1 << 62
    for ev in evaluators:  # each run starts without the other's small subexpression results
        ev.cache.clear()
    try:
        fits = np.zeros((len(texts), len(evaluators)))
        start = time.perf_counter()
        for i, text in enumerate(texts):
            for j, ev in enumerate(evaluators):
                fits[i, j] = evaluate_text(ev, text)["fitness"]
                ev.release()
        return time.perf_counter() - start, fits
    finally:
        emq.graph.CHUNK_MIN_ELEMENTS = saved


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genomes", type=int, default=40, help="genomes to time (default 40)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both modes (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = campaign_genomes()[: args.genomes]
    models = search_models()
    evaluators = [bench_evaluator(Bench.open(default_bench(m))) for m in models]
    timed_fitness(evaluators, texts[:2], True)  # warm the page cache and the allocator
    times: dict[bool, list[float]] = {False: [], True: []}
    fits: dict[bool, np.ndarray] = {}
    for _ in range(args.rounds):
        for chunked in (False, True):
            seconds, fits[chunked] = timed_fitness(evaluators, texts, chunked)
            times[chunked].append(seconds)
    whole, chunked = np.median(times[False]), np.median(times[True])
    print(f"{len(texts)} genomes x {len(models)} search benches ({', '.join(models)}), "
          f"{args.threads} torch threads, median of {args.rounds} rounds")  # fmt: skip
    print(f"{'evaluation':<12} {'seconds':>8} {'s/genome':>9}")
    for label, sec in (("whole", whole), ("chunked", chunked)):
        print(f"{label:<12} {sec:>8.1f} {sec / len(texts):>9.3f}")
    differ = int(np.sum(fits[False] != fits[True]))
    print(f"chunked is {whole / chunked:.2f}x faster; fitness values that differ: {differ} of "
          f"{fits[True].size} (max |difference| "
          f"{float(np.max(np.abs(fits[False] - fits[True]))):.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
