"""Tests for emq.allocate.budget: weight-size budgets in every allocator and at the CLI."""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import pytest
from allocate_tiny import tiny_net

from emq.allocate.budget import MB, Budget, SizeSpec, group_sizes, parse_size
from emq.allocate.groups import default_groups, group_costs
from emq.allocate.ilp import solve_choices
from emq.allocate.problem import AllocationProblem
from emq.cli import main

MODEL = "allocate_tiny:tiny_net"


pytestmark = pytest.mark.usefixtures("allocate_env")  # conftest: private cache, one thread


@pytest.fixture(scope="module")
def tiny_problem() -> AllocationProblem:
    return AllocationProblem.for_model("tiny", tiny_net(), cache=False, validation_images=200)


def test_parse_size_reads_megabytes_and_fractions():
    assert parse_size("2.5MB") == SizeSpec(2.5, "MB")
    assert parse_size(" 0.75 mb") == SizeSpec(0.75, "MB")
    assert parse_size("0.5") == SizeSpec(0.5, "fraction")
    assert SizeSpec(1.0, "MB").fraction(float(MB)) == pytest.approx(1.0)
    assert SizeSpec(0.5, "fraction").fraction(123.0) == 0.5
    for bad in ("0", "-1MB", "0MB", "3", "abc", "nan", "2.5GB", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="weight-memory budget"):
            parse_size(bad)


@pytest.mark.parametrize("bad", ["3", "abc", "0MB", "-0.5"])
def test_bad_size_is_refused_at_parse_time(bad, capsys, tmp_path):
    out = tmp_path / "out"
    code = main(["allocate", "--model", MODEL, "--method", "ilp", "--budget-size", bad,
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("emq: error:") and "--budget-size" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("size", ["0.2", "0.00005MB"])
def test_size_no_configuration_meets_is_one_error_line(size, capsys, tmp_path):
    out = tmp_path / "out"
    code = main(["allocate", "--model", MODEL, "--method", "sqnr", "--scorer", "sqnr-measured",
                 "--budget-size", size, "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("emq: error:")
    assert "no configuration can meet it" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert not (tmp_path / "cache").exists()  # refused before phase 1


def brute(values, limits):
    """Every feasible choice with its total sensitivity (enumeration)."""
    out = []
    for choice in itertools.product(*(range(len(v)) for v in values)):
        if all(sum(c[k] for c, k in zip(cs, choice, strict=True)) <= b for cs, b in limits):
            out.append((sum(v[k] for v, k in zip(values, choice, strict=True)), choice))
    return sorted(out)


@pytest.mark.parametrize("seed", range(6))
def test_ilp_honours_bops_and_size_together(seed):
    rng = np.random.default_rng(seed)
    groups = default_groups([f"l{i}" for i in range(5)])
    macs = rng.integers(50, 5000, size=5).tolist()
    weights = rng.integers(10, 3000, size=5).tolist()
    bops = [np.round(c * 64 * sum(macs)) for c in group_costs(groups, macs)]
    bits = [np.round(c * 8 * sum(weights)) for c in group_sizes(groups, weights)]
    values = [np.concatenate([[0.0], np.sort(rng.random(3))]) for _ in groups]
    limits = [(bops, float(np.floor(0.6 * 64 * sum(macs)))),
              (bits, float(np.floor(rng.uniform(0.3, 0.6) * 8 * sum(weights))))]  # fmt: skip
    feasible = brute(values, limits)
    found = solve_choices(values, limits, 4)
    sens = [sum(v[k] for v, k in zip(values, c, strict=True)) for c in found]
    assert sens[0] == pytest.approx(feasible[0][0], abs=1e-9)
    assert sens == sorted(sens) and len(set(found)) == len(found)
    for c in found:  # every solution fits both limits
        assert all(sum(x[k] for x, k in zip(cs, c, strict=True)) <= b for cs, b in limits)
    # the size limit binds: without it the optimum is more sensitive-free (never worse)
    free = solve_choices(values, limits[:1], 1)[0]
    assert sum(v[k] for v, k in zip(values, free, strict=True)) <= sens[0] + 1e-12


@pytest.mark.parametrize("method", ["sqnr", "smpq", "ilp"])
def test_every_method_honours_a_size_budget(tiny_problem, method):
    size = 0.35
    alloc = tiny_problem.allocate(method, "sqnr-measured", budget_size=size)
    assert alloc.details["relative_size"] <= size + 1e-9
    both = tiny_problem.allocate(method, "sqnr-measured", budget_bops=0.6, budget_size=size)
    assert both.relative_bops <= 0.6 + 1e-9 and both.details["relative_size"] <= size + 1e-9
    free = tiny_problem.allocate(method, "sqnr-measured", budget_bops=1.0)
    assert free.details["relative_size"] > size  # the size budget is what bound it


def test_size_in_megabytes_is_the_same_budget_as_its_fraction(tiny_problem):
    w8_mb = sum(tiny_problem.weights) / MB  # one byte per weight at W8
    frac = tiny_problem.size_fraction(SizeSpec(0.4 * w8_mb, "MB"))
    assert frac == pytest.approx(0.4)
    a = tiny_problem.allocate("ilp", "sqnr-measured", budget_size=frac)
    b = tiny_problem.allocate("ilp", "sqnr-measured", budget_size=0.4)
    assert a.w_bits == b.w_bits and a.details["size_mb"] <= 0.4 * w8_mb + 1e-12
    assert Budget(None, 0.4).fits(1.0, a.details["relative_size"])


def test_uniform_under_a_size_budget(tiny_problem):
    alloc = tiny_problem.uniform(None, 0.4)  # W3 = 0.375 of W8 fits, W4 = 0.5 does not
    assert alloc.w_bits == [3, 3, 3]
    with pytest.raises(ValueError, match="no configuration can meet it"):
        tiny_problem.uniform(None, 0.1)


def test_compare_runs_on_a_size_budget(capsys, tmp_path):
    argv = ["allocate", "--model", MODEL, "--compare", "--proxy", "bparams", "--budget-size",
            "0.4", "--verify", "0", "--front-points", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "budget size 0.4 ilp: proxy" in out
    doc = json.loads((tmp_path / "compare.json").read_text())
    assert doc["budgets"] == ["size 0.4"] and len(doc["rows"]) == 1 + 3 * 3
    for r in doc["rows"]:
        assert r["budget_bops"] is None and r["budget_size"] == 0.4
        assert r["relative_size"] <= 0.4 + 1e-9 and not r["verified"]
