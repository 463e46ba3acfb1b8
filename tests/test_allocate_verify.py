"""Tests for emq.allocate.verify: the measured phase 2 (candidate pool, race, cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from allocate_tiny import tiny_net

from emq.allocate.ilp import allocate_ilp
from emq.allocate.problem import AllocationProblem
from emq.allocate.result import measure
from emq.allocate.verify import (
    Z_PREFER,
    Candidate,
    candidate_pool,
    chunk_bounds,
    race,
    uniform_choices,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def resnet_problem(resnet20_trained) -> AllocationProblem:
    """ResNet-20 with 400 validation images (rounds of 50, 50, 100, 200)."""
    return AllocationProblem.for_model(
        "resnet20", resnet20_trained, cache=False, validation_images=400
    )


def test_pool_order_dedupes_and_appends_uniform():
    groups_uniform = [Candidate("uniform W4A8", (2, 2)), Candidate("uniform W2A8", (3, 3))]
    pool = candidate_pool((0, 2), 4, ilp=[(0, 2), (1, 2), (2, 1)],
                          front=[(1, 2), (2, 2), (3, 1)], uniform=groups_uniform)  # fmt: skip
    assert [c.source for c in pool] == [
        "answer", "front +0", "front +1", "ilp #3", "uniform W2A8"
    ]  # fmt: skip
    # ilp #1 and #2 repeat the answer and front +0 (their turns pass to the front); (2, 2)
    # came from the front first: the uniform W4A8 duplicate keeps that label
    assert pool[2].choice == (2, 2) and len({c.choice for c in pool}) == len(pool)
    assert [c.source for c in candidate_pool((0,), 3)] == ["answer"]
    with pytest.raises(ValueError, match="at least one candidate"):
        candidate_pool((0,), 0)


def test_race_prefers_a_surviving_uniform_candidate_within_noise():
    """A mixed leader within one standard error of a uniform survivor loses to it."""
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.9
    right, wrong = np.flatnonzero(~base), np.flatnonzero(base)

    def mixed(gained: int, lost: int = 0) -> np.ndarray:  # base, some images flipped
        out = base.copy()
        out[right[:gained]], out[wrong[:lost]] = True, False
        return out

    bounds = chunk_bounds(2000)
    # (mixed flags, z of its lead, winner with z_prefer 1 / 2.5 / 0)
    cases = [(mixed(3, 2), "noise", (1, 1, 0)), (mixed(4), "about 2 SE", (0, 1, 0)),
             (mixed(60), "clear", (0, 0, 0))]  # fmt: skip
    for flags, _, winners in cases:

        def correct_of(i: int, c: int, flags=(flags, base)) -> np.ndarray:
            return flags[i][slice(*bounds[c])]

        got = [race(2, correct_of, len(bounds), prefer={1}, z_prefer=zp).winner
               for zp in (1.0, 2.5, 0.0)]  # fmt: skip
        assert tuple(got) == winners
        assert race(2, correct_of, len(bounds), prefer={1}).winner == winners[0]  # default: 1 SE
    assert Z_PREFER == 1.0


def test_an_answer_that_is_uniform_is_marked_uniform():
    uniform = [Candidate("uniform W4A8", (1, 1), uniform=True)]
    pool = candidate_pool((1, 1), 2, ilp=[(0, 2)], uniform=uniform)
    assert [(c.source, c.uniform) for c in pool] == [("answer", True), ("ilp #1", False)]


def test_chunk_bounds_cover_the_images_once():
    for total in (1, 7, 400, 2000):
        bounds = chunk_bounds(total)
        assert bounds[0][0] == 0 and bounds[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert chunk_bounds(2000) == [(0, 250), (250, 500), (500, 1000), (1000, 2000)]


def test_race_drops_clearly_worse_candidates_early_and_measures_the_rest(resnet_problem):
    p = resnet_problem
    uni = uniform_choices(p.groups)  # W8, W4, W3, W2
    x, y = p.data("validation")
    bounds = chunk_bounds(len(x))
    calls = []

    def correct_of(i: int, chunk: int) -> np.ndarray:
        calls.append((i, chunk))
        w = [p.groups[0].candidates[uni[i].choice[0]][0]] * len(p.macs)
        p.sim.set_config(w, [8] * len(w))
        try:
            lo, hi = bounds[chunk]
            return (p.sim.forward(x[lo:hi]).argmax(1) == y[lo:hi]).numpy()
        finally:
            p.sim.set_fp()

    res = race(len(uni), correct_of, len(bounds))
    # W2 (about 20 %) is out after the first round of 50 images; W8 and W4 go the distance
    assert (3, 0) in calls and (3, 1) not in calls
    assert res.images_of(0) == res.images_of(1) == len(x) and res.images_of(3) == 50
    assert res.winner in (0, 1)
    # a full-distance accuracy is the simulator's accuracy on the same images
    for i in (0, 1):
        w = [p.groups[0].candidates[uni[i].choice[0]][0]] * len(p.macs)
        assert res.accuracy(i) == pytest.approx(p.accuracy(w, [8] * len(w), "validation"))
    assert res.measured == len(calls) and res.images == sum(res.images_of(i) for i in range(4))


def test_verified_allocation_is_never_below_a_measured_uniform_one(resnet_problem):
    """A scorer that ranks by BOPs alone (no accuracy information) at 0.5 relative BOPs."""
    p = resnet_problem
    alloc = p.allocate("ilp", "bops", budget_bops=0.5, verify=2)
    ver = alloc.details["verify"]
    rows = ver["candidates"]
    chosen = next(r for r in rows if r["chosen"])
    assert [r["source"] for r in rows][:1] == ["answer"]
    n = len(p.macs)
    for b in (4, 3, 2):  # every uniform configuration within the budget is raced
        assert [b] * n in [r["w_bits"] for r in rows]
    x, y = p.data("validation")
    full = max(r["images"] for r in rows)
    assert chosen["images"] == full
    survivors = [r for r in rows if r["images"] == full]
    best = max(r["validation_top1"] for r in survivors)
    best_uniform = max((r["validation_top1"] for r in survivors if r["uniform"]), default=None)
    # the most accurate survivor, or the best uniform survivor when within noise of it
    assert chosen["validation_top1"] in (best, best_uniform)
    for r in rows:
        m = r["images"]
        assert r["relative_bops"] <= 0.5 + 1e-9 and m > 0
        assert measure(p.sim, x[:m], y[:m], r["w_bits"], r["a_bits"]) == r["validation_top1"]
        assert r["uniform"] == (len(set(r["w_bits"])) == 1 and len(set(r["a_bits"])) == 1)
        if m < full:  # out of the race: below the winner on the images it saw
            assert (
                measure(p.sim, x[:m], y[:m], chosen["w_bits"], chosen["a_bits"])
                > r["validation_top1"]
            )
    assert alloc.w_bits == chosen["w_bits"] and alloc.relative_bops <= 0.5 + 1e-9
    # time and evaluations include the race
    assert alloc.evaluations == alloc.details["unverified"]["evaluations"] + ver["evaluations"]
    assert alloc.seconds > alloc.details["unverified"]["seconds"]


def test_verify_zero_is_the_methods_own_answer():
    p = AllocationProblem.for_model("tiny", tiny_net(), cache=False, validation_images=100)
    plain = p.allocate("ilp", "sqnr-measured", budget_bops=0.5)
    raw = allocate_ilp(p.sensitivity("sqnr-measured"), p.macs, 0.5)
    assert plain.w_bits == raw.w_bits and "verify" not in plain.details
    assert "unverified" not in plain.details
    verified = p.allocate("ilp", "sqnr-measured", budget_bops=0.5, verify=3)
    assert verified.details["unverified"]["w_bits"] == plain.w_bits
    assert verified.details["verify"]["k"] == 3


def test_measured_candidates_are_cached_and_a_rerun_resumes(tmp_path):
    """A rerun reads every (configuration, round) outcome; a torn run measures only the rest."""
    cache = tmp_path / "cache"

    def run():
        p = AllocationProblem.for_model("tiny", tiny_net(), cache=cache, validation_images=200)
        return p.allocate("sqnr", "sqnr-measured", budget_bops=0.5, verify=4)

    first = run()
    ver = first.details["verify"]
    assert ver["cached"] == 0 and ver["evaluations"] >= 2
    files = [f for f in cache.glob("*.json") if "|0:" in f.read_text()]
    assert len(files) == 1  # the verification store, beside phase 1's
    entries = json.loads(files[0].read_text())
    measured = sum(1 for _ in entries)
    again = run()
    assert again.details["verify"]["cached"] == measured
    assert again.w_bits == first.w_bits
    assert again.details["verify"]["candidates"] == ver["candidates"]
    # as if the first run had been killed half-way: only the missing outcomes are measured
    kept = dict(list(entries.items())[: measured // 2])
    files[0].write_text(json.dumps(kept))
    resumed = run()
    assert resumed.details["verify"]["cached"] == len(kept)
    assert resumed.w_bits == first.w_bits
    assert len(json.loads(files[0].read_text())) == measured
