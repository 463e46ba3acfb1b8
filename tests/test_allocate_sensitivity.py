"""Tests for emq.allocate.sensitivity: measured SQNR phase 1, its cache, scorer tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from allocate_tiny import tiny_net

from benchmark.data import calibration_batch
from benchmark.ptq import QuantSim
from emq.allocate.groups import QuantizerGroup, default_groups
from emq.allocate.sensitivity import measured_sensitivity, scorer_sensitivity
from emq.scoring import ScoreContext
from primitives.inputs import InputSettings


@pytest.fixture(scope="module")
def sim():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, _ = calibration_batch(64, 0)
    yield QuantSim(tiny_net(), x)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def groups():
    return default_groups(["0", "3", "7"])


class Interrupt(RuntimeError):
    """Raised from the progress callback to stop phase 1 part-way."""


def test_measured_sensitivity_grows_as_bits_drop(sim, groups):
    table = measured_sensitivity(sim, sim.calib[:32], groups, cache=False)
    assert table.evaluations == 3 * 4 and table.from_cache == 0
    for row in table.values:
        assert row.shape == (4,)
        assert np.all(row > 0)
        assert row[0] < row[-1]  # W8A8 adds less output noise than W2A8


def test_measured_cache_resumes_after_interrupt(sim, groups, tmp_path):
    done = []

    def stop_after_five(g: int, c: int) -> None:
        done.append((g, c))
        if len(done) == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        measured_sensitivity(sim, sim.calib[:32], groups, tmp_path, stop_after_five)
    resumed = measured_sensitivity(sim, sim.calib[:32], groups, tmp_path)
    assert resumed.from_cache == 5 and resumed.evaluations == 12 - 5
    again = measured_sensitivity(sim, sim.calib[:32], groups, tmp_path)
    assert again.evaluations == 0 and again.from_cache == 12
    fresh = measured_sensitivity(sim, sim.calib[:32], groups, cache=False)
    for a, b, c in zip(resumed.values, again.values, fresh.values, strict=True):
        assert np.allclose(a, b) and np.allclose(a, c)
    # other data is another key: nothing is reused
    other = measured_sensitivity(sim, sim.calib[32:64], groups, tmp_path)
    assert other.from_cache == 0


def fixed_table(ctx: ScoreContext) -> np.ndarray:
    """A scorer whose table is S[l, b] = (l + 1) * b (higher bits score higher)."""
    return np.outer(np.arange(1, 4), np.asarray(ctx.candidates, dtype=float))


def test_scorer_sensitivity_is_top_minus_candidate(sim, tmp_path):
    x, y = calibration_batch(16, 0)
    ctx = ScoreContext(sim.model, x, y, InputSettings(candidates=(2, 4, 8)), cache=False)
    groups = [
        QuantizerGroup("a", (0, 2), ("0", "7"), ((8, 16), (8, 8), (4, 8), (2, 8))),
        QuantizerGroup("b", (1,), ("3",), ((8, 8), (4, 8))),
    ]
    table = scorer_sensitivity(fixed_table, ctx, groups, tmp_path)
    # group a = layers 0 and 2: S = (1 + 3) * b; W8A16 reads the W8 column (activation rule)
    assert np.allclose(table.values[0], [0.0, 0.0, 16.0, 24.0])
    assert np.allclose(table.values[1], [0.0, 8.0])
    assert table.evaluations == 0
    assert scorer_sensitivity(fixed_table, ctx, groups, tmp_path).from_cache == 1


def test_scorer_sensitivity_rejects_what_a_table_cannot_rank(sim):
    x, y = calibration_batch(16, 0)
    ctx = ScoreContext(sim.model, x, y, InputSettings(candidates=(2, 4, 8)), cache=False)
    low_act = [QuantizerGroup("a", (0, 1, 2), ("0", "3", "7"), ((8, 8), (8, 4)))]
    with pytest.raises(ValueError, match="activations below 8 bits"):
        scorer_sensitivity(fixed_table, ctx, low_act, cache=False)
    odd_w = [QuantizerGroup("a", (0, 1, 2), ("0", "3", "7"), ((8, 8), (3, 8)))]
    with pytest.raises(ValueError, match="weight bits 3 outside"):
        scorer_sensitivity(fixed_table, ctx, odd_w, cache=False)
