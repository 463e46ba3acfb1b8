"""Study: the output-space Fisher term with layer interactions, against the per-layer one.

The default proxy, ``revert(sq_norm(sample_sum(mul(D, Ga))))``, scores a configuration by
``-sum_l sum_n c[l, b_l, n]^2`` where ``c[l, b, n] = sum(Ga * D)`` over everything but the
sample: image n's first-order loss change when only layer l is quantized at bit b. It is a
score table (one value per layer and bit), so it ignores how the layers' errors combine. The
*joint* form adds the layers' per-image changes first, ``-sum_n (sum_l c[l, b_l, n])^2``
(the empirical Fisher along the whole configuration's weight change, cross-layer terms
included), which no score table can express. This computes ``c`` over a 512-image
calibration batch (128 images at a time) and prints Spearman@topk / @100 % on every
configuration of each bench for

- ``per-layer``: the default proxy;  ``joint``: the form above;
- ``abs per-layer`` ``-sum_l sum_n |c|`` and ``abs joint`` ``-sum_n |sum_l c|``;

Rows go to ``OUT/rows.jsonl`` as each (bench, batch seed) finishes (a rerun skips them).
Asserts nothing.

    python -m emq.perf.layer_interactions [--models resnet20,...] [--seeds 0,1]
        [--examples examples/torch_vit,examples/convnext,examples/inception,examples/mixer,
                    examples/squeezenet]
        [--out /tmp/layer-interactions]

An example ``examples/NAME`` is its bench ``NAME.sqlite``, checkpoint ``NAME.pt`` and factory
``NAME:make`` (run with ``examples`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.bench import Bench
from benchmark.factory import build_model
from emq.metrics import correlation_report
from emq.score import model_context
from emq.scoring import rank_scores
from emq.transfer import shipped_bench, zoo_models_with_bench
from primitives.inputs import reuse_quantized_weights

FORMS = ("per-layer", "joint", "abs per-layer", "abs joint")
# the unseen example models in examples/ (no campaign searched them)
EXAMPLES = ("torch_vit", "convnext", "inception", "mixer", "squeezenet")


def sample_terms(model: torch.nn.Module, bench: Bench, seed: int) -> np.ndarray:
    """``c[l, b, n]``: per-image ``sum(Ga * D)`` of every layer and bit, float64."""
    ctx = model_context(model, bench.candidates, seed=seed, cache=False, names=("D", "Ga"),
                        rounding=bench.rounding, adaround=bench.adaround)  # fmt: skip
    parts = []
    with reuse_quantized_weights():
        for part in ctx.chunks():
            terms = []
            for t in part.inputs.tensors:
                prod = t["D"].double() * t["Ga"].double()  # [B, n, ...]
                terms.append(prod.reshape(prod.shape[0], prod.shape[1], -1).sum(-1))
            parts.append(torch.stack(terms).numpy())
            part.drop_inputs()
    return np.concatenate(parts, axis=2)


def form_scores(c: np.ndarray, bit_index: np.ndarray) -> dict[str, np.ndarray]:
    """Each form's score of every configuration ``bit_index [N, L]``."""
    per = c[np.arange(c.shape[0])[None, :], bit_index]  # [N, L, n]
    total = per.sum(1)  # [N, n]: each image's loss change summed over layers
    return {
        "per-layer": -(per**2).sum((1, 2)),
        "joint": -(total**2).sum(1),
        "abs per-layer": -np.abs(per).sum((1, 2)),
        "abs joint": -np.abs(total).sum(1),
    }


def load_example_or_zoo(name: str) -> tuple[torch.nn.Module, Bench]:
    """The model and shipped bench of a zoo name or an example ``examples/NAME``."""
    if name.startswith("examples/"):
        bench = Bench.open(f"{name}.sqlite")
        return build_model(bench.model, f"{name}.pt"), bench
    return build_model(name), Bench.open(shipped_bench(name))


def bench_rows(name: str, seeds: list[int], scores_of) -> list[dict]:
    """One row per batch seed: every form's S@topk and S@100 on all configurations, in %.

    ``scores_of(model, bench, seed)``: each form's scores of the bench's configurations."""
    model, bench = load_example_or_zoo(name)
    rows = []
    for seed in seeds:
        start = time.perf_counter()
        row: dict = {"model": name, "seed": seed}
        for form, scores in scores_of(model, bench, seed).items():
            rep = correlation_report(rank_scores(scores), np.asarray(bench.accuracy))
            row[form] = [100 * rep["spearman@topk"], 100 * rep["spearman@100%"]]
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    return rows


def study_main(doc: str, forms: tuple[str, ...], scores_of, default_out: str) -> list[dict]:
    """The command line of a scoring-form study: resumable rows, then the table and means;
    returns the rows of the models and seeds asked for."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo_models_with_bench()))
    p.add_argument("--examples", default=",".join(f"examples/{n}" for n in EXAMPLES))
    p.add_argument("--seeds", default="0,1", help="calibration batch seeds")
    p.add_argument("--out", default=default_out)
    args = p.parse_args()
    names = [n for n in (*args.models.split(","), *args.examples.split(",")) if n]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    for name in names:
        todo = [s for s in seeds if not any(r["model"] == name and r["seed"] == s for r in rows)]
        if todo:
            new = bench_rows(name, todo, scores_of)
            with open(path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            rows += new
    print(f"S@topk / S@100 on every configuration, %, 512 images, batch seeds {args.seeds}")
    print(f"{'bench':<20} {'seed':>4}  " + "  ".join(f"{f:>13}" for f in forms))
    groups: dict[str, dict[str, list[float]]] = {"zoo": {}, "examples": {}}
    rows = [r for r in rows if r["model"] in names and r["seed"] in seeds]
    for r in rows:
        cells = "  ".join(f"{r[f][0]:>6.1f} /{r[f][1]:>5.1f}" for f in forms)
        print(f"{r['model']:<20} {r['seed']:>4}  {cells}")
        group = groups["examples" if r["model"].startswith("examples/") else "zoo"]
        for f in forms:
            group.setdefault(f, []).append(r[f][0])
    for label, group in groups.items():
        if group:
            means = "  ".join(f"{f} {np.mean(v):.1f}" for f, v in group.items())
            print(f"mean S@topk, {label} ({len(group[forms[0]])} rows): {means}")
    return rows


def interaction_scores(model: torch.nn.Module, bench: Bench, seed: int) -> dict[str, np.ndarray]:
    return form_scores(sample_terms(model, bench, seed), bench.bit_index())


if __name__ == "__main__":
    study_main(__doc__, FORMS, interaction_scores, "/tmp/layer-interactions")
