"""Bit-width allocators driven by any Scorer: SQNR (greedy Pareto), SMPQ (Shapley) and ILP.

Each allocator is one entry of ``registry`` (``@allocator("name")`` on a function
``(AllocationRequest, **options) -> Allocation``); ``AllocationProblem.allocate``, ``emq
allocate --method`` and ``--compare`` take every registered one.

* ``registry``: the allocator contract (``AllocationRequest`` in, ``Allocation`` out);
* ``groups``: quantizer groups (frozen dataclass) and their (w, a) candidates;
* ``sensitivity``: phase 1, measured output SQNR or a Scorer's table, cached;
* ``sqnr``: phase 2, the greedy Pareto front, BOPs budget and accuracy-target searches;
* ``smpq``: Monte-Carlo Shapley values with truncation and momentum, budget repair;
* ``ilp``: the exact least-sensitivity configuration under a budget (HAWQ-V3's ILP);
* ``budget``: relative BOPs and weight-memory budgets (``--budget-size``);
* ``verify``: the measured phase 2 of any method (candidates raced on validation images);
* ``problem``: a model with its groups, simulator and data, running any allocator;
* ``result``: the ``Allocation`` record and the data allocations are judged on;
* ``compare``: every method x scorer at fixed budgets (``emq allocate --compare``);
* ``rounding``: nearest vs AdaRound, fixed and mixed precision (``--compare-rounding``).

The command is ``emq.commands.allocate`` (options in, built objects to the library), the
tables and plot ``emq.reports.allocate``.
"""

# isort: off
# The built-in allocators register in this order, the order of --method and --compare.
from emq.allocate import sqnr, smpq, ilp  # noqa: F401

# isort: on
from emq.allocate.groups import QuantizerGroup, default_groups, load_groups
from emq.allocate.ilp import allocate_ilp
from emq.allocate.problem import AllocationProblem
from emq.allocate.result import Allocation
from emq.allocate.sensitivity import SensitivityTable, measured_sensitivity, scorer_sensitivity
from emq.allocate.smpq import allocate_smpq, exact_shapley, monte_carlo_shapley
from emq.allocate.sqnr import allocate_sqnr, greedy_front, search_accuracy

__all__ = [
    "Allocation",
    "AllocationProblem",
    "QuantizerGroup",
    "SensitivityTable",
    "allocate_ilp",
    "allocate_smpq",
    "allocate_sqnr",
    "default_groups",
    "exact_shapley",
    "greedy_front",
    "load_groups",
    "measured_sensitivity",
    "monte_carlo_shapley",
    "scorer_sensitivity",
    "search_accuracy",
]
