"""``emq allocate``: bits per layer under a BOPs / weight-size budget or an accuracy target.

::

    emq allocate --model resnet20 --method sqnr --scorer hawq_v3 --budget-bops 0.35
    emq allocate --model resnet20 --method ilp --budget-bops 0.35 --budget-size 0.5 --verify 4
    emq allocate --model resnet20 --method sqnr --scorer sqnr-measured --accuracy-target 90
    emq allocate --model resnet20 --method ilp --scorer runs/reference --budget-bops 0.5
    emq allocate --compare --model resnet20 [--proxy runs/reference/best_proxy.json]
    emq allocate --compare-rounding --model resnet20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark import options
from benchmark.factory import build_model
from benchmark.lock import check_folder_path
from emq.allocate.budget import DEFAULT_BUDGETS, Budget, SizeSpec, parse_size
from emq.allocate.compare import check_proxy, compare_budgets, run_compare
from emq.allocate.problem import SCORER_IMAGES, AllocationProblem
from emq.allocate.registry import allocator_names
from emq.allocate.rounding import run_rounding_compare
from emq.allocate.sensitivity import MEASURED
from emq.allocate.smpq import BETA, PERMUTATIONS, SMPQ_VALUES, THRESHOLD, XI
from emq.allocate.sqnr import SEARCHES
from emq.allocate.verify import MAX_VERIFY_K, VERIFY_K
from emq.commands.common import adaround_knobs, adaround_settings, add_rounding_arguments
from emq.deploy import check_output_path, export_allocation, require_deploy, save_exported
from emq.reports.allocate import compare_summary, format_allocation, rounding_summary
from emq.reports.common import write_json
from emq.schemas import GROUPS_SCHEMA, read_document


def default_out(model: str) -> Path:
    """``runs/allocate-<model>/`` (model names with ``:`` or ``/`` made file-safe)."""
    return Path("runs") / f"allocate-{model.replace(':', '_').replace('/', '_')}"


def build_problem(args: argparse.Namespace, cache: object = None) -> AllocationProblem:
    """The allocation problem of the command's ``--model``/``--checkpoint``/``--groups``."""
    model = build_model(args.model, args.checkpoint)
    return AllocationProblem.for_model(
        args.model, model, args.groups, args.bits, cache=cache,
        rounding=args.rounding, adaround=adaround_settings(args), scorer_images=args.batch,
    )  # fmt: skip


def budget_label(bops: float | None, size: SizeSpec | None, target: float | None) -> str:
    """``bops0.35``, ``size2.5MB``, ``bops0.35-size0.5`` or ``acc90`` (output file names)."""
    if target is not None:
        return f"acc{target:g}"
    parts = [f"bops{bops:g}"] if bops is not None else []
    return "-".join([*parts, *([f"size{size}"] if size is not None else [])])


def output_folder(args: argparse.Namespace) -> Path:
    """``--out``, or ``runs/allocate-<model>``."""
    return Path(args.out) if args.out else default_out(args.model)


def check_distinct_outputs(paths: dict[str, Path | None]) -> None:
    """Refuse two outputs that are one file (the second would overwrite the first)."""
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        if path is None:
            continue
        key = path.resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {what} are the same file {path}; give each its own")
        seen[key] = what


def print_report(doc: dict, text: str, as_json: bool) -> None:
    """The document as indented JSON, or the text report."""
    print(json.dumps(doc, indent=2) if as_json else text)


def compare(args: argparse.Namespace) -> dict:
    """``--compare``: every registered method x scorer at the budgets."""
    proxy = check_proxy(args.proxy)  # before the model is built
    problem = build_problem(args, cache=False)
    budgets = compare_budgets(args.budgets, problem.size_fraction(args.budget_size))
    out = output_folder(args)
    doc = run_compare(
        problem, proxy, budgets, out, front_points=args.front_points, verify=args.verify,
        size_text=str(args.budget_size),
    )  # fmt: skip
    print_report(doc, compare_summary(doc, out), args.json)
    return doc


