"""Scoring 512 calibration images in chunks: ``Q_b(W)`` quantized once, against once per chunk.

``emq score`` / ``emq allocate`` / ``emq baselines`` compute a training-free scorer's table
over 512 images, 128 at a time (``emq.scoring.score_table``); ``Q_b(W)`` (the MSE clip
search per layer and bit) does not depend on the images, so the chunks reuse the first
one's (``primitives.inputs.reuse_quantized_weights``). This times the default proxy's table
both ways, alternating rounds in one process (no inputs cache), and checks that the tables
are identical. Prints the figures; asserts nothing.

    python -m emq.perf.quantize_reuse_speed [--models resnet20,mobilenetv2] [--rounds 3]
                                            [--batch 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

import emq.scoring as scoring
from benchmark.models import check_model_name, load_model
from emq.score import model_context
from emq.scorers import resolve_scorer
from emq.scoring import SCORING_IMAGES, score_table, scorer_inputs
from primitives.inputs import reuse_quantized_weights


def timed_table(scorer, ctx, reuse: bool) -> tuple[float, np.ndarray]:
    """Seconds for ``score_table`` from no computed inputs, with or without the reuse."""
    scoring.reuse_quantized_weights = reuse_quantized_weights if reuse else contextlib.nullcontext
    try:
        ctx.drop_inputs()
        start = time.perf_counter()
        table = score_table(scorer, ctx)
        return time.perf_counter() - start, table
    finally:
        scoring.reuse_quantized_weights = reuse_quantized_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=SCORING_IMAGES)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scorer = resolve_scorer("default")
    for name in args.models.split(","):
        check_model_name(name)
        model = load_model(name)
        ctx = model_context(model, (2, 3, 4, 8), args.batch, cache=False,
                            names=scorer_inputs(scorer))  # fmt: skip
        timed_table(scorer, ctx, True)  # warm-up: allocator, first-touch pages
        times: dict[bool, list[float]] = {True: [], False: []}
        tables: dict[bool, np.ndarray] = {}
        for r in range(args.rounds):
            for reuse in (False, True) if r % 2 == 0 else (True, False):
                seconds, tables[reuse] = timed_table(scorer, ctx, reuse)
                times[reuse].append(seconds)
        once, per_chunk = statistics.median(times[True]), statistics.median(times[False])
        same = np.array_equal(tables[True], tables[False])
        head = f"{name}: {args.batch} images in {len(ctx.chunks())} chunks, {args.rounds} rounds"
        print(f"{head}, {args.threads} thread(s): Q_b(W) per chunk {per_chunk:.2f} s, once "
              f"{once:.2f} s (median) -> {per_chunk / once:.2f}x; same tables: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
