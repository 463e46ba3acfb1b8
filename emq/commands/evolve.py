"""``emq evolve``: run (or resume) an evolution campaign."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark import options
from benchmark.bench import Bench, default_bench
from benchmark.cluster import connected, scheduler_address
from benchmark.lock import created_folder, exclusive, run_folder_lock
from emq.commands.common import (
    POPULATION,
    add_combine_arguments,
    add_scheduler_argument,
    campaign_settings,
    distinct_names,
)
from emq.evolve import DEFAULT_INPUTS, campaign_identity, check_run_folder
from emq.fitness import AGGREGATES, check_rankable
from emq.seeds import load_seeds
from emq.transfer import bench_campaign, parse_models, resolve_split

# A search split of fewer configurations, or a held-out split of fewer than two, gives a
# fitness of +-1 or NaN: a campaign on it would look perfect and mean nothing.
MIN_SEARCH, MIN_HELDOUT = 3, 2


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = subparsers.add_parser("evolve", help="run (or resume) an evolution campaign")
    e.add_argument("--bench", action="append", metavar="PATH",
                   help="bench file; repeat to search on several at once (the first is the "
                   "primary). Default: every search-set zoo model's shipped bench")  # fmt: skip
    e.add_argument(
        "--models",
        metavar="M1,M2,...",
        help="search on these zoo models' shipped benches (default: the search set)",
    )
    e.add_argument("--heldout", metavar="M1,M2,...|none",
                   help="zoo models never searched, reported on at the end (default: the "
                   "zoo's held-out models not searched)")  # fmt: skip
    e.add_argument("--bench-agg", choices=list(AGGREGATES),
                   help="with several benches: fitness = the mean minus the standard "
                   "deviation of their Spearman@topk (mean-std, the default), their mean, "
                   "median or worst bench (min)")  # fmt: skip
    e.add_argument("--run", help="run folder (default: runs/zoo-seed<seed>, or "
                   "runs/<first model>-seed<seed>)")  # fmt: skip
    e.add_argument("--steps", type=options.nonneg_int, default=150, help="evolution steps")
    e.add_argument("--population", type=POPULATION, help="population size (default 48)")
    e.add_argument("--seed", type=options.seed, help="campaign seed (default 0)")
    e.add_argument(
        "--calib-images",
        type=options.int_range(1, 60000, "a number of images"),
        help="training images the proxy inputs are computed on (default 128)",
    )
    e.add_argument("--jobs", type=options.jobs, default=1, help="parallel evaluation processes")
    add_scheduler_argument(e)
    e.add_argument("--checkpoint", help="weights the bench was built from (default: shipped)")
    e.add_argument("--mode", choices=["steady", "generational"], help="default: steady")
    e.add_argument(
        "--offspring", type=options.positive_int, help="offspring per steady-state step (default 8)"
    )
    e.add_argument("--generator", choices=["branched", "tree"], help="default: tree")
    e.add_argument("--init", metavar="FILE|literature|none",
                   help="seed the initial population: a file of formulas (one per line), "
                   "'literature' (published proxies that fit --inputs; the default) or 'none' "
                   "(random genomes only)")  # fmt: skip
    e.add_argument("--inputs", metavar="A,W,...",
                   help="proxy inputs the search may use (default: all but H, the costly "
                   "Hessian; e.g. A,W,G,H,V,Ga,Wq,E,D,b,Dz for all)")  # fmt: skip
    add_combine_arguments(e)
    e.add_argument("--no-osp", dest="osp", action="store_false", default=None,
                   help="uniform operation sampling (ablation)")  # fmt: skip
    e.add_argument("--no-dps", dest="dps", action="store_false", default=None,
                   help="plain tournament selection (ablation)")  # fmt: skip
    e.add_argument("--json", action="store_true")
    return e


def run(args: argparse.Namespace) -> None:
    if args.bench and args.models:
        raise ValueError("give --bench files or --models, not both")
    kw = vars(args)
    if args.inputs is not None:
        kw = {**kw, "inputs": distinct_names(args.inputs, "--inputs")}
    if args.init is not None:
        kw = {**kw, "init": load_seeds(args.init, kw.get("inputs") or DEFAULT_INPUTS)}
    settings = campaign_settings(**kw)
    heldout_models = parse_models(args.heldout, "--heldout")
    if args.bench:
        given = list(args.bench)
        if len({Path(p).resolve() for p in given}) != len(given):
            raise ValueError("the same --bench is given twice; pass each bench once")
        benches = [Bench.open(p) for p in given]
        searched = [b.model for b in benches]
        held = resolve_split(searched, heldout_models)[1] if heldout_models else ()
        name = benches[0].model
    else:
        search, held = resolve_split(parse_models(args.models, "--models"), heldout_models)
        benches = [Bench.open(default_bench(m)) for m in search]
        name = "zoo" if args.models is None else benches[0].model
    heldout = [Bench.open(default_bench(m)) for m in held]
    run_folder = Path(args.run or f"runs/{name}-seed{settings.seed}")
    # The run folder's files are checked before the proxy inputs are computed.
    identity = campaign_identity(settings, benches[0], tuple(benches[1:]))
    check_run_folder(run_folder, identity, settings)
    for bench in benches:
        check_rankable(bench, settings.split_seed, MIN_SEARCH, MIN_HELDOUT)
    with (
        connected(scheduler_address(args.scheduler)) as client,  # before any file exists
        created_folder(run_folder),  # removed again if nothing gets written
        exclusive(run_folder_lock(run_folder), f"run folder {run_folder}"),
    ):
        campaign = bench_campaign(
            run_folder, benches, settings, checkpoint=args.checkpoint, heldout=heldout,
            jobs=args.jobs, client=client,
        )  # fmt: skip
        summary = campaign.run_steps(args.steps)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print_summary(run_folder, summary)


def print_summary(run_folder: Path, summary: dict) -> None:
    """The campaign's best proxy and its fitness, held-out and per-bench figures."""
    held = summary["heldout"]
    print(f"run folder         {run_folder}")
    print(f"best proxy         {summary['formula']}")
    if summary.get("combine") == "joint":
        cross = summary.get("cross", 1.0)
        shrunk = f", cross-layer terms x {cross:g}" if cross != 1.0 else ""
        print(f"combination        joint (the layers' terms added before the norm{shrunk})")
    print(f"search fitness     {summary['fitness_search']:.4f}  (Spearman@topk, search split)")
    print(f"held-out S@topk    {held['spearman@topk']:.4f}")
    print(
        f"held-out S@20/50/100 %  {held['spearman@20%']:.4f} / {held['spearman@50%']:.4f} / "
        f"{held['spearman@100%']:.4f}   Kendall {held['kendall']:.4f}"
    )
    for row in summary.get("per_bench", []):
        print(f"  {row['bench']}: search {row['search']:.4f}, held-out S@topk "
              f"{row['heldout']['spearman@topk']:.4f}")  # fmt: skip
    for row in summary.get("heldout_models", []):
        print(f"  never searched, {row['model']} ({row['configs']} configs): S@topk "
              f"{row['spearman@topk']:.4f}, S@100% {row['spearman@100%']:.4f}, "
              f"Kendall {row['kendall']:.4f}")  # fmt: skip
    print(f"evaluations        {summary['evaluations']} in {summary['step']} steps")
