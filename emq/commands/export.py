"""``emq export``: a campaign's best proxy, or a proxy file (``default``: the shipped default
proxy), as ``.py``, ``.json`` and formula."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.lock import created_folder, exclusive, run_folder_lock
from benchmark.schemas import existing_path, read_json
from emq.export import export_document, export_run
from emq.proxy import DEFAULT_PROXY, read_best


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    x = subparsers.add_parser("export", help="export a campaign's best proxy (.py, .json, formula)")
    x.add_argument("run", help="campaign folder, a proxy JSON file, or 'default' (the shipped "
                   "default proxy, emq/default_proxy.json)")  # fmt: skip
    x.add_argument("--out", help="output folder (default: the run folder; required otherwise)")
    return x


def run(args: argparse.Namespace) -> None:
    path = DEFAULT_PROXY if args.run == "default" else existing_path(args.run)
    if path is not None and path.is_file():
        doc = read_json(path, "proxy file")
        if isinstance(doc, dict) and "format" not in doc and "genome_names" in doc:
            args.run = str(path.parent)  # a campaign's best.json: export its run
            return run(args)
        if not args.out:
            raise ValueError(f"exporting the proxy file {args.run} needs --out DIR")
        out = Path(args.out)
        with created_folder(out), exclusive(run_folder_lock(out), f"folder {out}"):
            paths = export_document(doc, out, f"proxy file {path}")
        for kind, p in paths.items():
            print(f"{kind:<8} {p}")
        return
    read_best(Path(args.run))  # validated before anything is written
    out = Path(args.out or args.run)
    with created_folder(out), exclusive(run_folder_lock(out), f"folder {out}"):
        paths = export_run(args.run, args.out)
    for kind, path in paths.items():
        print(f"{kind:<8} {path}")