def compare_rounding(args: argparse.Namespace) -> dict:
    """``--compare-rounding``: nearest vs AdaRound, fixed and SQNR-mixed precision."""
    budgets = DEFAULT_BUDGETS if args.budgets is None else args.budgets
    ada = adaround_knobs(args)  # the second pass is AdaRound whatever --rounding says
    model = build_model(args.model, args.checkpoint)
    out = output_folder(args)
    doc = run_rounding_compare(args.model, model, budgets, ada, out, args.bits, args.groups)
    print_report(doc, rounding_summary(doc, out), args.json)
    return doc


def run(args: argparse.Namespace) -> None:
    check_folder_path(output_folder(args), "--out")  # before any work, not when writing
    if args.compare:
        compare(args)
        return
    if args.compare_rounding:
        compare_rounding(args)
        return
    if not args.scorer or not args.method:
        raise ValueError("--method is required (or use --compare)")
    budgeted = args.budget_bops is not None or args.budget_size is not None
    if budgeted == (args.accuracy_target is not None):
        raise ValueError(
            "give a budget (--budget-bops R and/or --budget-size S) or --accuracy-target A"
        )
    if args.groups:  # the file's schema, before the model is built (layer names: later)
        read_document(args.groups, GROUPS_SCHEMA, "groups file")
    onnx_path = encodings_path = None
    if args.export_onnx or args.encodings:  # checked before the allocation runs
        require_deploy()
        out = output_folder(args)  # made before writing
        if args.export_onnx:
            onnx_path = check_output_path(args.export_onnx, "--export-onnx", created=out)
        if args.encodings:
            encodings_path = check_output_path(args.encodings, "--encodings", created=out)
        check_distinct_outputs({"--export-onnx": onnx_path, "--encodings": encodings_path})
    problem = build_problem(args)
    size = problem.size_fraction(args.budget_size)
    if size is not None:  # the model's floor, before phase 1 is paid for
        problem.check_budget(Budget(args.budget_bops, size), str(args.budget_size))
    alloc = problem.allocate(
        args.method, args.scorer, args.budget_bops, args.accuracy_target, search=args.search,
        smpq_value=args.smpq_value, lam=args.lam, permutations=args.permutations,
        threshold=args.threshold, beta=args.beta, xi=args.xi, seed=args.seed,
        budget_size=size, verify=args.verify,
    )  # fmt: skip
    top1 = problem.accuracy(alloc.w_bits, alloc.a_bits, "test")
    ada = adaround_settings(args)
    doc = {
        **alloc.to_dict(), "test_top1": top1, "model": args.model,
        "checkpoint": args.checkpoint, "rounding": args.rounding,
        "adaround": ada.to_dict() if ada is not None else None,
    }  # fmt: skip
    exported = None
    if onnx_path or encodings_path:
        exported = export_allocation(
            problem.sim, alloc.w_bits, alloc.a_bits,
            metadata={"emq.model": args.model, "emq.rounding": args.rounding},
            encodings=encodings_path is not None,
        )  # fmt: skip
    out = output_folder(args)
    budget = budget_label(args.budget_bops, args.budget_size, args.accuracy_target)
    path = out / f"{args.method}-{alloc.scorer}-{budget}.json"
    check_distinct_outputs(
        {"the allocation": path, "--export-onnx": onnx_path, "--encodings": encodings_path}
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, doc)  # atomically: a reader, or a second run, never sees half a file
    if exported is not None:
        save_exported(exported, onnx_path, encodings_path)
    if args.json:
        written = {k: str(v) for k, v in (("onnx", onnx_path), ("encodings", encodings_path)) if v}
        print(json.dumps({**doc, "path": str(path), **written}, indent=2))
        return
    print(format_allocation(alloc, top1))
    print(f"wrote           {path}")
    for what, p in (("onnx", onnx_path), ("encodings", encodings_path)):
        if p is not None:
            print(f"{what:<15} {p}")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``emq allocate`` on the ``emq`` sub-command parsers."""
    p = subparsers.add_parser(
        "allocate", help="bit-widths per layer under a BOPs budget or an accuracy target"
    )
    p.add_argument("--model", required=True, help="zoo model name or module.path:factory")
    p.add_argument("--checkpoint", help="state_dict for the model (default: shipped)")
    p.add_argument("--method", choices=allocator_names(),
                   help="a registered allocator: SQNR greedy Pareto, SMPQ Shapley, ILP "
                   "(exact, HAWQ-V3), ...")  # fmt: skip
    p.add_argument("--scorer", metavar="PROXY|BASELINE|" + MEASURED, default="default",
                   help="proxy JSON / run folder, baseline name, measured SQNR, or 'default' "
                   "(the shipped default proxy, emq/default_proxy.json; the default)")  # fmt: skip
    p.add_argument(
        "--budget-bops", type=options.relative_bops, metavar="R", help="relative BOPs (vs W8A8)"
    )
    p.add_argument("--budget-size", type=parse_size, metavar="S",
                   help="weight memory: MB (e.g. 2.5MB, 2^20 bytes) or a fraction of the W8 "
                   "size (e.g. 0.5); combinable with --budget-bops")  # fmt: skip
    p.add_argument(
        "--verify",
        type=options.int_range(0, MAX_VERIFY_K, "a number of candidates"),
        default=VERIFY_K,
        metavar="K",
        help="measured phase 2: race the answer, next-best ILP solutions and greedy "
        "front points (K in all) and every uniform configuration that fits on "
        "validation images from the training split; a uniform one still in the race is "
        "kept unless the leader beats it by more than one standard error; 0 = off "
        "(default %(default)s)",
    )
    p.add_argument("--accuracy-target", type=options.percent, metavar="A",
                   help="top-1 %% on the validation images (SQNR method)")  # fmt: skip
    p.add_argument("--groups", metavar="FILE", help="quantizer groups JSON")
    p.add_argument(
        "--batch", type=options.images, default=SCORER_IMAGES,
        help=f"calibration images of a training-free --scorer (default {SCORER_IMAGES}, read "
        "128 at a time, tables averaged; as emq score --batch)",
    )  # fmt: skip
    p.add_argument(
        "--bits",
        type=options.bit_list,
        default="2,3,4,8",
        help="weight candidates of the default groups",
    )
    p.add_argument("--search", choices=SEARCHES, default="interpolation",
                   help="accuracy-target search over the Pareto front")  # fmt: skip
    p.add_argument("--smpq-value", choices=SMPQ_VALUES, default="table",
                   help="SMPQ value: scorer table or measured validation accuracy")  # fmt: skip
    p.add_argument(
        "--lam", type=options.nonneg_float, help="SMPQ BOPs penalty (default: tuned to the budget)"
    )
    p.add_argument("--permutations", type=options.positive_int, default=PERMUTATIONS, help="SMPQ M")
    p.add_argument(
        "--threshold", type=options.nonneg_float, default=THRESHOLD, help="SMPQ truncation"
    )
    p.add_argument("--beta", type=options.probability, default=BETA, help="SMPQ momentum")
    p.add_argument("--xi", type=options.positive_float, default=XI, help="SMPQ step size")
    p.add_argument("--seed", type=options.seed, default=0, help="SMPQ permutation seed")
    add_rounding_arguments(p)
    p.add_argument("--compare", action="store_true",
                   help="every method x scorer at relative BOPs 0.25, 0.35, 0.5")  # fmt: skip
    p.add_argument("--compare-rounding", action="store_true",
                   help="nearest vs AdaRound: fixed and SQNR-mixed precision")  # fmt: skip
    p.add_argument("--proxy", default="default",
                   help="best exported proxy for --compare")  # fmt: skip
    p.add_argument("--budgets", type=options.budget_list,
                   help="--compare relative BOPs budgets (default 0.25,0.35,0.5; with "
                   "--budget-size alone: that size budget only)")  # fmt: skip
    p.add_argument("--front-points", type=options.positive_int, default=6,
                   help="--compare: SQNR front points measured per scorer (plot)")  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/allocate-<model>)")
    p.add_argument("--export-onnx", metavar="PATH",
                   help="also write the allocation as a QDQ ONNX model (emq[deploy])")  # fmt: skip
    p.add_argument("--encodings", metavar="PATH",
                   help="also write its AIMET encodings JSON (format 0.6.1)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    return p
