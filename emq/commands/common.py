"""Options and helpers several ``emq`` subcommands share (command layer only)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from benchmark import options
from benchmark.adaround import ROUNDINGS, AdaRoundSettings
from benchmark.bench import Bench
from benchmark.lock import check_folder_path, is_lock_file
from emq.baselines.table import split_indices
from emq.evolve import CampaignSettings
from emq.fitness import COMBINES
from emq.graph import DEFAULT_CROSS

CONFIG_COUNT = options.int_range(0, 1_000_000, "a number of configurations")
POPULATION = options.int_range(4, 100_000, "a population size")


def print_json_or_table(obj: dict, as_json: bool) -> None:
    """``obj`` as indented JSON, or as aligned ``key  value`` lines."""
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


def name_list(text: str) -> tuple[str, ...]:
    """``"A, W,,G"`` -> ``("A", "W", "G")``: comma-separated names, blanks dropped."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def distinct_names(text: str, option: str) -> tuple[str, ...]:
    """``name_list`` of an option whose names must each appear once (``--inputs A,A`` would
    silently weight A twice)."""
    names = name_list(text)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{option} {text}: {', '.join(twice)} given twice; name each once")
    return names


def check_output_folder(out: Path, option: str, ours: tuple[str, ...]) -> None:
    """Refuse an output path that is a file, or a folder of something else (read-only)."""
    check_folder_path(out, option)
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


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    """``--scheduler``: the Dask scheduler to run the parallel work on."""
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run the parallel work on this Dask scheduler, e.g. tcp://HOST:8786 (default: "
        "$EMQ_SCHEDULER; without either, local processes, see --jobs)",
    )  # fmt: skip


def add_rounding_arguments(
    parser: argparse.ArgumentParser, default: str | None = "nearest", what: str = ""
) -> None:
    """``--rounding`` and the AdaRound knobs (``benchmark.adaround.AdaRoundSettings``)."""
    d = AdaRoundSettings()
    parser.add_argument("--rounding", choices=ROUNDINGS, default=default,
                        help="weight rounding (AdaRound: learned per layer and bit)"
                        + (f"; default {default or what}"))  # fmt: skip
    parser.add_argument("--adaround-iterations", type=options.positive_int, default=d.iterations,
                        help="AdaRound Adam steps per (layer, bit)")  # fmt: skip
    parser.add_argument("--adaround-images", type=options.images, default=d.images,
                        help="AdaRound calibration images (training split)")  # fmt: skip
    parser.add_argument(
        "--adaround-lr", type=options.positive_float, default=d.lr, help="AdaRound Adam rate"
    )
    parser.add_argument("--adaround-lambda", type=options.nonneg_float, default=d.reg_weight,
                        help="AdaRound rounding-regularizer weight")  # fmt: skip


def adaround_settings(args: argparse.Namespace) -> AdaRoundSettings | None:
    """The AdaRound settings of ``add_rounding_arguments`` options (None: nearest)."""
    if getattr(args, "rounding", None) != "adaround":
        return None
    return adaround_knobs(args)


def adaround_knobs(args: argparse.Namespace) -> AdaRoundSettings:
    """The AdaRound settings of the ``--adaround-*`` options, whatever ``--rounding`` says."""
    return AdaRoundSettings(
        iterations=args.adaround_iterations, images=args.adaround_images,
        lr=args.adaround_lr, reg_weight=args.adaround_lambda,
    )  # fmt: skip


def add_cross_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--cross``: the joint combination's weight of the cross-layer terms."""
    parser.add_argument(
        "--cross", type=options.float_range(0.0, 1.0, what="a weight"),
        help="the joint combination's weight of the cross-layer terms: -[(1 - a) sum_l "
        f"|X_l|^2 + a |sum_l X_l|^2], 1 the full joint form, 0 the per-layer table (default: "
        f"{default})",
    )  # fmt: skip


def add_combine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--combine``, ``--cross`` and ``--dz-images`` of the commands that run campaigns."""
    parser.add_argument(
        "--combine", choices=list(COMBINES),
        help="how a configuration's layers combine: 'auto' (the default: a genome "
        "revert(sq_norm(X)) whose X adds up across layers is also scored jointly, "
        "-|sum_l X_l|^2, and keeps the better fitness) or 'table' (the sum of each "
        "genome's per-layer table, as campaigns before 2026-12-07)",
    )  # fmt: skip
    add_cross_argument(
        parser, f"{DEFAULT_CROSS:g}, chosen on the zoo; 1 in campaigns before 2026-12-08"
    )
    parser.add_argument(
        "--dz-images", type=options.int_range(1, 60000, "a number of images"),
        help="images the input Dz reads (at least --calib-images; default: 4 x "
        "--calib-images, 512): Dz holds one row per image, so more images cost its "
        "computation, not memory",
    )  # fmt: skip


def campaign_settings(**kw) -> CampaignSettings:
    """``CampaignSettings`` from option values: unknown keys and ``None`` (not given) are
    left to the defaults."""
    names = {f.name for f in fields(CampaignSettings)}
    return CampaignSettings(**{k: v for k, v in kw.items() if k in names and v is not None})


def check_rankable_split(bench: Bench, split: str, seed: int = 0) -> None:
    """Refuse a split a correlation cannot be computed on (too few configurations, or all
    of one top-1): every figure of the table would be NaN, at exit 0."""
    top1 = np.asarray(bench.accuracy)[split_indices(bench, split, seed)]
    what = f"bench {bench.path}" if split == "all" else f"--split {split} of bench {bench.path}"
    if len(top1) < 3:
        raise ValueError(
            f"{what} holds {len(top1)} configuration(s), too few to rank (at least 3); "
            + ("use --split all, or " if split != "all" else "")
            + "add configurations with emq bench build --configs N"
        )
    if np.ptp(top1) == 0:
        raise ValueError(
            f"{what}: every configuration has the same top-1 "
            f"({top1[0]:g} %), so no proxy can rank them; build the bench from trained weights"
        )
