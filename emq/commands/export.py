"""``emq export``: a campaign's best proxy as ``.py``, ``.json`` and formula."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.lock import created_folder, exclusive, run_folder_lock
from emq.export import export_run
from emq.proxy import read_best


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    x = subparsers.add_parser("export", help="export a campaign's best proxy (.py, .json, formula)")
    x.add_argument("run", help="campaign folder")
    x.add_argument("--out", help="output folder (default: the run folder)")
    return x


def run(args: argparse.Namespace) -> None:
    read_best(Path(args.run))  # validated before anything is written
    out = Path(args.out or args.run)
    with created_folder(out), exclusive(run_folder_lock(out), f"folder {out}"):
        paths = export_run(args.run, args.out)
    for kind, path in paths.items():
        print(f"{kind:<8} {path}")
