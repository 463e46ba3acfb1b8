"""Cost of one bench configuration against one bare FP pass over the test set.

A bench configuration is ``QuantSim.set_config`` + ``evaluate`` over the full test set
(``benchmark.bench.measure``). The target is at most 1.3x the time of a plain forward pass
of the unmodified model (batch 100, ``torch.no_grad``). Prints the figures; asserts nothing.

    python -m benchmark.perf.bench_cost [--model resnet20] [--configs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.bench import BenchSpec, measure, sample_configs
from benchmark.data import load_split
from benchmark.models import check_model_name, checkpoint_path, load_model
from benchmark.ptq import quantizable_layers

TARGET = 1.3


def fp_pass_seconds(model: torch.nn.Module, x: torch.Tensor, batch: int = 100) -> float:
    """Wall time of one forward pass of ``model`` over ``x`` (no gradients)."""
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="zoo model (shipped checkpoint)")
    p.add_argument("--configs", type=int, default=5, help="random configurations to time")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the configurations")
    p.add_argument("--repeats", type=int, default=3, help="bare FP passes (median is used)")
    args = p.parse_args(argv)
    if args.configs < 1 or args.repeats < 1:
        p.error("--configs and --repeats must be >= 1")
    name = check_model_name(args.model)

    x, _ = load_split("test")
    model = load_model(name)
    fp_pass_seconds(model, x[:200])  # warm-up (allocator, kernels)
    fp = [fp_pass_seconds(model, x) for _ in range(args.repeats)]

    spec = BenchSpec(name, str(checkpoint_path(name).resolve()))
    num_layers = len(quantizable_layers(model))
    configs = sample_configs(num_layers, args.configs, args.seed, spec.candidates)
    uniform, mixed = configs[: len(spec.candidates)], configs[len(spec.candidates) :]
    a_bits = (spec.act_bits,) * num_layers

    # Warm-up: the uniform configurations compute Q_b(W) for every (layer, bit) once, as the
    # first configurations of a bench build do; the first call also builds the simulator.
    start = time.perf_counter()
    first = measure(spec, uniform[0], a_bits)[3]
    setup = time.perf_counter() - start - first
    warm = [first] + [measure(spec, c, a_bits)[3] for c in uniform[1:]]
    secs = [measure(spec, c, a_bits)[3] for c in mixed]

    fp_med, cfg_med = statistics.median(fp), statistics.median(secs)
    ratio = cfg_med / fp_med
    rows = [
        ("model", f"{name} ({num_layers} quantizable layers), {len(x)} test images, batch 100"),
        ("torch threads", str(torch.get_num_threads())),
        ("bare FP pass", f"{fp_med:.3f} s  (median of {len(fp)}: "
         + ", ".join(f"{s:.3f}" for s in fp) + ")"),
        ("simulator setup", f"{setup:.3f} s  (once per worker: load, fold BN, calibrate)"),
        ("warm-up configs", ", ".join(f"{s:.3f}" for s in warm)
         + " s  (uniform; include computing Q_b(W))"),
        ("per configuration", f"{cfg_med:.3f} s  (median of {len(secs)}: "
         + ", ".join(f"{s:.3f}" for s in secs) + ")"),
        ("ratio config / FP", f"{ratio:.2f}x  (target <= {TARGET}x: "
         + ("met" if ratio <= TARGET else "NOT met") + ")"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
