"""Tests for emq.allocate.result: the data allocations are judged on, the record."""

from __future__ import annotations

import torch

from benchmark.data import calibration_batch
from benchmark.ptq import relative_bops
from emq.allocate.result import make_allocation, training_subset, validation_split


def test_subsets_match_the_bench_calibration_and_stay_disjoint():
    cx, cy = calibration_batch(64, 0)
    x, y = training_subset(0, 64, 0)
    assert torch.equal(cx, x) and torch.equal(cy, y)
    vx, _ = validation_split(32, calib_images=64)
    assert not any(torch.equal(v, c) for v in vx for c in cx)
    assert torch.equal(vx, training_subset(64, 96, 0)[0])


def test_allocation_record_computes_relative_bops():
    alloc = make_allocation("sqnr", "x", ["a", "b"], [100, 300], [4, 8], [8, 8], 1.5, 3, k=1)
    assert alloc.relative_bops == relative_bops([100, 300], [4, 8], [8, 8])
    assert alloc.to_dict()["details"] == {"k": 1}
