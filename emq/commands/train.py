"""``emq train``: train a zoo model, or your own ``module.path:factory``, on Fashion-MNIST
(seeded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark import options
from benchmark.models import MODELS
from benchmark.train import TrainConfig, train
from emq.commands.common import print_json_or_table


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = subparsers.add_parser(
        "train", help="train a zoo model or your own module.path:factory on Fashion-MNIST (seeded)"
    )
    t.add_argument(
        "--model", required=True,
        help=f"a zoo model ({', '.join(sorted(MODELS))}) or your own module.path:factory",
    )  # fmt: skip
    t.add_argument(
        "--epochs",
        type=options.int_range(1, 10_000, "a number of epochs"),
        help="default: the model's recipe (15 if none)",
    )
    t.add_argument("--batch-size", type=options.images, help="default: 128")
    t.add_argument(
        "--optimizer", choices=("sgd", "adamw"),
        help="default: the zoo model's recipe, else sgd (Nesterov momentum)",
    )  # fmt: skip
    t.add_argument(
        "--lr", type=options.positive_float,
        help="peak one-cycle learning rate (default: the recipe's, else 0.1)",
    )  # fmt: skip
    t.add_argument(
        "--weight-decay", type=options.nonneg_float,
        help="on weight matrices (default: the recipe's, else 5e-4)",
    )  # fmt: skip
    t.add_argument(
        "--augment", action=argparse.BooleanOptionalAction,
        help="random crop and flip of each batch (default: the recipe's, else on)",
    )  # fmt: skip
    t.add_argument("--seed", type=options.seed, default=0)
    t.add_argument(
        "--out", help="checkpoint path (default: a zoo model's shipped checkpoint; required "
        "for a factory)",
    )  # fmt: skip
    t.add_argument("--json", action="store_true")
    return t


def run(args: argparse.Namespace) -> None:
    cfg = TrainConfig.for_model(
        args.model, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
        optimizer=args.optimizer, max_lr=args.lr, weight_decay=args.weight_decay,
        augment=args.augment,
    )  # fmt: skip
    record = train(args.model, cfg, Path(args.out) if args.out else None)
    print_json_or_table(record, args.json)
