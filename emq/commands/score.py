"""``emq score``: score bit configurations with a proxy or a baseline."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from benchmark import options
from benchmark.bench import Bench
from benchmark.factory import build_model
from benchmark.quantizers import quantizable_layers
from emq.commands.common import (
    adaround_settings,
    add_cross_argument,
    add_rounding_arguments,
    check_rankable_split,
)
from emq.metrics import correlation_report
from emq.proxy import COMBINES, ProxyScorer
from emq.score import model_context, parse_configs, score_configs
from emq.scorers import resolve_scorer
from emq.scoring import SCORING_CHUNK, SCORING_IMAGES, scorer_inputs, scorer_label


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = subparsers.add_parser("score", help="score bit configurations with a proxy or baseline")
    s.add_argument("--proxy", default="default",
                   help="proxy JSON, run folder, baseline name, or 'default' (the shipped "
                   "default proxy, emq/default_proxy.json; the default)")  # fmt: skip
    s.add_argument("--model", required=True, help="zoo model name or module.path:factory")
    s.add_argument("--checkpoint", help="state_dict for the model")
    s.add_argument("--configs", help='file, or inline "b1,b2,...[;b1,b2,...]"')
    s.add_argument("--bench", help="also correlate with this bench's measured accuracy")
    s.add_argument(
        "--bits", type=options.bit_list, default="2,3,4,8", help="bit candidates (without --bench)"
    )
    s.add_argument(
        "--batch", type=options.images, default=SCORING_IMAGES,
        help=f"calibration images (default {SCORING_IMAGES}; training-free scorers read them "
        f"{SCORING_CHUNK} at a time and average the tables; {SCORING_CHUNK} or fewer: one batch "
        "whose inputs are cached)",
    )  # fmt: skip
    s.add_argument("--seed", type=options.seed, default=0, help="calibration batch seed")
    s.add_argument(
        "--combine", choices=COMBINES,
        help="how a configuration's layers combine: 'table' (sum of per-layer scores) or "
        "'joint' (a proxy revert(sq_norm(X)): the layers' X added before the norm); default: "
        "the proxy file's ('joint' for the default proxy; 'table' for campaigns' proxies)",
    )  # fmt: skip
    add_cross_argument(s, "the proxy file's; 0.75 for the default proxy")
    add_rounding_arguments(s, default=None, what="the bench's, else nearest")
    s.add_argument("--json", action="store_true")
    return s


def with_combine(scorer, combine: str | None, cross: float | None = None):
    """``scorer`` combining layers as ``combine`` says (None: as it does), a joint proxy's
    cross-layer terms weighted by ``cross`` (None: as its file says); a clear error for a
    scorer that only has a table (a baseline) asked for ``joint``, or a weight for a scorer
    that does not combine jointly."""
    scorer = _with_combine(scorer, combine)
    if cross is None or cross == getattr(scorer, "cross", None):
        return scorer
    if not isinstance(scorer, ProxyScorer) or not scorer.joint:
        raise ValueError(
            f"--cross {cross:g}: {scorer.name} does not combine its layers jointly (the "
            "weight is of a joint proxy's cross-layer terms; add --combine joint for a "
            "proxy revert(sq_norm(X)))"
        )
    return replace(scorer, cross=cross)


def _with_combine(scorer, combine: str | None):
    if combine is None or combine == getattr(scorer, "combine", "table"):
        return scorer
    if isinstance(scorer, ProxyScorer):
        return replace(scorer, combine=combine)
    if combine == "table" and getattr(scorer, "joint", False):  # a baseline's table
        return replace(scorer, configs_fn=None)
    raise ValueError(f"--combine {combine}: {scorer.name} is scored per layer only")


def run(args: argparse.Namespace) -> None:
    scorer = with_combine(resolve_scorer(args.proxy), args.combine, args.cross)
    bench = Bench.open(args.bench) if args.bench else None
    cands = bench.candidates if bench else args.bits
    if args.rounding is None:
        args.rounding = bench.rounding if bench else "nearest"
    if bench is not None:
        bench.check_rounding(args.rounding)
    ada = bench.adaround if bench is not None else adaround_settings(args)
    model = build_model(args.model, args.checkpoint)
    n_layers = len(quantizable_layers(model))
    configs = (
        parse_configs(args.configs, n_layers, cands) if args.configs else np.empty((0, n_layers))
    )
    if bench is not None and bench.num_layers != n_layers:
        raise ValueError(
            f"bench {bench.path} is of model {bench.model} ({bench.num_layers} layers), not of "
            f"--model {args.model} ({n_layers} layers); pass --model {bench.model}, or a bench "
            f"built with 'emq bench build --model {args.model}'"
        )
    if bench is not None:
        bench.check_model(model)  # its measurements are of these weights
        check_rankable_split(bench, "all")
    names = scorer_inputs(scorer)  # only what the proxy reads (e.g. no Hessian)
    ctx = model_context(
        model, cands, args.batch, args.seed, rounding=args.rounding, adaround=ada, names=names
    )
    start = time.perf_counter()
    # One pass over the calibration chunks for the given configurations and the bench's.
    every = np.concatenate([configs.astype(np.int64)] + ([bench.w_bits] if bench else []))
    all_scores = score_configs(scorer, ctx, every)
    scores, bench_scores = all_scores[: len(configs)], all_scores[len(configs) :]
    combine = getattr(scorer, "combine", "table")
    out: dict = {
        "proxy": scorer_label(scorer),
        "combine": combine,
        **({"cross": scorer.cross} if isinstance(scorer, ProxyScorer) and scorer.joint else {}),
        "model": args.model,
        "seconds": round(time.perf_counter() - start, 3),
        "scores": [
            {"config": ",".join(map(str, c)), "score": float(s)}
            for c, s in zip(configs.tolist(), scores, strict=True)
        ],
    }
    if bench is not None:
        out["bench"] = {"path": str(bench.path), "configs": len(bench),
                        **correlation_report(bench_scores, bench.accuracy)}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return
    joint = "  (layers combined jointly)" if combine == "joint" else ""
    if out.get("cross", 1.0) != 1.0:
        joint = f"  (layers combined jointly, cross-layer terms x {out['cross']:g})"
    if combine == "joint" and getattr(scorer, "measured", False):
        joint = "  (each configuration run, all its layers quantized at once)"
    print(f"proxy   {out['proxy']}{joint}\nmodel   {args.model}  ({n_layers} layers)")
    for row in out["scores"]:
        print(f"{row['score']:>14.6g}  {row['config']}")
    if bench is not None:
        b = out["bench"]
        print(
            f"vs bench ({b['configs']} configs): Spearman@topk {b['spearman@topk']:.4f}, "
            f"@20/50/100 % {b['spearman@20%']:.4f}/{b['spearman@50%']:.4f}/"
            f"{b['spearman@100%']:.4f}, Kendall {b['kendall']:.4f}"
        )
