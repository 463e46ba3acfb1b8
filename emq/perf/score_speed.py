"""Scoring speed: configurations scored per second from a cached score table, next to the
one-time cost of the proxy inputs (cold, then from the cache), measured in one run.

    python emq/perf/score_speed.py [--model resnet20] [--configs 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from benchmark.factory import build_model
from emq.score import model_context, score
from emq.scorers import resolve_scorer
from emq.scoring import config_scores, scorer_inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--proxy", default="emq", help="proxy JSON, run folder or baseline name")
    p.add_argument("--configs", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    scorer = resolve_scorer(args.proxy)
    model = build_model(args.model)
    with tempfile.TemporaryDirectory() as cache:
        names = scorer_inputs(scorer)  # only the inputs the proxy reads, as `emq score` does
        ctx = model_context(model, (2, 3, 4, 8), 128, cache=cache, names=names)  # cached
        t0 = time.perf_counter()
        ctx.inputs  # noqa: B018 - computes and caches the inputs
        cold = time.perf_counter() - t0
        ctx2 = model_context(model, (2, 3, 4, 8), 128, cache=cache, names=names)
        t0 = time.perf_counter()
        ctx2.inputs  # noqa: B018 - loads them from the cache
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        table, _ = score(scorer, ctx2, np.full((1, ctx2.inputs.num_layers), 8))
        table_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    idx = rng.integers(0, table.shape[1], size=(args.configs, table.shape[0]))
    t0 = time.perf_counter()
    scores = config_scores(table, idx)
    gather = time.perf_counter() - t0
    rate = len(scores) / gather
    print(f"model {args.model}, {table.shape[0]} layers x {table.shape[1]} bit options, "
          f"inputs {','.join(names)}")  # fmt: skip
    print(f"one-time inputs, cold        {cold:8.2f} s")
    print(f"one-time inputs, from cache  {warm:8.2f} s")
    print(f"score table (L evaluations)  {table_s:8.3f} s")
    print(f"scoring {args.configs:,} configurations: {gather:.3f} s -> {rate:,.0f} configs/s")


if __name__ == "__main__":
    main()
