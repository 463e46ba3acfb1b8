"""``emq baselines``: the correlation table of the handcrafted baseline proxies on a bench
(EMQ's Table 1)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark import options
from benchmark.bench import Bench, default_bench
from benchmark.lock import created_folder, exclusive, run_folder_lock
from emq.baselines import BASELINES, get_baseline
from emq.baselines.table import SPLITS, default_out_dir, run_baselines
from emq.commands.common import check_rankable_split, name_list
from emq.reports.baselines import format_baselines
from emq.reports.common import clean
from emq.scoring import SCORING_CHUNK, SCORING_IMAGES


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "baselines", help="correlation table of the handcrafted baseline proxies on a bench"
    )
    p.add_argument("--bench", help="bench file (default: the shipped ResNet-20 bench)")
    p.add_argument("--split", choices=SPLITS, default="heldout", help="configurations to rank")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"subset of: {', '.join(BASELINES)}")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/baselines-<bench>)")
    p.add_argument("--checkpoint", help="model state_dict the bench was built from")
    p.add_argument(
        "--batch", type=options.images, default=SCORING_IMAGES,
        help=f"calibration images (default {SCORING_IMAGES}, as emq score: training-free "
        f"baselines read them {SCORING_CHUNK} at a time and average; measured ones run on all)",
    )  # fmt: skip
    p.add_argument("--seed", type=options.seed, default=0,
                   help="split / calibration / baseline seed")  # fmt: skip
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> None:
    names = list(name_list(args.only)) if args.only else None
    for name in names or ():
        get_baseline(name)
    bench = Bench.open(args.bench or default_bench())
    check_rankable_split(bench, args.split, args.seed)
    out = Path(args.out) if args.out else default_out_dir(bench)
    with created_folder(out), exclusive(run_folder_lock(out), f"output folder {out}"):
        rows = run_baselines(
            bench, args.split, out, names, seed=args.seed, checkpoint=args.checkpoint,
            batch=args.batch, progress=not args.json,
        )  # fmt: skip
    if args.json:
        result = {
            "bench": str(bench.path),
            "split": args.split,
            "out": str(out),
            "baselines": [clean(r) for r in rows],
        }
        print(json.dumps(result, indent=2))
        return
    n = rows[0]["configs"]
    print(f"{bench.model}: {n} {args.split} configurations; correlations in %, * = measured")
    print(format_baselines(rows))
    print(f"\nwrote {out / 'baselines.csv'}, {out / 'baselines.png'}, {out / 'tables.npz'}")
