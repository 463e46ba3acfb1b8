"""The allocator registry: every bit-width allocator behind one contract.

An allocator is one function registered by name (AIMET AMP / ModelOpt AutoQuantize style:
the search is one object behind a small interface, callbacks passed in)::

    @allocator("ilp", doc="exact least total sensitivity under a budget (HAWQ-V3's ILP)")
    def ilp_allocator(request: AllocationRequest) -> Allocation:
        ...

It gets an ``AllocationRequest`` - phase 1's sensitivity table, the budget (or accuracy
target), the model's groups and costs, and a measured-accuracy callback - plus the
keyword options its signature declares (e.g. ``search=...``), and returns the one common
``Allocation`` with its own (phase-2) time and evaluations; ``AllocationProblem.allocate``
adds phase 1's. Adding an allocator is one decorated function (or ``register_allocator``);
``emq allocate --method`` and ``--compare`` list every registered one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from emq.allocate.budget import EPS, Budget
from emq.allocate.groups import QuantizerGroup, layer_bits
from emq.allocate.result import Allocation, make_allocation
from emq.allocate.sensitivity import SensitivityTable


class UnknownAllocatorError(ValueError):
    """An allocator name is not in the registry; the message lists the valid names."""


@dataclass(frozen=True)
class AllocationRequest:
    """What every allocator is given.

    ``table``: phase-1 sensitivities (``None`` only when the entry's ``needs_table`` says
    so for the given options); ``budget``: relative BOPs and/or weight size (fraction of
    W8), empty when an ``accuracy_target`` (top-1 % on validation images) is asked for;
    ``evaluate(w_bits, a_bits)``: measured top-1 (%) on those validation images.
    """

    method: str
    scorer: str  # label of the scorer, recorded in the Allocation
    table: SensitivityTable | None
    budget: Budget
    accuracy_target: float | None
    groups: tuple[QuantizerGroup, ...]
    layer_names: tuple[str, ...]
    macs: tuple[int, ...]
    weights: tuple[int, ...]  # weight elements per layer (weight memory)
    evaluate: Callable[[list[int], list[int]], float]

    def bits(self, choice: Sequence[int]) -> tuple[list[int], list[int]]:
        """Per-layer ``(w_bits, a_bits)`` of a choice (candidate index per group)."""
        return layer_bits(self.groups, choice, len(self.macs))

    def fits(self, choice: Sequence[int]) -> bool:
        """Whether a choice meets every limit of the budget."""
        return all(
            sum(float(k[c]) for k, c in zip(costs, choice, strict=True)) <= limit + EPS
            for _, costs, limit in self.budget.limits(self.groups, self.macs, self.weights)
        )

    def allocation(
        self,
        choice: Sequence[int],
        seconds: float,
        evaluations: int,
        scorer: str | None = None,
        **details: object,
    ) -> Allocation:
        """The ``Allocation`` of a choice: this request's method, scorer and layers."""
        w, a = self.bits(choice)
        return make_allocation(
            self.method, self.scorer if scorer is None else scorer, self.layer_names, self.macs,
            w, a, seconds, evaluations, **details,
        )  # fmt: skip


class Allocator(Protocol):
    """``allocator(request, **options) -> Allocation`` (phase 2 only: its own cost)."""

    def __call__(self, request: AllocationRequest, **options: Any) -> Allocation: ...


def _always(options: dict[str, Any]) -> bool:
    return True


def _no_check(options: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class AllocatorEntry:
    """A registered allocator.

    ``accuracy_target``: it can meet an accuracy target (else it needs a budget);
    ``needs_table(options)``: whether phase 1 is computed for it (default: always);
    ``check(options)``: raises a clear error on a bad option value, before any work.
    Both get the allocator's options with its defaults filled in (``bind``).
    """

    name: str
    fn: Allocator
    doc: str
    accuracy_target: bool = False
    needs_table: Callable[[dict[str, Any]], bool] = _always
    check: Callable[[dict[str, Any]], None] = _no_check

    def options(self) -> dict[str, Any]:
        """Keyword options of the allocator (its parameters after the request), defaults."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name: p.default for p in params if p.kind in kinds}

    def bind(self, options: dict[str, Any]) -> dict[str, Any]:
        """Its options: the defaults, updated by those of ``options`` it declares."""
        mine = self.options()
        return {**mine, **{k: v for k, v in options.items() if k in mine}}

    def __call__(self, request: AllocationRequest, **options: Any) -> Allocation:
        alloc = self.fn(request, **self.bind(options))
        if not isinstance(alloc, Allocation):
            raise TypeError(
                f"allocator {self.name!r} returned {type(alloc).__name__}, expected an Allocation"
            )
        return alloc


ALLOCATORS: dict[str, AllocatorEntry] = {}


def register_allocator(
    name: str,
    fn: Allocator,
    doc: str = "",
    accuracy_target: bool = False,
    needs_table: Callable[[dict[str, Any]], bool] = _always,
    check: Callable[[dict[str, Any]], None] = _no_check,
) -> AllocatorEntry:
    """Register ``fn(request, **options) -> Allocation`` under ``name`` (see ``AllocatorEntry``).

    ``doc``: a one-line description (default: the first line of ``fn``'s docstring).
    """
    if not isinstance(name, str) or not name or name in ALLOCATORS:
        what = "already registered" if name in ALLOCATORS else "not a valid name"
        raise ValueError(f"allocator {name!r} is {what}")
    first = (doc or fn.__doc__ or name).strip().splitlines()[0]
    entry = AllocatorEntry(name, fn, first, accuracy_target, needs_table, check)
    ALLOCATORS[name] = entry
    return entry


def allocator(
    name: str,
    doc: str = "",
    accuracy_target: bool = False,
    needs_table: Callable[[dict[str, Any]], bool] = _always,
    check: Callable[[dict[str, Any]], None] = _no_check,
) -> Callable[[Allocator], Allocator]:
    """Decorator form of ``register_allocator``."""

    def decorator(fn: Allocator) -> Allocator:
        register_allocator(name, fn, doc, accuracy_target, needs_table, check)
        return fn

    return decorator


def get_allocator(name: str) -> AllocatorEntry:
    """The registered allocator called ``name``; a clear error lists the valid names."""
    try:
        return ALLOCATORS[name]
    except (KeyError, TypeError):
        raise UnknownAllocatorError(
            f"unknown method {name!r}: expected one of {', '.join(ALLOCATORS)}"
        ) from None


def allocator_names() -> tuple[str, ...]:
    """Every registered allocator, in registration order."""
    return tuple(ALLOCATORS)


def check_options(options: dict[str, Any]) -> None:
    """Clear error for an option no allocator declares, or a value its allocator refuses.

    One set of options serves every method (each allocator takes those it declares), so
    every registered allocator checks the values of its own.
    """
    known = {k for entry in ALLOCATORS.values() for k in entry.options()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown allocator option(s) {', '.join(unknown)}: the registered allocators "
            f"take {', '.join(sorted(known)) or 'none'}"
        )
    for entry in ALLOCATORS.values():
        entry.check(entry.bind(options))
