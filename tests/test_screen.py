"""Compatibility screening: stage counts, the equivalence cache and semantic duplicates."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from emq.fitness import INVALID
from emq.genome import from_string
from emq.graph import canonical, dag_hash, expr_str
from emq.screen import STAGES, Screener, validity_rate

B = 4
# Per-layer input shapes with a leading bit axis: a conv layer and a linear layer.
CONV = {
    "A": (1, 6, 8, 5, 5), "Ga": (1, 6, 8, 5, 5), "D": (B, 6, 8, 5, 5),
    "W": (1, 8, 4, 3, 3), "G": (1, 8, 4, 3, 3), "H": (1, 8, 4, 3, 3), "V": (1, 8, 4, 3, 3),
    "Wq": (B, 8, 4, 3, 3), "E": (B, 8, 4, 3, 3), "b": (B,),
}  # fmt: skip
LINEAR = {
    "A": (1, 6, 10), "Ga": (1, 6, 10), "D": (B, 6, 10),
    "W": (1, 10, 16), "G": (1, 10, 16), "H": (1, 10, 16), "V": (1, 10, 16),
    "Wq": (B, 10, 16), "E": (B, 10, 16), "b": (B,),
}  # fmt: skip
# An (artificial) layer whose output has the weight's shape: "mul(E, A)" fits it only.
SQUARE = {**CONV, "A": (1, 8, 4, 3, 3), "Ga": (1, 8, 4, 3, 3), "D": (B, 8, 4, 3, 3)}


def _screener(*layers: dict) -> Screener:
    return Screener(shapes=list(layers) or [CONV, LINEAR])


def _ok(fingerprint: str, fitness: float = 0.5) -> dict:
    return {"status": "ok", "fitness": fitness, "fingerprint": fingerprint, "reason": None}


def test_no_bits_graph_is_rejected_and_cached():
    s = _screener()
    v = s.static(from_string("sq_norm(W)"))
    assert v.stage == "s2_no_bits"
    assert v.cached == {"status": "s2_no_bits", "fitness": INVALID}
    assert s.cache[v.key] == v.cached
    assert v.key == dag_hash(canonical(from_string("sq_norm(W)")))
    assert s.counts == Counter(generated=1, s2_no_bits=1)


@pytest.mark.parametrize("text", ["matmul(A, E)", "add(E, D)", "mul(Wq, A)"])
def test_shape_incompatible_graph_is_rejected(text):
    s = _screener()
    v = s.static(from_string(text))
    assert v.stage == "s2_shape" and v.cached["fitness"] == INVALID
    assert s.counts == Counter(generated=1, s2_shape=1)


def test_no_bits_is_checked_before_shapes():
    s = _screener()
    assert s.static(from_string("matmul(A, W)")).stage == "s2_no_bits"
    assert s.counts["s2_shape"] == 0


def test_shapes_are_checked_on_every_layer():
    text = "mul(E, A)"
    assert _screener(SQUARE).static(from_string(text)).stage is None
    for layers in ([SQUARE, CONV], [CONV, SQUARE]):
        assert _screener(*layers).static(from_string(text)).stage == "s2_shape"


def test_passing_graph_needs_evaluation_and_is_not_cached():
    s = _screener()
    v = s.static(from_string("revert(mul(to_mean_scalar(H), sq_norm(no_op(E))))"))
    assert v.stage is None and v.cached is None
    assert expr_str(v.expr) == "revert(mul(sq_norm(E), to_mean_scalar(H)))"
    assert v.key not in s.cache
    assert s.counts == Counter(generated=1)


def test_equivalent_repeat_reuses_the_cached_result():
    s = _screener()
    first = s.static(from_string("sq_norm(W)"))
    again = s.static(from_string("no_op(sq_norm(abs(abs(no_op(W)))))"))
    assert again.stage == "s2_no_bits"  # not equivalent: abs(W) != W
    repeat = s.static(from_string("sq_norm(no_op(W))"))
    assert repeat.stage == "s1_equivalent" and repeat.key == first.key
    assert repeat.cached is s.cache[first.key]
    assert s.counts == Counter(generated=3, s2_no_bits=2, s1_equivalent=1)


def test_evaluated_result_is_reused_by_an_equivalent_genome():
    s = _screener()
    v = s.static(from_string("mul(sq_norm(E), b)"))
    stored = s.record(v.key, _ok("fp-1", 0.7))
    repeat = s.static(from_string("mul(b, no_op(sq_norm(E)))"))
    assert repeat.stage == "s1_equivalent" and repeat.cached == stored
    assert repeat.cached["fitness"] == 0.7
    other = s.static(from_string("mul(sq_norm(E), W)"))
    assert other.stage is None
    assert s.counts == Counter(generated=3, s1_equivalent=1, evaluated=1)


def test_record_counts_and_marks_semantic_duplicates():
    s = _screener()
    a = s.record("key-a", _ok("fp-1"))
    assert "duplicate_of" not in a
    again = s.record("key-a", _ok("fp-1"))  # the same graph recorded twice is no duplicate
    assert "duplicate_of" not in again
    dup = s.record("key-b", _ok("fp-1", 0.6))
    assert dup["duplicate_of"] == "key-a" and dup["fitness"] == 0.6
    assert s.cache["key-b"] == dup
    fresh = s.record("key-c", _ok("fp-2"))
    assert "duplicate_of" not in fresh
    probe = {"status": "probe", "reason": "nonfinite", "fitness": INVALID}
    invalid = {"status": "invalid", "reason": "constant", "fitness": INVALID}
    assert s.record("key-d", probe) == probe
    assert s.record("key-e", invalid) == invalid
    assert s.cache["key-d"] == probe and s.cache["key-e"] == invalid
    assert s.counts == Counter(evaluated=4, s4_semantic_dup=1, s3_probe=1, invalid=1)
    assert s.fingerprints == {"fp-1": "key-a", "fp-2": "key-c"}
    assert set(s.counts) <= set(STAGES)


def test_pruned_results_count_as_evaluated_until_settled():
    s = _screener()
    pruned = {"status": "pruned", "fitness": 0.3, "reason": "below 0.5 after 1 of 2 benches",
              "bench_fingerprints": ["fp-1", None]}  # fmt: skip
    assert s.record("key-a", pruned) == pruned and s.fingerprints == {}
    s.record("key-b", dict(pruned))
    assert s.counts == Counter(evaluated=2, pruned=2)
    assert validity_rate(Counter(generated=2, **s.counts)) == 1.0
    # Settled by a full evaluation: a fingerprint like any result, or invalid after all.
    assert "duplicate_of" not in s.settle("key-a", _ok("fp-9", 0.2))
    invalid = {"status": "invalid", "reason": "nonfinite", "fitness": INVALID}
    assert s.settle("key-b", invalid) == invalid == s.cache["key-b"]
    assert s.counts == Counter(evaluated=1, pruned=0, invalid=1)
    assert s.fingerprints == {"fp-9": "key-a"}


def test_state_round_trips_through_json():
    s = _screener()
    for text in ("sq_norm(W)", "matmul(A, E)", "sq_norm(no_op(W))", "mul(E, b)"):
        v = s.static(from_string(text))
    s.record(v.key, _ok("fp-1", 0.25))
    s.record("other", _ok("fp-1", 0.125))
    state = json.loads(json.dumps(s.state()))
    t = _screener()
    t.load_state(state)
    assert t.counts == s.counts and t.cache == s.cache and t.fingerprints == s.fingerprints
    assert validity_rate(t.counts) == validity_rate(s.counts)
    again = t.static(from_string("mul(b, E)"))
    assert again.stage == "s1_equivalent" and again.cached["fitness"] == 0.25


def test_validity_rate():
    assert validity_rate(Counter()) == 0.0
    assert validity_rate(Counter(generated=3, s1_equivalent=3)) == 0.0
    counts = Counter(generated=10, s1_equivalent=2, s2_shape=3, evaluated=4, s3_probe=1)
    assert validity_rate(counts) == pytest.approx(4 / 8)
    s = _screener()
    for text in ("sq_norm(W)", "sq_norm(W)", "matmul(A, E)", "mul(E, b)", "add(E, b)"):
        v = s.static(from_string(text))
        if v.stage is None:
            s.record(v.key, _ok(f"fp-{v.key}"))
    assert validity_rate(s.counts) == pytest.approx(2 / 4)
