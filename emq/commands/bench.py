"""``emq bench build`` and ``emq bench info``: build or inspect a bench file."""

from __future__ import annotations

import argparse
import json

from benchmark import options
from benchmark.bench import TEST_IMAGES, Bench, build_bench, default_bench
from benchmark.cluster import connected, scheduler_address
from benchmark.models import HELDOUT_MODELS, MODELS
from emq.commands.common import (
    CONFIG_COUNT,
    adaround_settings,
    add_rounding_arguments,
    add_scheduler_argument,
    print_json_or_table,
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    b = subparsers.add_parser("bench", help="build or inspect a bench file")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    bb = bsub.add_parser("build", help="measure PTQ accuracy of sampled configurations")
    bb.add_argument(
        "--model", required=True,
        help=f"a zoo model ({', '.join(sorted(MODELS))}) or your own module.path:factory",
    )  # fmt: skip
    bb.add_argument("--configs", type=CONFIG_COUNT, required=True, help="number of random configs")
    bb.add_argument("--seed", type=options.seed, default=0, help="sampling seed")
    bb.add_argument("--out", required=True, help="SQLite bench file (resumed if it exists)")
    bb.add_argument("--jobs", type=options.jobs, default=1, help="parallel worker processes")
    add_scheduler_argument(bb)
    bb.add_argument("--checkpoint", help="state_dict to load (default: shipped checkpoint)")
    bb.add_argument(
        "--bits", type=options.bit_list, default="2,3,4,8", help="weight bit candidates"
    )
    bb.add_argument("--act-bits", type=options.bits, default=8, help="activation bit-width")
    bb.add_argument(
        "--test-images", type=options.int_range(1, TEST_IMAGES, "a number of test images"),
        default=TEST_IMAGES,
        help="measure on the first N test images (default: all; fewer = a quick, noisier bench)",
    )  # fmt: skip
    add_rounding_arguments(bb)
    bb.add_argument("--json", action="store_true")
    bi = bsub.add_parser("info", help="summarize a bench file")
    bi.add_argument("path", nargs="?", help="bench file (default: shipped ResNet-20 bench)")
    bi.add_argument(
        "--zoo",
        action="store_true",
        help="one line per zoo model: split, size, FP top-1, shipped bench",
    )
    bi.add_argument("--json", action="store_true")
    return b


def run(args: argparse.Namespace) -> None:
    {"build": run_build, "info": run_info}[args.bench_command](args)


def run_build(args: argparse.Namespace) -> None:
    with connected(scheduler_address(args.scheduler)) as client:  # before any file exists
        result = build_bench(
            args.model, args.configs, args.seed, args.out, jobs=args.jobs,
            checkpoint=args.checkpoint, candidates=args.bits, act_bits=args.act_bits,
            rounding=args.rounding, adaround=adaround_settings(args), client=client,
            test_images=args.test_images,
        )  # fmt: skip
    print_json_or_table(result, args.json)


def run_info(args: argparse.Namespace) -> None:
    if args.zoo:
        print_zoo(args.json)
        return
    bench = Bench.open(args.path or default_bench())
    info = bench.info()
    if args.json:
        info["layer_table"] = bench.layers
        print(json.dumps(info, indent=2))
        return
    print_json_or_table(info, False)
    print(f"\n{'layer':<28} {'kind':<7} {'params':>8} {'MACs':>10}")
    for layer in bench.layers:
        print(f"{layer['name']:<28} {layer['kind']:<7} {layer['params']:>8} {layer['macs']:>10}")


def print_zoo(as_json: bool) -> None:
    """One row per zoo model: its split, size, FP top-1 and shipped bench (if any)."""
    rows = []
    for name in MODELS:
        row: dict = {"model": name, "split": "held-out" if name in HELDOUT_MODELS else "search"}
        path = default_bench(name)
        if path.is_file():
            info = Bench.open(path).info()
            row.update({k: info[k] for k in ("layers", "params", "macs", "fp_top1", "configs",
                                              "top1_min", "top1_median", "top1_max")})  # fmt: skip
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<13} {'split':<9} {'layers':>6} {'params':>8} {'MMACs':>6} {'FP %':>6} "
          f"{'configs':>7}  top-1 % min / median / max")  # fmt: skip
    for r in rows:
        if "configs" not in r:
            print(f"{r['model']:<13} {r['split']:<9} (no shipped bench)")
            continue
        print(
            f"{r['model']:<13} {r['split']:<9} {r['layers']:>6} {r['params']:>8} "
            f"{r['macs'] / 1e6:>6.1f} {r['fp_top1']:>6.2f} {r['configs']:>7}  "
            f"{r['top1_min']:.2f} / {r['top1_median']:.2f} / {r['top1_max']:.2f}"
        )
