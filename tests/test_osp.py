"""OSP: static operation priors, adaptation to rejections, the uniform ablation, state."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from scipy import stats

from emq.osp import OperationSampler
from primitives.inputs import INPUT_NAMES
from primitives.operations import binary_ops, unary_ops

ALL_NAMES = unary_ops() + binary_ops() + list(INPUT_NAMES)


def _draws(sampler: OperationSampler, kind: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    draw = getattr(sampler, kind)
    return [draw(rng) for _ in range(n)]


def test_disabled_sampler_weights_are_all_one():
    s = OperationSampler(enabled=False)
    s.record({"matmul", "abs"}, accepted=False)
    assert all(s.weight(name) == 1.0 for name in ALL_NAMES)


@pytest.mark.parametrize(
    "kind, names",
    [("unary", unary_ops()), ("binary", binary_ops()), ("terminal", list(INPUT_NAMES))],
)
def test_disabled_sampler_draws_uniformly(kind, names):
    n = 400 * len(names)
    counts = Counter(_draws(OperationSampler(enabled=False), kind, n, seed=1))
    assert set(counts) == set(names)
    observed = [counts[name] for name in names]
    assert stats.chisquare(observed).pvalue > 1e-3


def test_enabled_priors():
    s = OperationSampler()
    assert s.weight("no_op") == pytest.approx(2 * s.weight("abs"))
    assert s.weight("no_op") == pytest.approx(2 * s.weight("sqrt"))
    assert s.weight("matmul") < s.weight("add")
    assert s.weight("add") == s.weight("sub") == s.weight("mul")
    assert s.weight("E") > s.weight("W") and s.weight("b") > s.weight("A")


def test_enabled_sampler_draws_follow_the_priors():
    s = OperationSampler()
    counts = Counter(_draws(s, "unary", 20000, seed=2))
    assert 1.7 < counts["no_op"] / counts["abs"] < 2.3
    bin_counts = Counter(_draws(s, "binary", 10000, seed=3))
    assert bin_counts["matmul"] < bin_counts["add"] / 3


def test_rejections_lower_an_operations_weight():
    s = OperationSampler()
    w_abs, w_sqrt, w_matmul = s.weight("abs"), s.weight("sqrt"), s.weight("matmul")
    for _ in range(5):
        s.record({"abs", "matmul"}, accepted=False)
    assert s.weight("abs") < w_abs and s.weight("matmul") < w_matmul
    assert s.weight("sqrt") == w_sqrt
    # prior * (accepted + 1) / (tried + 2)
    assert s.weight("abs") == pytest.approx(1.0 * 1 / 7)
    for _ in range(20):
        s.record({"abs"}, accepted=True)
    assert s.weight("abs") > w_abs
    s.record({"W", "not_an_op"}, accepted=False)  # inputs and unknown names are ignored
    assert s.weight("W") == OperationSampler().weight("W")


def test_rejections_shift_the_draws():
    s = OperationSampler()
    for _ in range(30):
        s.record({"no_op"}, accepted=False)
    counts = Counter(_draws(s, "unary", 5000, seed=4))
    before = Counter(_draws(OperationSampler(), "unary", 5000, seed=4))
    assert counts["no_op"] < before["no_op"] / 4


def test_adapt_off_keeps_the_priors():
    s = OperationSampler(adapt=False)
    before = {n: s.weight(n) for n in ALL_NAMES}
    s.record({"abs", "matmul"}, accepted=False)
    assert {n: s.weight(n) for n in ALL_NAMES} == before
    assert s.weight("no_op") == 2.0 and s.weight("abs") == 1.0


@pytest.mark.parametrize("enabled", [True, False])
def test_sampling_is_deterministic_with_a_seeded_rng(enabled):
    def run(seed: int) -> list[str]:
        random.seed(seed + 99)  # the global RNG must not matter
        s, rng = OperationSampler(enabled=enabled), random.Random(seed)
        out = []
        for i in range(200):
            out += [s.unary(rng), s.binary(rng), s.terminal(rng)]
            s.record({out[-3], out[-2]}, accepted=i % 3 == 0)
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_state_round_trip():
    s = OperationSampler()
    rng = random.Random(0)
    for i in range(50):
        s.record({s.unary(rng), s.binary(rng)}, accepted=i % 4 == 0)
    state = json.loads(json.dumps(s.state()))
    t = OperationSampler()
    t.load_state(state)
    assert {n: t.weight(n) for n in ALL_NAMES} == {n: s.weight(n) for n in ALL_NAMES}
    assert _draws(t, "unary", 100, 7) == _draws(s, "unary", 100, 7)
    saved = s.state()
    s.record({"abs"}, accepted=False)
    assert saved["tried"]["abs"] == state["tried"]["abs"]  # state is a snapshot
