"""Tests for emq.allocate.registry: one contract for every allocator, a fourth one plugs in."""

from __future__ import annotations

import json

import pytest
from allocate_tiny import tiny_net
from matplotlib.figure import Figure

from emq.allocate import problem as problem_module
from emq.allocate.compare import compare_rows
from emq.allocate.problem import AllocationProblem
from emq.allocate.registry import (
    ALLOCATORS,
    AllocationRequest,
    UnknownAllocatorError,
    allocator_names,
    get_allocator,
    register_allocator,
)
from emq.allocate.result import Allocation
from emq.allocate.verify import uniform_choices
from emq.cli import main

MODEL = "allocate_tiny:tiny_net"
pytestmark = pytest.mark.usefixtures("allocate_env")  # conftest: private cache, one thread


def uniform_max(request: AllocationRequest) -> Allocation:
    """Every group at the same candidate rank: the widest that fits the budget."""
    for rank, u in enumerate(uniform_choices(request.groups)):
        if request.fits(u.choice):
            return request.allocation(u.choice, 0.0, 0, rank=rank)
    raise ValueError("no uniform configuration fits the budget")


@pytest.fixture
def registered():
    """``uniform-max`` registered for one test, then removed."""
    entry = register_allocator("uniform-max", uniform_max)
    yield entry
    del ALLOCATORS["uniform-max"]


@pytest.fixture(scope="module")
def problem() -> AllocationProblem:
    return AllocationProblem.for_model("tiny", tiny_net(), cache=False)


def test_builtins_are_registered_in_order_with_their_options():
    assert allocator_names()[:3] == ("sqnr", "smpq", "ilp")
    assert problem_module.METHODS == allocator_names()
    assert get_allocator("sqnr").accuracy_target and not get_allocator("ilp").accuracy_target
    assert get_allocator("sqnr").options() == {"search": "interpolation"}
    assert {"smpq_value", "lam", "seed"} <= set(get_allocator("smpq").options())
    assert get_allocator("smpq").needs_table({"smpq_value": "table"})
    assert not get_allocator("smpq").needs_table({"smpq_value": "accuracy"})
    with pytest.raises(ValueError, match="already registered"):
        register_allocator("ilp", uniform_max)


def test_a_fourth_allocator_runs_through_the_problem(registered, problem):
    assert "uniform-max" in allocator_names() and "uniform-max" in problem_module.METHODS
    alloc = problem.allocate("uniform-max", "bops", budget_bops=0.3)
    assert isinstance(alloc, Allocation) and alloc.method == "uniform-max"
    assert alloc.scorer == "bops" and alloc.relative_bops <= 0.3
    assert len(set(alloc.w_bits)) == 1  # uniform
    assert alloc.w_bits == problem.uniform(0.3).w_bits  # the widest uniform that fits
    # the common record: phase 1 and the costs are added for every allocator
    assert alloc.evaluations == problem.sensitivity("bops").evaluations
    assert {"rank", "phase1_seconds", "sensitivity_source", "budget_bops",
            "relative_size", "size_mb"} <= set(alloc.details)  # fmt: skip
    # a budget is required unless the allocator declares it meets accuracy targets
    with pytest.raises(ValueError, match="UNIFORM-MAX allocator needs a budget"):
        problem.allocate("uniform-max", "bops", accuracy_target=5.0)
    # one set of options serves every method: another method's are checked, then ignored
    with pytest.raises(ValueError, match="unknown allocator option.*width"):
        problem.allocate("uniform-max", "bops", budget_bops=0.3, width=4)
    with pytest.raises(ValueError, match="unknown search 'bogus'"):
        problem.allocate("uniform-max", "bops", budget_bops=0.3, search="bogus")
    same = problem.allocate("uniform-max", "bops", budget_bops=0.3, search="binary", lam=1.0)
    assert same.w_bits == alloc.w_bits


def test_a_fourth_allocator_appears_in_compare(registered, capsys, tmp_path, monkeypatch):
    figures: list[Figure] = []
    save = Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    argv = ["allocate", "--model", MODEL, "--compare", "--proxy", "bparams", "--budgets", "0.5",
            "--front-points", "2", "--verify", "0", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "budget 0.5 uniform-max: proxy" in out
    doc = json.loads((tmp_path / "compare.json").read_text())
    rows = [r for r in doc["rows"] if r["method"] == "uniform-max"]
    assert len(rows) == 3 and {r["scorer"] for r in rows} == {"proxy:bparams", "hawq_v3",
                                                               "sqnr-measured"}  # fmt: skip
    assert len(doc["rows"]) == 1 + 4 * 3
    labels = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    assert "uniform-max / hawq_v3" in labels
    lines = {ln.get_label(): ln.get_marker() for ln in figures[-1].axes[0].get_lines()}
    builtin = {lines[f"{m} / hawq_v3"] for m in ("sqnr", "smpq", "ilp")}
    assert lines["uniform-max / hawq_v3"] not in builtin  # a marker of its own


def test_an_unknown_method_fails_before_any_work(problem, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the method was checked")

    monkeypatch.setattr(problem, "sensitivity", no_work)
    monkeypatch.setattr(problem, "check_budget", no_work)
    with pytest.raises(UnknownAllocatorError, match="unknown method 'nope': expected one of sqnr"):
        problem.allocate("nope", "bops", budget_bops=0.5)
    monkeypatch.setattr(problem, "uniform", no_work)
    with pytest.raises(UnknownAllocatorError, match="'nope'"):
        compare_rows(problem, {"bops": "bops"}, [(0.5, None)], None, methods=["sqnr", "nope"])
    code = main(["allocate", "--model", MODEL, "--method", "nope", "--budget-bops", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid choice: 'nope'" in err


def test_an_allocator_must_return_its_groups_candidates(problem):
    def bad(request: AllocationRequest) -> Allocation:
        """Bits no group offers."""
        alloc = request.allocation((0,) * len(request.groups), 0.0, 0)
        alloc.w_bits = [5] * len(alloc.w_bits)
        return alloc

    register_allocator("bad", bad)
    try:
        with pytest.raises(ValueError, match="expected one of its candidates"):
            problem.allocate("bad", "bops", budget_bops=1.0)
    finally:
        del ALLOCATORS["bad"]
