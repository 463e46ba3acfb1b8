"""The ``emq`` command line. Each subcommand is one ``_cmd_*`` function.

User mistakes (bad arguments, missing, malformed or mismatched files, a folder another
process is writing) print one line ``emq: error: ...`` and exit 2, with nothing written:
options are range-checked by the parser (``benchmark.options``), files against their
schemas (``benchmark.schemas``, ``emq.schemas``) before any work. Set ``EMQ_DEBUG=1`` to see
the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
from pathlib import Path

import numpy as np

from benchmark import options

# OSError: a path the user gave that cannot be read or written (a directory, permissions,
# a name too long, a full disk). RecursionError: a safety net behind the depth limits.
USER_ERRORS = (ValueError, KeyError, OSError, sqlite3.DatabaseError, RecursionError)
MAX_MESSAGE = 2000


CONFIG_COUNT = options.int_range(0, 1_000_000, "a number of configurations")
POPULATION = options.int_range(4, 100_000, "a population size")


class UsageError(Exception):
    """A command line the parser refuses (unknown option, bad value)."""


class Parser(argparse.ArgumentParser):
    """``argparse`` whose refusals are one ``emq: error:`` line (not usage + message)."""

    def error(self, message: str):  # type: ignore[override]
        message = re.sub(r"^argument ([^:]+): ", r"\1 ", message)
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _print_json_or_table(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2))
        return
    width = max(len(k) for k in obj)
    for k, v in obj.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v)
        print(f"{k:<{width}}  {v}")


def _cmd_train(args: argparse.Namespace) -> None:
    from benchmark.train import TrainConfig, train

    cfg = TrainConfig.for_model(
        args.model, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size
    )
    record = train(args.model, cfg, Path(args.out) if args.out else None)
    _print_json_or_table(record, args.json)


def _cmd_bench_build(args: argparse.Namespace) -> None:
    from benchmark.adaround import settings_from_args
    from benchmark.bench import build_bench
    from benchmark.cluster import connected, scheduler_address

    with connected(scheduler_address(args.scheduler)) as client:  # before any file exists
        result = build_bench(
            args.model, args.configs, args.seed, args.out, jobs=args.jobs,
            checkpoint=args.checkpoint, candidates=args.bits, act_bits=args.act_bits,
            rounding=args.rounding, adaround=settings_from_args(args), client=client,
        )  # fmt: skip
    _print_json_or_table(result, args.json)


def _cmd_bench_info(args: argparse.Namespace) -> None:
    from benchmark.bench import Bench, default_bench

    if args.zoo:
        _print_zoo(args.json)
        return
    bench = Bench.open(args.path or default_bench())
    info = bench.info()
    if args.json:
        info["layer_table"] = bench.layers
        print(json.dumps(info, indent=2))
        return
    _print_json_or_table(info, False)
    print(f"\n{'layer':<28} {'kind':<7} {'params':>8} {'MACs':>10}")
    for layer in bench.layers:
        print(f"{layer['name']:<28} {layer['kind']:<7} {layer['params']:>8} {layer['macs']:>10}")


def _print_zoo(as_json: bool) -> None:
    """One row per zoo model: its split, size, FP top-1 and shipped bench (if any)."""
    from benchmark.bench import Bench, default_bench
    from benchmark.models import HELDOUT_MODELS, MODELS

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


def _cmd_evolve(args: argparse.Namespace) -> None:
    from benchmark.bench import Bench, default_bench
    from benchmark.cluster import connected, scheduler_address
    from benchmark.lock import exclusive, run_folder_lock
    from emq.evolve import campaign_identity, check_run_folder, settings_from_args
    from emq.transfer import bench_campaign, parse_models, resolve_split

    if args.bench and args.models:
        raise ValueError("give --bench files or --models, not both")
    kw = vars(args)
    if args.inputs is not None:
        kw = {**kw, "inputs": tuple(n.strip() for n in args.inputs.split(",") if n.strip())}
    if args.init is not None:
        from emq.evolve import DEFAULT_INPUTS
        from emq.seeds import load_seeds

        kw = {**kw, "init": load_seeds(args.init, kw.get("inputs") or DEFAULT_INPUTS)}
    settings = settings_from_args(**kw)
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
    run = Path(args.run or f"runs/{name}-seed{settings.seed}")
    # The run folder's files are checked before the proxy inputs are computed.
    check_run_folder(run, campaign_identity(settings, benches[0], tuple(benches[1:])), settings)
    with connected(scheduler_address(args.scheduler)) as client:  # before any file exists
        run.mkdir(parents=True, exist_ok=True)
        with exclusive(run_folder_lock(run), f"run folder {run}"):
            campaign = bench_campaign(
                run, benches, settings, checkpoint=args.checkpoint, heldout=heldout,
                jobs=args.jobs, client=client,
            )  # fmt: skip
            summary = campaign.run_steps(args.steps)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    held = summary["heldout"]
    print(f"run folder         {run}")
    print(f"best proxy         {summary['formula']}")
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


def _cmd_export(args: argparse.Namespace) -> None:
    from benchmark.lock import exclusive, run_folder_lock
    from emq.export import export_run, read_best

    read_best(Path(args.run))  # validated before anything is written
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(run_folder_lock(out), f"folder {out}"):
        paths = export_run(args.run, args.out)
    for kind, path in paths.items():
        print(f"{kind:<8} {path}")


def _cmd_export_model(args: argparse.Namespace) -> None:
    from emq.deploy import export_allocation_file

    exported = export_allocation_file(args.allocation, args.out, args.encodings, args.checkpoint)
    bits = [f"W{q.w_bits}A{q.a_bits}" for q in exported.quantizers]
    print(f"layers     {len(bits)}  ({', '.join(sorted(set(bits)))})")
    for kind, path in (("onnx", args.out), ("encodings", args.encodings)):
        if path is not None:
            print(f"{kind:<10} {path}")


def _cmd_score(args: argparse.Namespace) -> None:
    import time

    from benchmark.adaround import settings_from_args
    from benchmark.bench import Bench
    from benchmark.quantizers import quantizable_layers
    from emq.export import load_proxy, needed_inputs
    from emq.metrics import correlation_report
    from emq.score import build_model, model_context, parse_configs, score

    scorer = load_proxy(args.proxy)
    bench = Bench.open(args.bench) if args.bench else None
    cands = bench.candidates if bench else args.bits
    if args.rounding is None:
        args.rounding = bench.rounding if bench else "nearest"
    if bench is not None:
        bench.check_rounding(args.rounding)
    ada = bench.adaround if bench is not None else settings_from_args(args)
    model = build_model(args.model, args.checkpoint)
    n_layers = len(quantizable_layers(model))
    configs = (
        parse_configs(args.configs, n_layers, cands) if args.configs else np.empty((0, n_layers))
    )
    if bench is not None and bench.num_layers != n_layers:
        raise ValueError(f"bench {bench.path} has {bench.num_layers} layers, model {n_layers}")
    names = needed_inputs(scorer)  # only what the proxy reads (e.g. no Hessian)
    ctx = model_context(
        model, cands, args.batch, args.seed, rounding=args.rounding, adaround=ada, names=names
    )
    start = time.perf_counter()
    table, scores = score(scorer, ctx, configs.astype(np.int64))
    out: dict = {
        "proxy": getattr(scorer, "formula", None) or getattr(scorer, "name", str(args.proxy)),
        "model": args.model,
        "seconds": round(time.perf_counter() - start, 3),
        "scores": [
            {"config": ",".join(map(str, c)), "score": float(s)}
            for c, s in zip(configs.tolist(), scores, strict=True)
        ],
    }
    if bench is not None:
        _, bench_scores = score(scorer, ctx, bench.w_bits)
        out["bench"] = {"path": str(bench.path), "configs": len(bench),
                        **correlation_report(bench_scores, bench.accuracy)}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"proxy   {out['proxy']}\nmodel   {args.model}  ({n_layers} layers)")
    for row in out["scores"]:
        print(f"{row['score']:>14.6g}  {row['config']}")
    if bench is not None:
        b = out["bench"]
        print(
            f"vs bench ({b['configs']} configs): Spearman@topk {b['spearman@topk']:.4f}, "
            f"@20/50/100 % {b['spearman@20%']:.4f}/{b['spearman@50%']:.4f}/"
            f"{b['spearman@100%']:.4f}, Kendall {b['kendall']:.4f}"
        )


def _cmd_transfer(args: argparse.Namespace) -> None:
    from benchmark.bench import Bench
    from benchmark.lock import exclusive, run_folder_lock
    from emq.evolve import settings_from_args
    from emq.transfer import parse_models, run_transfer, shipped_bench, zoo_models_with_bench

    seeds = args.seeds
    models = parse_models(args.models, "--models") or zoo_models_with_bench()
    kw = {"population": args.population, "bench_agg": args.bench_agg}
    if args.inputs is not None:
        kw["inputs"] = tuple(n.strip() for n in args.inputs.split(",") if n.strip())
    settings = settings_from_args(**kw)
    names = None
    if args.baselines:
        from emq.baselines import get_baseline

        names = [get_baseline(n.strip()).name for n in args.baselines.split(",") if n.strip()]
    benches = {m: Bench.open(shipped_bench(m)) for m in models}
    out = Path(args.out)
    check_output_folder(out, "--out", ("transfer", "leave-"))
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(run_folder_lock(out), f"transfer folder {out}"):
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


def _cmd_ablate(args: argparse.Namespace) -> None:
    from benchmark.bench import Bench, default_bench
    from benchmark.lock import exclusive, run_folder_lock
    from emq.ablation import VARIANTS, format_table, run_ablation
    from emq.context import bench_evaluator
    from emq.evolve import CampaignSettings

    seeds = list(args.seeds)
    base = CampaignSettings(population=args.population, offspring=args.offspring)
    bench = Bench.open(args.bench or default_bench())
    out = Path(args.out or f"runs/ablation-{bench.model}")
    check_output_folder(out, "--out", ("ablation.csv", "ablation.md", *VARIANTS))
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(run_folder_lock(out), f"ablation folder {out}"):
        evaluator = bench_evaluator(bench, base.calib_images, base.calib_seed, base.split_seed)
        rows = run_ablation(bench, evaluator, base, args.steps, seeds, out, args.jobs)
    print(format_table(rows))
    print(f"\nper-seed rows: {out / 'ablation.csv'}")


def check_output_folder(out: Path, option: str, ours: tuple[str, ...]) -> None:
    """Refuse an output path that is a file, or a folder of something else (read-only)."""
    from benchmark.lock import is_lock_file

    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file, not a folder; use another {option}")
    if out.is_dir():
        foreign = [
            p.name for p in out.iterdir()
            if not is_lock_file(p) and not any(p.name.startswith(o) for o in ours)
        ]  # fmt: skip
        if foreign:
            raise ValueError(
                f"{option} {out} holds other files ({', '.join(sorted(foreign)[:3])}); "
                f"use another {option}"
            )


def _add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run the parallel work on this Dask scheduler, e.g. tcp://HOST:8786 (default: "
        "$EMQ_SCHEDULER; without either, local processes, see --jobs)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``emq`` command."""
    from benchmark.adaround import add_arguments as add_rounding
    from benchmark.models import MODELS
    from emq.fitness import AGGREGATES

    p = Parser(
        prog="emq",
        description="Evolve training-free proxies for mixed-precision quantization.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a zoo model on Fashion-MNIST (seeded)")
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
    t.set_defaults(func=_cmd_train)

    b = sub.add_parser("bench", help="build or inspect a bench file")
    bsub = b.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    bb = bsub.add_parser("build", help="measure PTQ accuracy of sampled configurations")
    bb.add_argument("--model", required=True, help=f"one of {', '.join(sorted(MODELS))}")
    bb.add_argument("--configs", type=CONFIG_COUNT, required=True, help="number of random configs")
    bb.add_argument("--seed", type=options.seed, default=0, help="sampling seed")
    bb.add_argument("--out", required=True, help="SQLite bench file (resumed if it exists)")
    bb.add_argument("--jobs", type=options.jobs, default=1, help="parallel worker processes")
    _add_scheduler_argument(bb)
    bb.add_argument("--checkpoint", help="state_dict to load (default: shipped checkpoint)")
    bb.add_argument(
        "--bits", type=options.bit_list, default="2,3,4,8", help="weight bit candidates"
    )
    bb.add_argument("--act-bits", type=options.bits, default=8, help="activation bit-width")
    add_rounding(bb)
    bb.add_argument("--json", action="store_true")
    bb.set_defaults(func=_cmd_bench_build)
    bi = bsub.add_parser("info", help="summarize a bench file")
    bi.add_argument("path", nargs="?", help="bench file (default: shipped ResNet-20 bench)")
    bi.add_argument(
        "--zoo",
        action="store_true",
        help="one line per zoo model: split, size, FP top-1, shipped bench",
    )
    bi.add_argument("--json", action="store_true")
    bi.set_defaults(func=_cmd_bench_info)

    e = sub.add_parser("evolve", help="run (or resume) an evolution campaign")
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
                   help="with several benches: fitness = the mean (default), the worst bench "
                   "('min') or mean minus standard deviation of their Spearman@topk")  # fmt: skip
    e.add_argument("--run", help="run folder (default: runs/zoo-seed<seed>, or "
                   "runs/<first model>-seed<seed>)")  # fmt: skip
    e.add_argument("--steps", type=options.nonneg_int, default=150, help="evolution steps")
    e.add_argument("--population", type=POPULATION, help="population size (default 48)")
    e.add_argument("--seed", type=options.seed, help="campaign seed (default 0)")
    e.add_argument("--jobs", type=options.jobs, default=1, help="parallel evaluation processes")
    _add_scheduler_argument(e)
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
                   "Hessian; e.g. A,W,G,H,V,Ga,Wq,E,D,b for all)")  # fmt: skip
    e.add_argument("--no-osp", dest="osp", action="store_false", default=None,
                   help="uniform operation sampling (ablation)")  # fmt: skip
    e.add_argument("--no-dps", dest="dps", action="store_false", default=None,
                   help="plain tournament selection (ablation)")  # fmt: skip
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_evolve)

    a = sub.add_parser("ablate", help="OSP/DPS ablation over several seeds")
    a.add_argument("--bench", help="bench file (default: shipped ResNet-20 bench)")
    a.add_argument("--out", help="output folder (default: runs/ablation-<model>)")
    a.add_argument("--steps", type=options.nonneg_int, default=20)
    a.add_argument("--population", type=POPULATION, default=32)
    a.add_argument("--offspring", type=options.positive_int, default=8)
    a.add_argument(
        "--seeds", type=options.seed_list, default="0,1,2", help="comma-separated campaign seeds"
    )
    a.add_argument("--jobs", type=options.jobs, default=1)
    a.set_defaults(func=_cmd_ablate)

    x = sub.add_parser("export", help="export a campaign's best proxy (.py, .json, formula)")
    x.add_argument("run", help="campaign folder")
    x.add_argument("--out", help="output folder (default: the run folder)")
    x.set_defaults(func=_cmd_export)

    xm = sub.add_parser(
        "export-model",
        help="an emq allocate result as a QDQ ONNX model (and AIMET encodings)",
    )
    xm.add_argument("--allocation", required=True, metavar="ALLOC.json",
                    help="allocation JSON written by emq allocate")  # fmt: skip
    xm.add_argument("--out", metavar="PATH", help="ONNX model to write")
    xm.add_argument("--encodings", metavar="PATH",
                    help="AIMET encodings JSON (format 0.6.1) to write")  # fmt: skip
    xm.add_argument("--checkpoint", help="state_dict (default: the allocation's, else shipped)")
    xm.set_defaults(func=_cmd_export_model)

    s = sub.add_parser("score", help="score bit configurations with a proxy or baseline")
    s.add_argument("--proxy", default="default",
                   help="proxy JSON, run folder, baseline name, or 'default' (the shipped "
                   "default proxy, evolved on the zoo; the default)")  # fmt: skip
    s.add_argument("--model", required=True, help="zoo model name or module.path:factory")
    s.add_argument("--checkpoint", help="state_dict for the model")
    s.add_argument("--configs", help='file, or inline "b1,b2,...[;b1,b2,...]"')
    s.add_argument("--bench", help="also correlate with this bench's measured accuracy")
    s.add_argument(
        "--bits", type=options.bit_list, default="2,3,4,8", help="bit candidates (without --bench)"
    )
    s.add_argument("--batch", type=options.images, default=128, help="calibration images")
    s.add_argument("--seed", type=options.seed, default=0, help="calibration batch seed")
    add_rounding(s, default=None, what="the bench's, else nearest")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_score)
    tr = sub.add_parser(
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
    tr.add_argument("--bench-agg", choices=list(AGGREGATES), help="default: mean")
    tr.add_argument("--inputs", metavar="A,W,...", help="proxy inputs (default: all but H)")
    tr.add_argument(
        "--baselines",
        metavar="NAME,...",
        help="baselines to compare with (default: every registered baseline)",
    )
    tr.add_argument("--jobs", type=options.jobs, default=1, help="parallel evaluation processes")
    tr.add_argument("--out", default="runs/transfer", help="output folder (resumable)")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=_cmd_transfer)

    from emq.baselines import add_parser as add_baselines

    add_baselines(sub)
    from emq.allocate.cli import add_parser as add_allocate

    add_allocate(sub)
    return p


