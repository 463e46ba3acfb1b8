"""Cost of AdaRound: learning the rounding cache, and bench seconds per configuration.

Learns the full AdaRound cache of a model (every layer at every candidate bit-width) into a
fresh temporary cache folder, then times the same random configurations with nearest
rounding and with AdaRound (``benchmark.bench.measure``; the warm-up configurations build
``Q_b(W)`` / stitch the learned weights once). Prints the figures side by side; asserts
nothing. Wall-clock and CPU time are both reported (CPU time is the steadier figure on a
busy machine).

    python -m benchmark.perf.adaround_cost [--model resnet20] [--configs 4] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from benchmark.adaround import AdaRounder, AdaRoundSettings
from benchmark.bench import BenchSpec, _simulator, measure, sample_configs
from benchmark.data import calibration_batch
from benchmark.models import check_model_name, checkpoint_path, load_model
from benchmark.perf.bench_cost import fmt, print_rows, timed
from benchmark.ptq import DEFAULT_BITS, fold_bn
from benchmark.quantizers import CLIP_GRID, quantizable_layers


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="zoo model (shipped checkpoint)")
    p.add_argument("--configs", type=int, default=4, help="random configurations to time")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the configurations")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args(argv)
    if args.configs < 1 or args.threads < 0:
        p.error("--configs must be >= 1, --threads >= 0")
    name = check_model_name(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = AdaRoundSettings()
    model = load_model(name)
    num_layers = len(quantizable_layers(model))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EMQ_CACHE"] = tmp  # a cold cache: nothing shipped or cached is reused
        folded = fold_bn(model, calibration_batch(8, 0)[0])
        rounder = AdaRounder(folded, CLIP_GRID, settings)
        rounder.cache.masks.clear()  # ignore a shipped cache: time the learning itself
        learn = timed("AdaRound cache", lambda: rounder.prepare(DEFAULT_BITS, progress=False))
        fallbacks = sum(s["fallback"] for s in rounder.cache.stats.values())
        flipped = statistics.mean(s["flipped"] for s in rounder.cache.stats.values())

        timings = {}
        for rounding in ("nearest", "adaround"):
            spec = BenchSpec(name, str(checkpoint_path(name).resolve()), rounding=rounding,
                             adaround=settings if rounding == "adaround" else None)  # fmt: skip
            if rounding == "adaround":
                _simulator(spec)[0].rounder.cache.masks.update(rounder.cache.masks)
            configs = sample_configs(num_layers, args.configs, args.seed, spec.candidates)
            a_bits = (spec.act_bits,) * num_layers
            uniform, mixed = configs[: len(spec.candidates)], configs[len(spec.candidates) :]
            warm = [timed(f"warm-up {rounding}", lambda c=c, s=spec, a=a_bits: measure(s, c, a))
                    for c in uniform]  # fmt: skip
            runs = [timed(f"config {rounding}", lambda c=c, s=spec, a=a_bits: measure(s, c, a))
                    for c in mixed]  # fmt: skip
            timings[rounding] = (warm, runs)

    near, ada = timings["nearest"][1], timings["adaround"][1]
    rows = [
        ("model", f"{name} ({num_layers} layers), bits {list(DEFAULT_BITS)}, 10,000 test images"),
        ("torch threads", str(torch.get_num_threads())),
        ("AdaRound settings", ", ".join(f"{k}={v}" for k, v in settings.to_dict().items())),
        ("AdaRound cache", f"wall {learn[0]:.1f} s, cpu {learn[1]:.1f} s for "
                           f"{num_layers * len(DEFAULT_BITS)} (layer, bit) pairs"),  # fmt: skip
        ("  per (layer, bit)", f"{learn[0] / (num_layers * len(DEFAULT_BITS)):.2f} s wall"),
        ("  rounding", f"{flipped:.1%} of weights rounded away from nearest on average; "
                       f"{fallbacks} pairs kept nearest"),  # fmt: skip
        ("per config nearest, wall", fmt(near, 0)),
        ("per config AdaRound, wall", fmt(ada, 0)),
        ("per config nearest, cpu", fmt(near, 1)),
        ("per config AdaRound, cpu", fmt(ada, 1)),
        ("ratio AdaRound/nearest, cpu",
         f"{statistics.median(r[1] for r in ada) / statistics.median(r[1] for r in near):.2f}x"),
        ("cache / one config, wall",
         f"{learn[0] / statistics.median(r[0] for r in ada):.0f} configurations' worth"),
    ]  # fmt: skip
    print_rows(rows)


if __name__ == "__main__":
    main()
