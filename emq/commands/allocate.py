"""``emq allocate``: bits per layer under a BOPs budget or an accuracy target.

A thin adapter: the parser and the command live in ``emq.allocate.cli`` (its
``add_parser`` sets the handler ``args.func``).
"""

from __future__ import annotations

import argparse

from emq.allocate.cli import add_parser


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_parser(subparsers)


def run(args: argparse.Namespace) -> None:
    args.func(args)