def _one_line(exc: BaseException) -> str:
    """The message of a user error, on one line, naming the file of an OSError."""
    if isinstance(exc, KeyError) and exc.args:
        msg = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.strerror:
        name = str(exc.filename or "")
        name = name if len(name) <= 120 else name[:117] + "..."
        msg = f"{exc.strerror}: {name}" if name else exc.strerror
    elif isinstance(exc, RecursionError):
        msg = "the input is nested too deeply"
    else:
        msg = str(exc) or type(exc).__name__
    msg = " ".join(msg.split())
    return msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "..."


def _stdout_gone() -> int:
    """stdout was closed by its reader (``emq ... | head``): stop quietly, as the Python
    docs recommend (``signal`` docs, "Note on SIGPIPE"): point stdout at devnull so the
    interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emq`` console script; returns the exit status.

    0 on success; 2 and one ``emq: error: ...`` line on stderr for any bad input (the
    command line, a file, a locked folder); 130 on Ctrl-C; 1 (quietly) when stdout's
    reader went away. ``--help`` exits 0 through ``SystemExit``.
    """
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("emq: interrupted; finished results are saved, rerun the command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    except BrokenPipeError:
        return _stdout_gone()
    except UsageError as exc:
        print(f"emq: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        if os.environ.get("EMQ_DEBUG"):
            raise
        print(f"emq: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
