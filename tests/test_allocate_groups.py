"""Tests for emq.allocate.groups: candidates, default and user groups, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emq.allocate.groups import (
    QuantizerGroup,
    default_groups,
    group_costs,
    groups_from_spec,
    layer_bits,
    load_groups,
    parse_candidate,
)

NAMES = ["conv1", "conv2", "fc"]


def test_parse_candidate_forms():
    assert parse_candidate("W4A8") == (4, 8)
    assert parse_candidate("w8a16") == (8, 16)
    assert parse_candidate([2, 8]) == (2, 8)
    with pytest.raises(ValueError, match="W<bits>A<bits>"):
        parse_candidate("4x8")
    with pytest.raises(ValueError, match="weight bit-width 1 unsupported"):
        parse_candidate("W1A8")
    with pytest.raises(ValueError, match="activation bit-width 32 unsupported"):
        parse_candidate((8, 32))


def test_group_is_frozen_and_sorted_top_first():
    g = QuantizerGroup("g", (0,), ("conv1",), ((4, 8), (8, 16), (8, 8), (2, 8)))
    assert g.candidates == ((8, 16), (8, 8), (4, 8), (2, 8))
    assert g.top == (8, 16)
    with pytest.raises(AttributeError):
        g.name = "other"


def test_default_groups_one_per_layer():
    groups = default_groups(NAMES)
    assert [g.layers for g in groups] == [(0,), (1,), (2,)]
    assert groups[0].candidates == ((8, 8), (4, 8), (3, 8), (2, 8))


def test_user_groups_fill_uncovered_layers(tmp_path):
    spec = {"groups": [{"layers": ["fc", "conv1"], "candidates": ["W4A8", "W8A8", [8, 16]]}]}
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(spec))
    groups = load_groups(path, NAMES)
    assert [g.layers for g in groups] == [(0, 2), (1,)]
    assert groups[0].candidates == ((8, 16), (8, 8), (4, 8))
    w, a = layer_bits(groups, [0, 3], 3)
    assert (w, a) == ([8, 2, 8], [16, 8, 16])


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"groups": [{"layers": ["conv9"], "candidates": ["W4A8"]}]}, "unknown layer"),
        ({"groups": [{"layers": ["fc"], "candidates": ["W1A8"]}]}, "unsupported"),
        ({"groups": [{"layers": ["fc"], "candidates": ["W4"]}]}, "W<bits>A<bits>"),
        ({"groups": [{"layers": ["fc"]}, {"layers": ["fc"]}]}, "in both group"),
        ({"groups": "fc"}, "list under 'groups'"),
    ],
)
def test_bad_group_specs_raise_clear_errors(spec, needle):
    with pytest.raises(ValueError, match=needle):
        groups_from_spec(spec, NAMES)


def test_bad_group_file(tmp_path):
    path = tmp_path / "g.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_groups(path, NAMES)
    with pytest.raises(ValueError, match="does not exist"):
        load_groups(tmp_path / "missing.json", NAMES)


def test_group_costs_sum_to_relative_bops():
    groups = default_groups(NAMES)
    costs = group_costs(groups, [100, 50, 10])
    assert np.isclose(sum(c[0] for c in costs), 1.0)  # W8A8 everywhere
    assert np.isclose(sum(c[-1] for c in costs), 0.25)  # W2A8 everywhere
