"""ONNX Runtime vs. the PTQ simulator: top-1 of an exported allocation on all 10,000 test
images, next to the simulator's, and how many predictions differ.

    python -m emq.cli allocate --model resnet20 --method ilp --budget-bops 0.35 --out DIR
    python emq/perf/onnx_agreement.py DIR/ilp-default-bops0.35.json [MORE.json ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmark.data import load_split
from emq.deploy import allocation_simulator, export_allocation, load_allocation, onnx_logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("allocations", nargs="+", help="allocation JSONs written by emq allocate")
    p.add_argument("--images", type=int, default=10_000, help="first N test images")
    args = p.parse_args()
    torch.set_num_threads(1)
    x, y = load_split("test")
    x, y = x[: args.images], y[: args.images].numpy()
    print(f"{'model':<12} {'bits':<22} {'sim %':>7} {'ORT %':>7} {'diff':>6} "
          f"{'differ':>6} {'max |dlogit|':>12} {'ORT s':>6}")  # fmt: skip
    for path in args.allocations:
        doc = load_allocation(path)
        sim = allocation_simulator(doc)
        exported = export_allocation(sim, doc["w_bits"], doc["a_bits"], encodings=False)
        try:
            sim.set_config(doc["w_bits"], doc["a_bits"])
            ref = sim.forward(x).numpy()
        finally:
            sim.set_fp()
        start = time.perf_counter()
        out = onnx_logits(exported.model, x)
        seconds = time.perf_counter() - start
        top1 = [100.0 * float((z.argmax(1) == y).mean()) for z in (ref, out)]
        differ = int((ref.argmax(1) != out.argmax(1)).sum())
        pairs = zip(doc["w_bits"], doc["a_bits"], strict=True)
        bits = ",".join(sorted({f"W{w}A{a}" for w, a in pairs}))
        print(f"{doc['model']:<12} {bits:<22} {top1[0]:>7.2f} {top1[1]:>7.2f} "
              f"{top1[1] - top1[0]:>+6.2f} {differ:>6} {np.abs(ref - out).max():>12.3g} "
              f"{seconds:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
