"""``emq transfer``: leave-one-architecture-out (evolve on the other zoo models, judge on the
left-out one, next to every baseline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark import options
from benchmark.bench import Bench
from benchmark.lock import created_folder, exclusive, run_folder_lock
from emq.baselines import get_baseline
from emq.commands.common import (
    POPULATION,
    add_combine_arguments,
    campaign_settings,
    check_output_folder,
    distinct_names,
    name_list,
)
from emq.fitness import AGGREGATES
from emq.transfer import (
    POOL_TOP,
    aggregate_study,
    parse_models,
    run_transfer,
    shipped_bench,
    zoo_models_with_bench,
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    tr = subparsers.add_parser(
        "transfer",
        help="leave-one-architecture-out: evolve on the other zoo models, judge on the left-out",
    )
    tr.add_argument(
        "--models",
        metavar="M1,M2,...",
        help="zoo models to leave out in turn (default: every model with a bench)",
    )
    tr.add_argument(
        "--seeds",
        type=options.seed_list,
        default="0",
        help="comma-separated campaign seeds (default 0)",
    )
    tr.add_argument(
        "--steps", type=options.nonneg_int, default=40, help="steps per campaign (default 40)"
    )
    tr.add_argument("--population", type=POPULATION, default=32, help="population (default 32)")
    tr.add_argument("--bench-agg", choices=list(AGGREGATES), help="default: mean-std")
    tr.add_argument("--inputs", metavar="A,W,...", help="proxy inputs (default: all but H)")
    add_combine_arguments(tr)
    tr.add_argument(
        "--baselines",
        metavar="NAME,...",
        help="baselines to compare with (default: every registered baseline; none: no baselines)",
    )
    tr.add_argument(
        "--pool",
        metavar="RUN,...",
        help="instead of campaigns: choose the bench aggregate by leave-one-out selection "
        "from the final populations of these run folders (and the literature seeds)",
    )
    tr.add_argument(
        "--pool-top",
        type=options.positive_int,
        default=POOL_TOP,
        help=f"with --pool: the fittest members of each population to take (default {POOL_TOP}; "
        "each hall of fame is taken whole)",
    )
    tr.add_argument("--jobs", type=options.jobs, default=1, help="parallel evaluation processes")
    tr.add_argument("--out", default="runs/transfer", help="output folder (resumable)")
    tr.add_argument("--json", action="store_true")
    return tr


def run(args: argparse.Namespace) -> None:
    seeds = args.seeds
    models = parse_models(args.models, "--models") or zoo_models_with_bench()
    if len(models) < 2:
        raise ValueError(f"--models {args.models}: leave-one-out needs at least two models, "
                         "e.g. --models vgg,resnext")  # fmt: skip
    kw = {"population": args.population, "bench_agg": args.bench_agg,
          "combine": args.combine, "dz_images": args.dz_images, "cross": args.cross}  # fmt: skip
    if args.inputs is not None:
        kw["inputs"] = distinct_names(args.inputs, "--inputs")
    settings = campaign_settings(**kw)
    names = None
    if args.baselines == "none":
        names = []
    elif args.baselines:
        names = [get_baseline(n).name for n in name_list(args.baselines)]
    benches = {m: Bench.open(shipped_bench(m)) for m in models}
    runs = [Path(r) for r in name_list(args.pool)] if args.pool else []
    for r in runs:
        if not (r / "checkpoint.json").is_file():
            raise ValueError(f"--pool: {r} is not a campaign run folder (no checkpoint.json)")
    out = Path(args.out)
    check_output_folder(out, "--out", ("transfer", "leave-", "pool-", "aggregates"))
    if args.pool:
        with created_folder(out), exclusive(run_folder_lock(out), f"transfer folder {out}"):
            doc = aggregate_study(out, benches, runs, settings, baselines=names, top=args.pool_top)
        print_aggregates(doc, args.json)
        return
    with created_folder(out), exclusive(run_folder_lock(out), f"transfer folder {out}"):
        result = run_transfer(
            out, benches, seeds, args.steps, settings, baselines=names, jobs=args.jobs
        )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print(f"{'left out':<14} {'evolved S@topk (mean, min)':<28} best training-free baseline")
    for s in result["summary"]:
        mark = "  evolved best" if s["evolved_is_best"] else ""
        print(
            f"{s['left_out']:<14} {s['evolved_mean_topk']:>8.4f}, {s['evolved_min_topk']:<17.4f} "
            f"{s['best_baseline']} {s['best_baseline_topk']:.4f}{mark}"
        )
    wins = sum(s["evolved_is_best"] for s in result["summary"])
    print(f"evolved proxy best training-free scorer on {wins} of {len(result['summary'])} models")
    print(f"written to {args.out}/ (transfer.csv, transfer.json, transfer.png)")


def print_aggregates(doc: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return
    print(f"{doc['candidates']} candidates, {doc['valid_everywhere']} valid on every model")
    n = len(doc["models"])
    print(f"{'aggregate':<10} {'mean S@topk':>11} {'min S@topk':>10} {'distinct picks':>14}  best")
    for s in doc["summary"]:
        wins = s.get("best_training_free_on")
        best = f"  on {wins} of {n}" if wins is not None else ""
        print(
            f"{s['aggregate']:<10} {s['mean_topk']:>11.4f} {s['min_topk']:>10.4f} "
            f"{s['distinct_picks']:>14d}{best}"
        )
    print("per left-out model: aggregates.csv")
