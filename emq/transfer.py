"""Transfer to architectures a search never saw: zoo benches, held-out reports, and
leave-one-architecture-out (``emq transfer``).

A proxy evolved on one model is a proxy for that model; a user scores *their own* network.
So a campaign searches on several architectures' benches at once (``emq.fitness
.MultiEvaluator``) and is judged on benches of models it never saw: the zoo's held-out
models (``benchmark.models.HELDOUT_MODELS``) after every default campaign, and every zoo
model in turn in a leave-one-architecture-out run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.bench import Bench, default_bench
from benchmark.models import HELDOUT_MODELS, MODELS, check_model_name, search_models
from benchmark.schemas import read_json
from emq.baselines.table import run_baselines
from emq.context import campaign_evaluator
from emq.evolve import Campaign, CampaignSettings, recorded_settings
from emq.fitness import AGGREGATES, MultiEvaluator
from emq.genome import from_string
from emq.graph import Expr, canonical, expr_str, release_heap
from emq.metrics import CORR_KEYS, correlation_report
from emq.reports.common import clean, number, write_csv, write_json
from emq.reports.transfer import EVOLVED, write_transfer
from emq.scoring import config_scores, rank_scores
from emq.seeds import LITERATURE
from primitives.inputs import CACHE_VERSION as INPUTS_VERSION
from primitives.operations import ShapeError

# --------------------------------------------------------------------------- the zoo's benches


def parse_models(text: str | Sequence[str] | None, option: str) -> tuple[str, ...] | None:
    """Zoo model names from ``"a,b"`` (or a list); a typo is a clear error naming ``option``."""
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if text == "none" or names == ["none"]:
        return ()
    for n in names:
        if n not in MODELS:
            raise ValueError(f"{option}: unknown zoo model {n!r}; choose from {', '.join(MODELS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{option}: a model is named twice in {','.join(names)}")
    return tuple(names)


def shipped_bench(model: str) -> Path:
    """The shipped bench of a zoo model; a clear error when it has none."""
    path = default_bench(check_model_name(model))
    if not path.is_file():
        raise ValueError(
            f"zoo model {model!r} has no shipped bench ({path}); build it with "
            f"'emq bench build --model {model} --configs 250 --seed 0 --out {path}'"
        )
    return path


def zoo_models_with_bench() -> tuple[str, ...]:
    """Every zoo model whose bench ships, in registration order."""
    return tuple(m for m in MODELS if default_bench(m).is_file())


def resolve_split(
    search: Sequence[str] | None, heldout: Sequence[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Search and held-out models (defaults: the zoo's split, models with a shipped bench).

    A model in both is an error: a proxy is never judged on a model it was searched on.
    """
    if search is None:
        search = tuple(m for m in search_models() if default_bench(m).is_file())
        if not search:
            raise ValueError("no search-set model has a shipped bench; pass --bench")
    if heldout is None:
        heldout = tuple(m for m in HELDOUT_MODELS if m not in search and default_bench(m).is_file())
    both = sorted(set(search) & set(heldout))
    if both:
        raise ValueError(
            f"model(s) {', '.join(both)} are held out (--heldout) and in the search set too; "
            "a proxy is judged only on models it never saw"
        )
    return tuple(search), tuple(heldout)


def heldout_reports(
    expr: Expr, benches: Sequence[Bench], settings: CampaignSettings, combine: str = "table"
) -> list[dict[str, Any]]:
    """The proxy's correlation on every configuration of each (never searched) bench, its
    layers combined as ``combine`` says."""
    rows = []
    for bench in benches:
        ev = campaign_evaluator(bench, settings)
        report = ev.report(expr, "all", combine)
        rows.append({"model": bench.model, "configs": len(bench), **report})
        ev.release()
    return rows


def bench_campaign(
    run: Path | str,
    benches: Sequence[Bench],
    settings: CampaignSettings,
    *,
    checkpoint: Path | str | None = None,
    heldout: Sequence[Bench] = (),
    jobs: int = 1,
    client: Any = None,
    progress: bool = True,
) -> Campaign:
    """A campaign whose fitness aggregates ``benches`` (the first is the primary).

    ``checkpoint`` applies to the primary bench's model only; ``heldout`` benches are never
    searched, only reported on in the summary.
    """
    if not benches:
        raise ValueError("a campaign needs at least one bench")
    models = [b.model for b in benches]
    for b in heldout:
        if b.model in models:
            raise ValueError(
                f"held-out bench {b.path} measures {b.model}, which is in the search set"
            )
    parts = [
        campaign_evaluator(b, settings, checkpoint if i == 0 else None)
        for i, b in enumerate(benches)
    ]
    evaluator = parts[0] if len(parts) == 1 else MultiEvaluator(parts, settings.bench_agg)
    report = None
    if heldout:

        def report(expr: Expr, combine: str = "table") -> list[dict[str, Any]]:
            return heldout_reports(expr, heldout, settings, combine)

    return Campaign(
        run, benches[0], evaluator, settings, jobs=jobs, client=client, progress=progress,
        extra_benches=tuple(benches[1:]), heldout_report=report,
    )  # fmt: skip


