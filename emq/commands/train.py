"""``emq train``: train a zoo model on Fashion-MNIST (seeded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark import options
from benchmark.models import MODELS
from benchmark.train import TrainConfig, train
from emq.commands.common import print_json_or_table


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = subparsers.add_parser("train", help="train a zoo model on Fashion-MNIST (seeded)")
    t.add_argument("--model", required=True, choices=sorted(MODELS))
    t.add_argument(
        "--epochs",
        type=options.int_range(1, 10_000, "a number of epochs"),
        help="default: the model's recipe (15 if none)",
    )
    t.add_argument("--batch-size", type=options.images, help="default: 128")
    t.add_argument("--seed", type=options.seed, default=0)
    t.add_argument("--out", help="checkpoint path (default: the shipped checkpoint)")
    t.add_argument("--json", action="store_true")
    return t


def run(args: argparse.Namespace) -> None:
    cfg = TrainConfig.for_model(
        args.model, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size
    )
    record = train(args.model, cfg, Path(args.out) if args.out else None)
    print_json_or_table(record, args.json)
