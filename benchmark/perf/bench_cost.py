"""Cost of one bench configuration against one bare FP pass over the test set.

A bench configuration is ``QuantSim.set_config`` + ``evaluate`` over the full test set
(``benchmark.bench.measure``). The target is at most 1.3x the time of a plain forward pass
of the unmodified model (batch 100, ``torch.no_grad``). Prints the figures; asserts nothing.

Both wall-clock and CPU time (``time.process_time``, all threads of this process) are
reported: on a busy machine the wall-clock ratio is noisy, the CPU-time ratio much less so
(most reliable with ``--threads 1``, where no thread spins waiting for another).

    python -m benchmark.perf.bench_cost [--model resnet20] [--configs 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmark.bench import BenchSpec, measure, sample_configs
from benchmark.data import load_split
from benchmark.models import check_model_name, checkpoint_path, load_model
from benchmark.quantizers import quantizable_layers

TARGET = 1.3


def timed(what: str, fn: Callable[[], object]) -> tuple[float, float]:
    """Run ``fn`` once; print and return its (wall, CPU) seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {what:<16} wall {wall:7.3f} s   cpu {cpu:7.3f} s", flush=True)
    return wall, cpu


def fp_pass(model: torch.nn.Module, x: torch.Tensor, batch: int = 100) -> None:
    """One forward pass of ``model`` over ``x`` (no gradients)."""
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i : i + batch])


def fmt(samples: list[tuple[float, float]], k: int) -> str:
    values = [s[k] for s in samples]
    return f"{statistics.median(values):.3f} s  (" + ", ".join(f"{v:.3f}" for v in values) + ")"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="zoo model (shipped checkpoint)")
    p.add_argument("--configs", type=int, default=5, help="random configurations to time")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of the configurations")
    p.add_argument("--repeats", type=int, default=3, help="bare FP passes (median is used)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args(argv)
    if args.configs < 1 or args.repeats < 1 or args.threads < 0:
        p.error("--configs and --repeats must be >= 1, --threads >= 0")
    name = check_model_name(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)

    x, _ = load_split("test")
    model = load_model(name)
    fp_pass(model, x[:200])  # warm-up (allocator, kernels)
    fp = [timed("bare FP pass", lambda: fp_pass(model, x)) for _ in range(args.repeats)]

    spec = BenchSpec(name, str(checkpoint_path(name).resolve()))
    num_layers = len(quantizable_layers(model))
    configs = sample_configs(num_layers, args.configs, args.seed, spec.candidates)
    uniform, mixed = configs[: len(spec.candidates)], configs[len(spec.candidates) :]
    a_bits = (spec.act_bits,) * num_layers

    # Warm-up: the uniform configurations compute Q_b(W) for every (layer, bit) once, as the
    # first configurations of a bench build do; the first call also builds the simulator.
    warm = [timed("warm-up config", lambda c=c: measure(spec, c, a_bits)) for c in uniform]
    runs = [timed("configuration", lambda c=c: measure(spec, c, a_bits)) for c in mixed]

    wall_ratio = statistics.median(r[0] for r in runs) / statistics.median(f[0] for f in fp)
    cpu_ratio = statistics.median(r[1] for r in runs) / statistics.median(f[1] for f in fp)

    def verdict(r: float) -> str:
        return f"{r:.2f}x  (target <= {TARGET}x: {'met' if r <= TARGET else 'NOT met'})"

    rows = [
        ("model", f"{name} ({num_layers} quantizable layers), {len(x)} test images, batch 100"),
        ("torch threads", str(torch.get_num_threads())),
        ("bare FP pass, wall", fmt(fp, 0)),
        ("bare FP pass, cpu", fmt(fp, 1)),
        ("warm-up, wall", fmt(warm, 0) + "  first includes simulator setup and Q_b(W)"),
        ("per config, wall", fmt(runs, 0)),
        ("per config, cpu", fmt(runs, 1)),
        ("ratio, wall", verdict(wall_ratio)),
        ("ratio, cpu", verdict(cpu_ratio)),
    ]
    print_rows(rows)


def print_rows(rows: list[tuple[str, str]]) -> None:
    """``label  value`` lines, labels aligned, after a blank line."""
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
