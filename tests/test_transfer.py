"""Transfer to unseen architectures: zoo split, held-out reports, leave-one-architecture-out."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmark.bench import Bench, default_bench
from benchmark.models import HELDOUT_MODELS, MODELS, search_models
from emq.cli import main
from emq.context import bench_evaluator, campaign_evaluator
from emq.evolve import Campaign, CampaignSettings
from emq.fitness import AGGREGATES
from emq.genome import from_string
from emq.graph import canonical
from emq.transfer import (
    EVOLVED,
    aggregate_study,
    bench_campaign,
    heldout_reports,
    parse_models,
    resolve_split,
    run_transfer,
    summarize,
)
from primitives.inputs import LayerInputs

# Small campaigns on a small calibration batch: the logic, not the search, is under test.
SETTINGS = CampaignSettings(population=8, offspring=3, seed=1, calib_images=32)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EMQ_CACHE", str(tmp_path_factory.mktemp("transfer-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def r20():
    return Bench.open(default_bench("resnet20"))


@pytest.fixture(scope="module")
def mnv2():
    return Bench.open(default_bench("mobilenetv2"))


def test_zoo_split_is_fixed_and_disjoint():
    assert "mobilenetv2" in HELDOUT_MODELS and len(HELDOUT_MODELS) >= 2
    assert set(search_models()).isdisjoint(HELDOUT_MODELS)
    assert set(search_models()) | set(HELDOUT_MODELS) == set(MODELS)
    assert len(MODELS) >= 8
    search, held = resolve_split(None, None)
    assert "resnet20" in search and set(search) <= set(search_models())
    assert all(default_bench(m).is_file() for m in search + held)
    assert "mobilenetv2" in held and not set(held) & set(search)


def test_bad_model_names_and_overlaps_are_clear_errors():
    with pytest.raises(ValueError, match="--models: unknown zoo model 'resnet2'"):
        parse_models("resnet2,vgg", "--models")
    with pytest.raises(ValueError, match="named twice"):
        parse_models("vgg,vgg", "--heldout")
    assert parse_models("none", "--heldout") == ()
    assert parse_models(None, "--models") is None
    with pytest.raises(ValueError, match="mobilenetv2 are held out .* and in the search set"):
        resolve_split(("resnet20", "mobilenetv2"), ("mobilenetv2",))


def test_cli_refuses_a_held_out_model_in_the_search_set(tmp_path, capsys):
    from emq.cli import main

    argv = ["evolve", "--models", "resnet20", "--heldout", "resnet20", "--run", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held out" in err[0] and "resnet20" in err[0]
    assert main(["transfer", "--models", "resnet20,mobilnetv2", "--out", str(tmp_path)]) == 2
    assert "unknown zoo model 'mobilnetv2'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not list(tmp_path.iterdir())


def test_held_out_bench_in_the_search_set_is_refused(tmp_path, r20):
    with pytest.raises(ValueError, match="in the search set"):
        bench_campaign(tmp_path / "x", [r20], SETTINGS, heldout=[r20])
    assert not (tmp_path / "x").exists()


def test_campaign_reports_on_never_searched_models(tmp_path, r20, mnv2):
    campaign = bench_campaign(tmp_path / "c", [r20], SETTINGS, heldout=[mnv2], progress=False)
    summary = campaign.run_steps(1)
    (row,) = summary["heldout_models"]
    assert row["model"] == "mobilenetv2" and row["configs"] == len(mnv2)
    # The same numbers as scoring the left-out bench directly, on every configuration.
    expr = canonical(from_string(summary["formula"]))
    direct = campaign_evaluator(mnv2, SETTINGS)
    report = direct.report(expr, "all", summary["combine"])
    assert row["spearman@topk"] == pytest.approx(report["spearman@topk"])
    assert heldout_reports(expr, [mnv2], SETTINGS, summary["combine"])[0] == row
    saved = json.loads((tmp_path / "c" / "best.json").read_text())
    assert saved["heldout_models"][0]["model"] == "mobilenetv2"


def test_pruned_campaign_equals_the_full_one_cheapest_bench_first(tmp_path, r20, mnv2):
    # The paths differ only where a pruned child would have been invalid on a bench it
    # skipped (Campaign.prune). With --combine auto this seed's step 1 holds such a child
    # (a Dz genome pruned after ResNet-20, invalid on MobileNetV2), so the equality is shown
    # on the table combination; tests/test_joint_search.py checks pruning against both.
    settings = replace(SETTINGS, offspring=4, combine="table")
    runs = {}
    for prune, jobs in ((True, 1), (False, 1), (True, 2)):
        camp = bench_campaign(
            tmp_path / f"p{prune}{jobs}", [r20, mnv2], settings, progress=False, jobs=jobs
        )
        camp.prune = prune
        camp.run_steps(8)
        runs[prune, jobs] = camp
    on, off, workers = runs[True, 1], runs[False, 1], runs[True, 2]

    # Worker processes receive the floor with their batch: the same pruned campaign.
    def timeless(cache: dict) -> dict:
        return {k: {f: x for f, x in v.items() if f != "seconds"} for k, v in cache.items()}

    assert timeless(workers.screener.cache) == timeless(on.screener.cache)
    # The cheaper model's bench goes first (fewer input elements), whatever the given order.
    sizes = [sum(np.prod(s) for layer in p.shapes() for s in layer.values())
             for p in on.evaluator.parts]  # fmt: skip
    assert sizes[0] != sizes[1] and on.evaluator.order() == list(np.argsort(sizes))
    assert on.screener.counts["pruned"] > 0 and off.screener.counts["pruned"] == 0
    # Pruned children are dropped as their full evaluation would have had them dropped.
    assert [str(g) for g in on.population] == [str(g) for g in off.population]
    assert [g.fitness.values for g in on.population] == [g.fitness.values for g in off.population]
    assert [h["best"] for h in on.history] == [h["best"] for h in off.history]
    assert [h["median"] for h in on.history] == [h["median"] for h in off.history]
    assert on.hof == off.hof and on.rng.getstate() == off.rng.getstate()
    # Every pruned result's fitness bounds the true one from above and lies below the floor
    # it was stopped at, so it never entered the population.
    pruned = {k: v for k, v in on.screener.cache.items() if v["status"] == "pruned"}
    for key, res in pruned.items():
        assert off.screener.cache[key]["fitness"] <= res["fitness"]
        assert res["fitness"] < min(g.fitness.values[0] for g in on.population)


def test_leave_one_out_writes_tables_and_resumes(tmp_path, r20, mnv2):
    out = tmp_path / "t"
    benches = {"resnet20": r20, "mobilenetv2": mnv2}
    kw = {"baselines": ["bops", "bparams"], "progress": False, "log": lambda s: None}
    result = run_transfer(out, benches, [0], 1, SETTINGS, **kw)
    rows = result["rows"]
    assert len(rows) == 2 * 3  # per left-out model: two baselines and the evolved proxy
    for left in benches:
        evolved = [r for r in rows if r["left_out"] == left and r["proxy"] == EVOLVED]
        assert len(evolved) == 1 and evolved[0]["formula"]
        camp = json.loads((out / f"leave-{left}" / "seed0" / "campaign.json").read_text())
        searched = [b for b in benches if b != left]
        assert camp["bench_fingerprint"] == benches[searched[0]].fingerprint
    with open(out / "transfer.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    doc = json.loads((out / "transfer.json").read_text())
    assert [s["left_out"] for s in doc["summary"]] == list(benches)
    assert (out / "transfer.png").stat().st_size > 1000
    # A rerun reuses every finished result (nothing is evaluated again).
    marker = out / "leave-resnet20" / "seed0" / "transfer.json"
    before = marker.stat().st_mtime_ns
    again = run_transfer(out, benches, [0], 1, SETTINGS, **kw)
    assert marker.stat().st_mtime_ns == before and again["rows"] == rows
    with pytest.raises(ValueError, match="other models, seeds, steps, settings or proxy"):
        run_transfer(out, benches, [0, 1], 1, SETTINGS, **kw)
    # A folder written with the float32 inputs (cache version 2) is not resumed on these.
    plan = json.loads((out / "transfer-plan.json").read_text())
    (out / "transfer-plan.json").write_text(json.dumps({**plan, "inputs_version": 2}))
    with pytest.raises(ValueError, match=r"settings or proxy inputs \(cache version\)"):
        run_transfer(out, benches, [0], 1, SETTINGS, **kw)


def test_summary_counts_where_the_evolved_proxy_is_best():
    rows = [
        {"left_out": "a", "proxy": EVOLVED, "kind": "training-free", "spearman@topk": 0.5},
        {"left_out": "a", "proxy": EVOLVED, "kind": "training-free", "spearman@topk": 0.4},
        {"left_out": "a", "proxy": "bops", "kind": "training-free", "spearman@topk": 0.3},
        {"left_out": "a", "proxy": "dloss_measured", "kind": "measured", "spearman@topk": 0.9},
        {"left_out": "b", "proxy": EVOLVED, "kind": "training-free", "spearman@topk": 0.2},
        {"left_out": "b", "proxy": "hawq_v3", "kind": "training-free", "spearman@topk": 0.25},
    ]
    a, b = summarize(rows, ["a", "b"])
    assert a["evolved_is_best"] and a["evolved_mean_topk"] == pytest.approx(0.45)
    assert a["best_baseline"] == "bops"  # measured baselines are not training-free
    assert not b["evolved_is_best"] and b["best_baseline"] == "hawq_v3"


def _one_ulp(inputs: LayerInputs) -> LayerInputs:
    """Inputs one float32 ulp apart (they are rounded to float32). Exact zeros stay zero: a
    ReLU's zeros, or a probability that underflows float32 in ``Dz``, are zero on every CPU
    (a summation order scales a value, it does not make a zero a denormal, whose log would
    turn a genome the probe rejects into a valid one)."""

    def bump(v: torch.Tensor) -> torch.Tensor:
        v = v.float()
        return torch.where(v == 0, v, torch.nextafter(v, torch.tensor(np.inf))).double()

    bumped = [{k: bump(v) for k, v in t.items()} for t in inputs.tensors]
    return LayerInputs(inputs.layers, inputs.candidates, bumped)


def test_inputs_one_ulp_apart_give_the_same_campaign(tmp_path, r20):
    """Another CPU sums floats in another order; the campaign must not notice."""
    settings = replace(SETTINGS, population=8, offspring=4)
    ev = bench_evaluator(r20, settings.calib_images, names=settings.inputs)
    bumped = type(ev).from_bench(r20, _one_ulp(ev.inputs), ev.inputs_path)
    assert any(
        not torch.equal(a, b)
        for t0, t1 in zip(ev.inputs.tensors, bumped.inputs.tensors, strict=True)
        for a, b in zip(t0.values(), t1.values(), strict=True)
    )
    runs = []
    for name, evaluator in (("a", ev), ("b", bumped)):
        Campaign(tmp_path / name, r20, evaluator, settings, progress=False).run_steps(4)
        ck = json.loads((tmp_path / name / "checkpoint.json").read_text())
        runs.append(([(g["formula"], g["fitness"]) for g in ck["population"]], ck["history"]))
    assert runs[0][0] == runs[1][0]
    strip = [[{k: v for k, v in h.items() if k not in ("seconds", "evals_per_s")} for h in r[1]]
             for r in runs]  # fmt: skip
    assert strip[0] == strip[1]


BASES = ("bops", "bparams")


def test_aggregate_study_picks_by_the_other_models_and_resumes(tmp_path, r20, mnv2, capsys):
    """Leave-one-out selection: each aggregate's pick for a left-out model is the pool's best
    on the *other* benches, judged by its correlation on every configuration of the left-out
    one; a crash mid-line is scored again, and a rerun gives the same document."""
    vgg = Bench.open(default_bench("vgg"))
    benches = {"resnet20": r20, "mobilenetv2": mnv2, "vgg": vgg}
    run = tmp_path / "run"
    run.mkdir()
    pool = ["revert(sq_norm(E))", "revert(sq_norm(D))", "mul(W, b)"]
    members = [{"genome": t, "formula": t, "fitness": 0.5} for t in pool]
    (run / "checkpoint.json").write_text(json.dumps({"population": members, "hall_of_fame": []}))
    out = tmp_path / "agg"
    doc = aggregate_study(out, benches, [run], SETTINGS, baselines=BASES, log=lambda s: None)
    assert doc["candidates"] >= len(pool) and set(doc["models"]) == set(benches)
    assert [s["aggregate"] for s in doc["summary"]] == list(AGGREGATES)
    lines = (out / "pool-scores.jsonl").read_text().splitlines()
    scores = {(r["model"], r["formula"]): r for r in map(json.loads, lines)}
    for p in doc["picks"]:
        others = [m for m in benches if m != p["left_out"]]
        valid = [t for (m, t), r in scores.items() if m == "vgg" and
                 all(scores[k, t]["valid"] for k in benches)]  # fmt: skip
        values = {t: AGGREGATES[p["aggregate"]]([scores[m, t]["fitness"] for m in others])
                  for t in valid}  # fmt: skip
        assert p["search_value"] == pytest.approx(max(values.values()))
        expr = canonical(from_string(p["formula"]))
        (report,) = heldout_reports(expr, [benches[p["left_out"]]], SETTINGS)
        assert p["spearman@topk"] == pytest.approx(report["spearman@topk"], abs=1e-9)
    with open(out / "aggregates.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(AGGREGATES) * len(benches)
    # Next to the baselines: an aggregate's pick is "best" where it beats each of them.
    with open(out / "transfer.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == (len(BASES) + len(AGGREGATES)) * len(benches)
    for s in doc["summary"]:
        wins = 0
        for m in benches:
            base = max(float(r["spearman@topk"]) for r in table
                       if r["left_out"] == m and r["proxy"] in BASES)  # fmt: skip
            (pick,) = [p for p in doc["picks"] if p["left_out"] == m and
                       p["aggregate"] == s["aggregate"]]  # fmt: skip
            wins += pick["spearman@topk"] > base
        assert s["best_training_free_on"] == wins
    # A crash while writing the last line: that row is scored again, the rest kept.
    (out / "pool-scores.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:9])
    again = aggregate_study(out, benches, [run], SETTINGS, baselines=BASES, log=lambda s: None)
    assert again["picks"] == doc["picks"] and again["summary"] == doc["summary"]
    with pytest.raises(ValueError, match="other benches, settings or proxy inputs"):
        aggregate_study(out, benches, [run], replace(SETTINGS, calib_images=16), baselines=BASES)
    plan = json.loads((out / "pool-plan.json").read_text())
    del plan["inputs_version"]  # a study written before the float64 inputs
    (out / "pool-plan.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="other benches, settings or proxy inputs"):
        aggregate_study(out, benches, [run], SETTINGS, baselines=BASES)
    bad = ["transfer", "--pool", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]
    assert main(bad) == 2
    assert "not a campaign run folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything is written
