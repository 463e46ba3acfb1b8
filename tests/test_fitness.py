"""Fitness through the score table, on the shipped ResNet-20 bench and its real inputs."""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from emq.fitness import (
    FITNESS_DIGITS,
    INVALID,
    Evaluator,
    evaluate_texts,
    mapped_inputs,
    naive_scores,
    rank_fingerprint,
    shared_cache,
)
from emq.genome import from_string
from emq.graph import canonical, expr_str
from emq.metrics import spearman_at_topk
from emq.scoring import config_scores, rank_scores

PROXIES = [
    "mul(softmax(abslog(mul(V, b))), sqrt(relu(mul(W, b))))",
    "revert(mul(to_mean_scalar(H), sq_norm(E)))",
    "revert(abs(sum(mul(Ga, D))))",
    "revert(frobenius_norm(D))",
]


@pytest.mark.parametrize("text", PROXIES)
def test_score_table_equals_naive_per_config_evaluation(resnet20_evaluator, text):
    expr = canonical(from_string(text))
    configs = resnet20_evaluator.bit_index[:12]
    fast = config_scores(resnet20_evaluator.table(expr), configs)
    slow = naive_scores(expr, resnet20_evaluator.inputs, configs)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=0)


def test_fitness_is_spearman_at_topk_on_the_search_split(resnet20_evaluator, resnet20_bench):
    expr = canonical(from_string(PROXIES[1]))
    result = resnet20_evaluator.evaluate(expr)
    scores = config_scores(resnet20_evaluator.table(expr), resnet20_bench.bit_index())
    search, heldout = resnet20_bench.split(0)
    assert result["status"] == "ok"
    # Scores are ranked at a fixed relative precision (rank_scores) and fitness is rounded
    # to FITNESS_DIGITS decimals, so platforms one ULP apart agree.
    assert result["fitness"] == pytest.approx(
        spearman_at_topk(rank_scores(scores[search]), resnet20_bench.accuracy[search]),
        abs=0.5 * 10**-FITNESS_DIGITS,
    )
    assert not set(search) & set(heldout)
    assert result["fingerprint"] == rank_fingerprint(scores[search])


def test_measured_sensitivity_proxy_ranks_well(resnet20_evaluator):
    # -||D||_F grows with quantization noise at the layer outputs: it must correlate
    # positively with measured accuracy on the held-out split.
    report = resnet20_evaluator.report(
        canonical(from_string("revert(frobenius_norm(D))")), "heldout"
    )
    assert report["spearman@100%"] > 0.3


@pytest.mark.parametrize(
    "text, reason",
    [
        ("log(revert(abs(add(E, b))))", "nonfinite"),  # log of negative numbers
        ("sub(b, b)", "constant"),
    ],
)
def test_invalid_genomes_never_get_nan_fitness(resnet20_evaluator, text, reason):
    result = resnet20_evaluator.evaluate(canonical(from_string(text)))
    assert result["fitness"] == INVALID
    assert result["reason"] == reason


def test_evaluator_pickles_without_tensors(resnet20_evaluator):
    blob = pickle.dumps(resnet20_evaluator)
    assert len(blob) < 2_000_000  # bench arrays only; inputs reload from the cache file
    clone: Evaluator = pickle.loads(blob)
    expr = canonical(from_string(PROXIES[0]))
    np.testing.assert_array_equal(clone.table(expr), resnet20_evaluator.table(expr))


@pytest.fixture(scope="module")
def multi(resnet20_bench, resnet20_evaluator):
    from emq.fitness import MultiEvaluator

    # Two views sharing the inputs: the shipped bench under two different splits.
    other = Evaluator.from_bench(
        resnet20_bench, resnet20_evaluator.inputs, resnet20_evaluator.inputs_path, split_seed=7
    )
    return MultiEvaluator([resnet20_evaluator, other])


@pytest.mark.parametrize("text", PROXIES[1:])
def test_multi_bench_fitness_is_the_mean_of_the_parts(multi, text):
    expr = canonical(from_string(text))
    res = multi.evaluate(expr)
    parts = [p.evaluate(expr)["fitness"] for p in multi.parts]
    assert res["status"] == "ok" and res["fitness_per_bench"] == parts
    assert res["fitness"] == pytest.approx(np.mean(parts), abs=1e-6)  # kept to 6 decimals
    assert parts[0] != parts[1]  # the splits differ, so the parts really are two
    assert multi.report(expr) == multi.parts[0].report(expr)
    reports = multi.reports(expr, "search")
    assert [r["spearman@topk"] for r in reports] == pytest.approx(parts, abs=1e-6)


def test_min_aggregate_is_the_worst_bench(multi):
    from emq.fitness import MultiEvaluator

    worst = MultiEvaluator(multi.parts, agg="min")
    expr = canonical(from_string(PROXIES[1]))
    parts = [p.evaluate(expr)["fitness"] for p in multi.parts]
    assert worst.evaluate(expr)["fitness"] == min(parts) < multi.evaluate(expr)["fitness"]
    assert pickle.loads(pickle.dumps(worst.portable())).agg == "min"
    with pytest.raises(ValueError, match="expected one of mean, median, min, mean-std"):
        MultiEvaluator(multi.parts, agg="trimmed")