# --------------------------------------------------------------------------- leave one out


def transfer_baselines(
    bench: Bench, out: Path, names: Sequence[str] | None = None, progress: bool = False
) -> list[dict]:
    """Every baseline's correlation on all of ``bench``'s configurations (cached in ``out``)."""
    done = out / "baselines.json"
    if done.is_file():
        return read_json(done, "baselines file")
    rows = run_baselines(bench, split="all", out_dir=out, names=names, progress=progress)
    rows = [
        {"proxy": r["baseline"], "kind": r["kind"], **{k: r[k] for k in CORR_KEYS}} for r in rows
    ]
    write_json(done, [clean(r) for r in rows])
    return rows


def keep_plan(path: Path, plan: dict, mismatch: str) -> None:
    """Record what a resumable output folder holds (``plan``, JSON values), or check that
    the recorded plan is the same; ``mismatch`` is the error when it is not."""
    if not path.is_file():
        write_json(path, plan)
        return
    old = read_json(path, path.stem.replace("-", " "))
    if {k: (old.get(k) if isinstance(old, dict) else None) for k in plan} != plan:
        raise ValueError(mismatch)


def run_transfer(
    out: Path | str,
    benches: Mapping[str, Bench],
    seeds: Sequence[int],
    steps: int,
    settings: CampaignSettings,
    *,
    baselines: Sequence[str] | None = None,
    jobs: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Leave-one-architecture-out: for each model (``benches``: model name -> its bench),
    campaigns (one per seed) on the other models' benches, then the best proxy on the
    left-out model's configurations next to every baseline.

    Resumable: each campaign continues from its checkpoint, each finished (model, seed) and
    each model's baselines are kept as JSON, and a rerun does only what is missing.
    Writes ``transfer.csv``, ``transfer.json`` and ``transfer.png`` (proxy x left-out model;
    ``emq.reports.transfer``).
    """
    out = Path(out)
    models = tuple(benches)
    if len(models) < 2:
        raise ValueError("leave-one-out needs at least two models")
    if not seeds:
        raise ValueError("no campaign seed given")
    for name, bench in benches.items():
        if bench.model != name:
            raise ValueError(f"bench {bench.path} measures {bench.model}, not {name}")
    out.mkdir(parents=True, exist_ok=True)
    plan = {"models": list(models), "seeds": list(seeds), "steps": steps,
            "fingerprints": [benches[m].fingerprint for m in models],
            # (fields added since the first plans are left out at their old values)
            "settings": json.loads(json.dumps(
                recorded_settings(settings, ("combine", "dz_images", "cross")), default=list)),
            "inputs_version": INPUTS_VERSION}  # fmt: skip
    keep_plan(
        out / "transfer-plan.json", plan,
        f"{out} holds a transfer run of other models, seeds, steps, settings or proxy "
        "inputs (cache version); use another --out or the original options",
    )  # fmt: skip

    # Campaigns first, then the baselines: the (costly, measured) baselines of a model wait
    # until every evolved result is in, so a run cut short still has all of those.
    evolved: dict[tuple[str, int], dict] = {}
    for left in models:
        folder = out / f"leave-{left}"
        for seed in seeds:
            result = folder / f"seed{seed}" / "transfer.json"
            if not result.is_file():
                others = ", ".join(m for m in models if m != left)
                log(f"[{left}] seed {seed}: campaign on {others}")
                campaign = bench_campaign(
                    folder / f"seed{seed}",
                    [benches[m] for m in models if m != left],
                    replace(settings, seed=seed),
                    heldout=[benches[left]],
                    jobs=jobs,
                    progress=progress,
                )
                summary = campaign.run_steps(steps)
                (report,) = summary["heldout_models"]
                write_json(
                    result,
                    {
                        "left_out": left, "seed": seed, "formula": summary["formula"],
                        "combine": summary["combine"],
                        **({"cross": summary["cross"]} if "cross" in summary else {}),
                        "fitness_search": summary["fitness_search"], **clean(report),
                    },
                )  # fmt: skip
            evolved[left, seed] = read_json(result, "transfer result")
    rows: list[dict] = []
    for left in models:
        log(f"[{left}] baselines on all {len(benches[left])} configurations")
        folder = out / f"leave-{left}"
        for r in transfer_baselines(benches[left], folder / "baselines", baselines, progress):
            rows.append({"left_out": left, "seed": "", **r})
        for seed in seeds:
            res = evolved[left, seed]
            rows.append(
                {"left_out": left, "seed": seed, "proxy": EVOLVED, "kind": "training-free",
                 "formula": res["formula"], "combine": res.get("combine", "table"),
                 **{k: res[k] for k in CORR_KEYS}}
            )  # fmt: skip
    summary = summarize(rows, models)
    write_transfer(out, rows, summary)
    return {"rows": rows, "summary": summary}


def summarize(rows: Sequence[dict], models: Sequence[str]) -> list[dict]:
    """Per left-out model: the evolved proxy's mean S@topk over seeds, the best
    training-free baseline, and whether the evolved proxy beats every one of them."""
    out = []
    for m in models:
        mine = [r for r in rows if r["left_out"] == m]
        evolved = [r["spearman@topk"] for r in mine if r["proxy"] == EVOLVED]
        evolved = [v if v is not None else float("nan") for v in evolved]
        free = [
            r for r in mine
            if r["proxy"] != EVOLVED and r["kind"] == "training-free" and r["proxy"] != "random"
        ]  # fmt: skip
        best = max(free, key=lambda r: number(r["spearman@topk"]), default=None)
        mean = float(np.mean(evolved)) if evolved else float("nan")
        out.append(
            {
                "left_out": m,
                "evolved_mean_topk": mean,
                "evolved_min_topk": float(np.min(evolved)) if evolved else float("nan"),
                "best_baseline": best["proxy"] if best else None,
                "best_baseline_topk": number(best["spearman@topk"]) if best else float("nan"),
                "evolved_is_best": bool(evolved)
                and best is not None
                and min(evolved) > number(best["spearman@topk"]),
            }
        )
    return out


# --------------------------------------------------------------------------- the bench aggregate


POOL_TOP = 16  # population members per run folder in a selection study (by fitness)


def pool_formulas(runs: Sequence[Path | str], top: int = POOL_TOP) -> list[str]:
    """The candidate proxies of a selection study: each run folder's hall of fame and the
    ``top`` fittest members of its final population, plus the literature seeds, sorted."""
    found: set[str] = set()
    for run in runs:
        path = Path(run) / "checkpoint.json"
        state = read_json(path, "campaign checkpoint")
        for key in ("population", "hall_of_fame"):
            members = state.get(key) if isinstance(state, dict) else None
            if not isinstance(members, list):
                raise ValueError(f"{path}: field {key!r} is not a list of genomes")
            if key == "population":
                members = sorted(members, key=lambda g: -float(g["fitness"]))[:top]
            found.update(str(g["formula"]) for g in members)
    found.update(expr_str(canonical(from_string(s))) for s in LITERATURE)
    return sorted(found)


def valid_table(ev: Any, expr: Expr) -> np.ndarray | None:
    """A candidate's score table on an evaluator's inputs, or None where screening would
    reject it there (the numeric probe, a shape or runtime error, a non-finite value)."""
    if ev.probe(expr) is not None:
        return None
    try:
        table = np.asarray(ev.table(expr), dtype=np.float64)
    except (ShapeError, RuntimeError):
        return None
    return table if np.all(np.isfinite(table)) else None


def _pool_row(ev: Any, expr: Expr) -> dict[str, Any]:
    """One candidate on one bench: its search-split fitness (what a campaign selects on) and
    its correlation on every configuration (how it transfers when that model is left out)."""
    table = valid_table(ev, expr)
    if table is None:
        return {"valid": False}
    scores = config_scores(table, ev.bit_index)
    fit = ev.fitness_of_scores(scores)
    if not np.isfinite(fit):
        return {"valid": False}
    report = correlation_report(rank_scores(scores), ev.accuracy)
    return {"valid": True, "fitness": float(fit), **clean(report)}


def score_pool(
    out: Path,
    benches: Mapping[str, Bench],
    formulas: Sequence[str],
    settings: CampaignSettings,
    log: Callable[[str], None] = print,
) -> dict[tuple[str, str], dict]:
    """Every candidate on every bench, appended to ``out/pool-scores.jsonl`` as it finishes
    (a rerun scores only what is missing; a line cut short by a crash is scored again)."""
    path = out / "pool-scores.jsonl"
    done: dict[tuple[str, str], dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["model"], row["formula"]] = row
    with open(path, "a") as f:
        for model, bench in benches.items():
            todo = [t for t in formulas if (model, t) not in done]
            if not todo:
                continue
            log(f"[{model}] {len(todo)} candidates")
            ev = campaign_evaluator(bench, settings)
            for text in todo:
                try:
                    expr = canonical(from_string(text))
                    row = _pool_row(ev, expr)
                except (ValueError, KeyError):  # an input this study's evaluators lack
                    row = {"valid": False}
                row = {"model": model, "formula": text, **row}
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[model, text] = row
            ev.release()
            release_heap()
    return done


def aggregate_study(
    out: Path | str,
    benches: Mapping[str, Bench],
    runs: Sequence[Path | str],
    settings: CampaignSettings,
    *,
    baselines: Sequence[str] | None = None,
    top: int = POOL_TOP,
    log: Callable[[str], None] = print,
) -> dict:
    """Leave-one-architecture-out *selection*: which bench aggregate picks proxies that transfer.

    A campaign's aggregate decides which genome survives. With a fixed pool of candidates
    (``pool_formulas``: the best of the final populations of ``runs`` and the literature
    seeds), each aggregate, for each left-out model, picks the candidate with the best
    aggregated search-split fitness on the *other* models' benches (ties: the formula's
    text); the pick is then judged by its Spearman@topk on every configuration of the
    left-out model, next to the ``baselines``
    (default: every registered one; ``()``: none) on that model. Writes ``aggregates.csv`` /
    ``aggregates.json`` and, with baselines, ``transfer.csv/json/png`` (one ``evolved:AGG``
    proxy per aggregate); resumable through ``pool-scores.jsonl`` and each model's
    ``leave-MODEL/baselines``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = tuple(benches)
    if len(models) < 3:
        raise ValueError("an aggregate study needs at least three models")
    formulas = pool_formulas(runs, top)
    # Scores kept from an earlier run are reused only for the same benches and settings.
    plan = {"fingerprints": {m: benches[m].fingerprint for m in models},
            "calib_images": settings.calib_images, "calib_seed": settings.calib_seed,
            "split_seed": settings.split_seed, "inputs": list(settings.inputs),
            "inputs_version": INPUTS_VERSION}  # fmt: skip
    keep_plan(
        out / "pool-plan.json", json.loads(json.dumps(plan, default=str)),
        f"{out} holds pool scores of other benches, settings or proxy inputs (cache "
        "version); use another --out",
    )  # fmt: skip
    scores = score_pool(out, benches, formulas, settings, log)
    valid = {t for t in formulas if all(scores[m, t]["valid"] for m in models)}
    picks: list[dict] = []
    for agg, fn in AGGREGATES.items():
        for left in models:
            others = [m for m in models if m != left]

            def value(t: str, others: list[str] = others, fn: Callable = fn) -> float:
                return float(fn([scores[m, t]["fitness"] for m in others]))

            best = max(sorted(valid), key=value)
            row = scores[left, best]
            picks.append(
                {"aggregate": agg, "left_out": left, "formula": best,
                 "search_value": value(best), **{k: row[k] for k in CORR_KEYS}}
            )  # fmt: skip
    base_rows: list[dict] = []
    if baselines is None or len(baselines):
        for m in models:
            log(f"[{m}] baselines on all {len(benches[m])} configurations")
            found = transfer_baselines(benches[m], out / f"leave-{m}" / "baselines", baselines)
            base_rows += [{"left_out": m, "seed": "", **r} for r in found]
    summary = []
    for agg in AGGREGATES:
        mine = [p for p in picks if p["aggregate"] == agg]
        topk = [number(p["spearman@topk"]) for p in mine]
        row = {"aggregate": agg, "mean_topk": float(np.mean(topk)),
               "min_topk": float(np.min(topk)),
               "distinct_picks": len({p["formula"] for p in mine})}  # fmt: skip
        if base_rows:
            as_evolved = [{**p, "seed": 0, "proxy": EVOLVED, "kind": "training-free"} for p in mine]
            per_model = summarize(base_rows + as_evolved, models)
            row["best_training_free_on"] = sum(s["evolved_is_best"] for s in per_model)
        summary.append(row)
    if base_rows:
        evolved_rows = [
            {"left_out": p["left_out"], "seed": "", "proxy": f"{EVOLVED}:{p['aggregate']}",
             "kind": "training-free", "formula": p["formula"], **{k: p[k] for k in CORR_KEYS}}
            for p in picks
        ]  # fmt: skip
        write_transfer(out, base_rows + evolved_rows, [])
    cols = ["aggregate", "left_out", *CORR_KEYS, "search_value", "formula"]
    write_csv(out / "aggregates.csv", cols, picks)
    doc = {"models": list(models), "runs": [str(r) for r in runs], "candidates": len(formulas),
           "valid_everywhere": len(valid), "picks": [clean(p) for p in picks],
           "summary": summary}  # fmt: skip
    write_json(out / "aggregates.json", doc)
    return doc
