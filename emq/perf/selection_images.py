"""Study: which proxy a campaign would export if its candidates were judged on 512 images.

Campaigns rank genomes by fitness on one 128-image calibration batch; ``emq score`` reads
512 (``emq.scoring.SCORING_IMAGES``). This scores a fixed pool of candidates (each run's
hall of fame and fittest population members, plus the literature seeds:
``emq.transfer.pool_formulas``) on every zoo bench, on the first 128 images of the
seed's 512-image batch (the campaigns' batch) and on all 512 (four chunks' tables
averaged, as ``emq.scoring.score_table`` does), then

- per run: the candidate the default aggregate (``mean-std`` over the benches that run's
  campaign searched, read from its ``campaign.json``) picks with each fitness, and its
  Spearman@topk on every model that campaign never saw (512 images) -- for the
  leave-one-out runs of ``emq transfer`` that is the left-out model;
- leave-one-out over every model: the pick from the union pool by the other models'
  fitness, judged on the left-out one, next to the default proxy.

Rows are appended to ``OUT/rows.jsonl`` one model at a time (a rerun skips finished
models). Prints the figures; asserts nothing.

    python -m emq.perf.selection_images
        [--runs runs/zoo-table-seed0,runs/zoo-table-seed1,runs/zoo-table-seed2]
        [--models ...] [--out /tmp/selection-images]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmark.bench import Bench
from benchmark.data import calibration_batch
from benchmark.factory import build_model
from benchmark.schemas import read_json
from emq.fitness import AGGREGATES, Evaluator
from emq.genome import from_string
from emq.graph import canonical, release_heap
from emq.metrics import correlation_report
from emq.proxy import DEFAULT_PROXY, load_proxy_document
from emq.scoring import SCORING_CHUNK, SCORING_IMAGES, config_scores, rank_scores
from emq.transfer import pool_formulas, shipped_bench, valid_table, zoo_models_with_bench
from primitives.inputs import INPUT_NAMES, InputSettings, get_inputs

DEFAULT = load_proxy_document(read_json(DEFAULT_PROXY, "default proxy")).formula
LABELS = ("128", str(SCORING_IMAGES))


def score_model(name: str, formulas: list[str], seed: int) -> list[dict]:
    """Every formula on one bench: fitness and all-configuration correlations, 128 / 512."""
    bench = Bench.open(shipped_bench(name))
    model = build_model(bench.model)
    names = tuple(n for n in INPUT_NAMES if n != "H")  # the campaigns' inputs
    settings = InputSettings(candidates=bench.candidates, names=names,
                             rounding=bench.rounding, adaround=bench.adaround)  # fmt: skip
    x, y = calibration_batch(SCORING_IMAGES, seed)
    k = math.ceil(SCORING_IMAGES / SCORING_CHUNK)
    tables: dict[str, list[np.ndarray | None]] = {f: [] for f in formulas}
    first = None
    for xc, yc in zip(torch.tensor_split(x, k), torch.tensor_split(y, k), strict=True):
        with tempfile.TemporaryDirectory() as tmp:  # one chunk's inputs on disk at a time
            inputs = get_inputs(model, xc, yc, settings, tmp)
            ev = Evaluator.from_bench(bench, inputs, inputs.path, 0)
            for f in formulas:
                tables[f].append(valid_table(ev, canonical(from_string(f))))
            first = first or ev
            ev.release()
            del inputs
            release_heap()
    rows = []
    for f in formulas:
        row: dict = {"model": name, "formula": f}
        for label, n in zip(LABELS, (1, k), strict=True):
            parts = tables[f][:n]
            if any(t is None for t in parts):
                row[label] = None
                continue
            scores = config_scores(sum(parts) / n, first.bit_index)
            fit = first.fitness_of_scores(scores)
            report = correlation_report(rank_scores(scores), first.accuracy)
            row[label] = {"fitness": float(fit) if np.isfinite(fit) else None,
                          "topk": float(report["spearman@topk"]),
                          "s100": float(report["spearman@100%"])}  # fmt: skip
        rows.append(row)
    return rows


def searched_models(run: str) -> list[str]:
    """The models whose benches a campaign's fitness was aggregated over."""
    ident = read_json(Path(run) / "campaign.json", "campaign file")
    prints = [ident["bench_fingerprint"], *ident.get("extra_bench_fingerprints", [])]
    return [fp["model"] for fp in prints]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=",".join(f"runs/zoo-table-seed{s}" for s in range(3)))
    p.add_argument("--models", default=",".join(zoo_models_with_bench()))
    p.add_argument("--seed", type=int, default=0, help="calibration batch seed")
    p.add_argument("--out", default="/tmp/selection-images")
    args = p.parse_args()
    runs = args.runs.split(",")
    models = args.models.split(",")
    formulas = pool_formulas(runs)
    if DEFAULT not in formulas:
        formulas.append(DEFAULT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    for name in models:
        if any(r["model"] == name for r in rows):
            continue
        print(f"[{name}] {len(formulas)} candidates, {SCORING_IMAGES} images", flush=True)
        new = score_model(name, formulas, args.seed)
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        by.setdefault(r["formula"], {})[r["model"]] = r
    agg = AGGREGATES["mean-std"]

    def valid(f: str, ms: list[str]) -> bool:
        return all(by[f].get(m, {}).get(lab) and by[f][m][lab]["fitness"] is not None
                   for m in ms for lab in LABELS)  # fmt: skip

    def pick(pool: list[str], ms: list[str], label: str) -> str:
        found = [f for f in sorted(pool) if valid(f, ms)]
        return max(found, key=lambda f: float(agg([by[f][m][label]["fitness"] for m in ms])))

    def topk(f: str, m: str) -> str:
        return f"{100 * by[f][m][LABELS[1]]['topk']:.1f}"

    print(f"\nper run: the pick of mean-std fitness on the benches the run searched; "
          f"S@topk on the models it never saw, {LABELS[1]} images")  # fmt: skip
    gains: dict[str, list[float]] = {label: [] for label in (*LABELS, "default")}
    for run in runs:
        pool = [f for f in pool_formulas([run]) if f in by]
        search = [m for m in searched_models(run) if m in models]
        held = [m for m in models if m not in search]
        for label in LABELS:
            f = pick(pool, search, label)
            gains[label] += [float(topk(f, m)) for m in held]
            shown = ", ".join(f"{m} {topk(f, m)}" for m in held)
            print(f"  {run}, picked on {label:>3} images: {shown}  {f}")
        gains["default"] += [float(topk(DEFAULT, m)) for m in held]
        print(f"  {run}, default proxy: " + ", ".join(f"{m} {topk(DEFAULT, m)}" for m in held))
    print("  mean over runs x unseen models: "
          + ", ".join(f"picked on {k} {np.mean(v):.1f}" for k, v in gains.items()))  # fmt: skip
    print(f"\nleave-one-out (union pool), S@topk of the pick on the left-out model, "
          f"{LABELS[1]} images:")  # fmt: skip
    means: dict[str, list[float]] = {label: [] for label in (*LABELS, "default")}
    for left in models:
        others = [m for m in models if m != left]
        cells = []
        for label in LABELS:
            f = pick(list(by), others, label)
            means[label].append(float(topk(f, left)))
            cells.append(f"picked on {label}: {topk(f, left)} ({f})")
        means["default"].append(float(topk(DEFAULT, left)))
        print(f"  {left}: {'; '.join(cells)}; default proxy {topk(DEFAULT, left)}")
    print("  means: " + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