def test_multi_bench_invalid_anywhere_is_invalid(multi):
    res = multi.evaluate(canonical(from_string("log(revert(abs(add(E, b))))")))  # nonfinite
    assert res["status"] != "ok" and res["fitness"] == INVALID
    assert len(multi.shapes()) == 2 * len(multi.parts[0].shapes())
    clone = pickle.loads(pickle.dumps(multi.portable()))
    expr = canonical(from_string(PROXIES[3]))
    assert clone.evaluate(expr)["fitness"] == multi.evaluate(expr)["fitness"]


@pytest.mark.parametrize("agg", ["mean", "median", "min", "mean-std"])
def test_aggregate_bounds_hold_for_every_completion_and_are_tight(agg):
    from emq.fitness import AGGREGATE_BOUNDS, AGGREGATES

    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(2, 9))
        done = list(rng.uniform(-1, 1, int(rng.integers(1, n))))
        left = n - len(done)
        bound = AGGREGATE_BOUNDS[agg](done, left)
        rest = rng.uniform(-1, 1, (200, left))
        rest[:10] = np.linspace(-1, 1, 10)[:, None]  # equal values too, ends included
        values = [AGGREGATES[agg](done + list(r)) for r in rest]
        assert max(values) <= bound + 1e-12
        # Tight: a grid of equal completions comes close (mean - std: its maximum).
        grid = [AGGREGATES[agg](done + [t] * left) for t in np.linspace(-1, 1, 401)]
        assert max(grid) == pytest.approx(bound, abs=1e-2)
    if agg == "mean-std":  # not monotone: after five benches at 0.9, a sixth at 1 is worse
        assert AGGREGATE_BOUNDS[agg]([0.9] * 5, 1) == pytest.approx(0.9, abs=1e-9)
        assert AGGREGATES[agg]([0.9] * 5 + [1.0]) < 0.89


def test_a_mean_minus_std_fitness_below_minus_one_fits_the_run_folder_files():
    import jsonschema

    from emq.fitness import AGGREGATES
    from emq.schemas import FITNESS

    worst = float(AGGREGATES["mean-std"]([-1.0] * 6 + [1.0]))
    assert worst == pytest.approx(-1.414, abs=1e-3)
    jsonschema.validate(worst, FITNESS)  # a checkpoint holding it resumes
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(-2.0, FITNESS)


@pytest.mark.parametrize("agg", ["mean", "median", "min", "mean-std"])
def test_pruning_stops_only_genomes_that_cannot_reach_the_floor(multi, agg):
    from emq.fitness import MultiEvaluator

    three = MultiEvaluator([*multi.parts, multi.parts[1]], agg)
    assert three.order() == [0, 1, 2]  # equal sizes: the given order
    for text in PROXIES[1:]:
        expr = canonical(from_string(text))
        full = three.evaluate(expr)
        assert full["status"] == "ok"
        # A floor the genome reaches (or ties): evaluated in full, the same result.
        again = three.evaluate(expr, floor=full["fitness"])
        assert {k: again[k] for k in ("status", "fitness", "fingerprint")} == {
            k: full[k] for k in ("status", "fitness", "fingerprint")
        }
        # A floor above every bound: stopped after the first bench, with an upper bound
        # of its true fitness as the fitness it reports.
        pruned = three.evaluate(expr, floor=1.5)
        assert pruned["status"] == "pruned" and "after 1 of 3 benches" in pruned["reason"]
        assert full["fitness"] <= pruned["fitness"] < 1.5
        # A floor just above the fitness prunes only if a bound falls below it.
        near = three.evaluate(expr, floor=full["fitness"] + 1e-6)
        assert near["status"] in ("ok", "pruned") and near["fitness"] >= full["fitness"]


# ---------------------------------------------------------------- in a worker process


def test_a_worker_maps_each_inputs_file_once_and_keeps_its_cache(resnet20_evaluator):
    """Every task unpickles a fresh evaluator; the mapping and subexpression cache stay."""
    first, second = (pickle.loads(pickle.dumps(resnet20_evaluator)) for _ in range(2))
    assert first.inputs is second.inputs is mapped_inputs(resnet20_evaluator.inputs_path)
    assert first.cache is second.cache is shared_cache(resnet20_evaluator.inputs_path)
    expr = canonical(from_string("revert(abs(sum(mul(Ga, D))))"))
    assert evaluate_texts(first, [expr_str(expr)]) == [
        {**resnet20_evaluator.evaluate(expr), "seconds": pytest.approx(0, abs=60)}
    ]


def test_a_truncated_inputs_file_is_refused_never_misread(resnet20_evaluator, tmp_path):
    src = Path(resnet20_evaluator.inputs_path)
    copy = tmp_path / src.name
    shutil.copyfile(src, copy)
    ev = replace(resnet20_evaluator, inputs_path=str(copy), _inputs=None, _cache=None)
    text = "revert(frobenius_norm(D))"
    assert (
        evaluate_texts(ev, [text])[0]["fitness"]
        == resnet20_evaluator.evaluate(canonical(from_string(text)))["fitness"]
    )
    # A new, truncated file in its place (a copy cut short): the worker maps it anew.
    cut = tmp_path / "cut"
    cut.write_bytes(copy.read_bytes()[:-4096])
    os.replace(cut, copy)
    clone = pickle.loads(pickle.dumps(ev))
    with pytest.raises(ValueError, match=f"{copy}.*corrupt.*truncated"):
        evaluate_texts(clone, [text])
    copy.unlink()
    with pytest.raises(ValueError, match="cannot be read"):
        evaluate_texts(pickle.loads(pickle.dumps(ev)), [text])
