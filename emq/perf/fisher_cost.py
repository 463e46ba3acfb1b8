"""What the true Fisher costs: its score table against the empirical Fisher's, side by side.

The default proxy since 2026-12-07, ``revert(sq_norm(Dz))``, reads ``Dz``: ``D`` plus one
backward pass of the float64 model per class (ten), each contracted with every layer's
``D``. The empirical Fisher it replaced, ``revert(sq_norm(sample_sum(mul(D, Ga))))``, reads
``D`` and ``Ga`` (one backward pass). This times both tables over the same calibration
images (512, 128 at a time: ``emq score`` / ``emq allocate`` phase 1), alternating rounds in
one process, no inputs cache. Prints the figures; asserts nothing.

    python -m emq.perf.fisher_cost [--models resnet20,mobilenetv2] [--rounds 3]
                                   [--batch 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.models import check_model_name, load_model
from emq.genome import from_string
from emq.graph import canonical
from emq.proxy import ProxyScorer
from emq.score import model_context
from emq.scorers import resolve_scorer
from emq.scoring import SCORING_IMAGES, score_table, scorer_inputs
from emq.seeds import EMPIRICAL_FISHER


def timed(scorer, model: torch.nn.Module, batch: int) -> float:
    """Seconds for the scorer's table from no computed inputs."""
    ctx = model_context(model, (2, 3, 4, 8), batch, cache=False, names=scorer_inputs(scorer))
    start = time.perf_counter()
    score_table(scorer, ctx)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=SCORING_IMAGES)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scorers = {"empirical": ProxyScorer("empirical", canonical(from_string(EMPIRICAL_FISHER))),
               "true": resolve_scorer("default")}  # fmt: skip
    for name in args.models.split(","):
        check_model_name(name)
        model = load_model(name)
        times: dict[str, list[float]] = {k: [] for k in scorers}
        for r in range(args.rounds):
            for key in scorers if r % 2 == 0 else reversed(scorers):
                times[key].append(timed(scorers[key], model, args.batch))
        emp, true = (statistics.median(times[k]) for k in scorers)
        print(f"{name}: {args.batch} images, {args.rounds} rounds, {args.threads} thread(s): "
              f"empirical Fisher {emp:.1f} s, true Fisher {true:.1f} s (median) -> "
              f"{true / emp:.2f}x the time")  # fmt: skip


if __name__ == "__main__":
    main()
