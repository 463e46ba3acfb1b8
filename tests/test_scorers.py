"""Tests for emq.scorers and the Scorer contract (emq.scoring.Scorer)."""

from __future__ import annotations

import pytest

from emq.baselines import BASELINES
from emq.proxy import DEFAULT_PROXY, ProxyScorer
from emq.scorers import resolve_scorer
from emq.scoring import Scorer, scorer_inputs, scorer_label
from primitives.inputs import INPUT_NAMES


def test_every_baseline_is_a_scorer():
    for name in BASELINES:
        scorer = resolve_scorer(name)
        assert isinstance(scorer, Scorer) and scorer.name == name
        assert set(scorer.inputs) <= set(INPUT_NAMES)
    assert resolve_scorer("sqnr_measured").measured
    assert not resolve_scorer("hawq_v3").measured


def test_default_proxy_is_a_scorer_that_reads_only_its_leaves():
    scorer = resolve_scorer("default")
    assert isinstance(scorer, ProxyScorer) and isinstance(scorer, Scorer)
    assert resolve_scorer(str(DEFAULT_PROXY)).formula == scorer.formula
    assert scorer_inputs(scorer) == scorer.inputs and "H" not in scorer.inputs
    assert scorer_label(scorer) == scorer.formula


def test_scorer_inputs_of_plain_callables_and_input_free_baselines():
    assert scorer_inputs(lambda ctx: None) == INPUT_NAMES  # declares nothing: all
    assert scorer_inputs(resolve_scorer("bparams")) == ("W",)  # none needed: the cheapest
    assert scorer_inputs(resolve_scorer("hawq_v3")) == ("H", "E")
    assert scorer_label(resolve_scorer("hawq_v3")) == "hawq_v3"


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="neither a file nor a baseline"):
        resolve_scorer("no_such_scorer")
