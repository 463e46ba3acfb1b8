"""Budgets an allocation must meet: relative BOPs, weight memory, or both.

* **relative BOPs**: ``sum_l MACs_l * w_l * a_l`` over the same sum at W8A8;
* **weight memory** (as EMQ and OMPQ state it, "W-size"): the bits of the quantized weights of
  every quantizable layer, ``sum_l numel(W_l) * w_l`` (BatchNorm folded, so its parameters are
  inside ``W``; biases, scales and zero points are not counted). Given in MB (``2^20`` bytes,
  the unit of HAWQ-V3's and OMPQ's tables) or as a fraction of the W8 size; internally it is
  always the fraction (``size = 0.5``: half the memory of W8 everywhere).

A budget is additive over quantizer groups (each group's cost at each candidate), so every
allocator checks it in O(1) per flip, and the ILP takes it as one more linear constraint.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emq.allocate.groups import QuantizerGroup, group_costs

DEFAULT_BUDGETS = (0.25, 0.35, 0.5)  # relative BOPs budgets of the comparisons
MB = 2**20  # bytes in a megabyte, as HAWQ-V3 / OMPQ report model size
EPS = 1e-12
MAX_FRACTION = 2.0  # W16 everywhere, the widest supported weight
MAX_MB = 1e6
_SIZE_TEXT = re.compile(r"^\s*([0-9.eE+-]+)\s*(MB|MiB)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class SizeSpec:
    """A ``--budget-size`` as given: ``value`` megabytes or a ``value`` fraction of W8."""

    value: float
    unit: str  # "MB" or "fraction"

    def fraction(self, w8_bytes: float) -> float:
        """The budget as a fraction of the model's W8 weight memory."""
        return self.value if self.unit == "fraction" else self.value * MB / w8_bytes

    def __str__(self) -> str:
        return f"{self.value:g}MB" if self.unit == "MB" else f"{self.value:g}"


def parse_size(text: str) -> SizeSpec:
    """``argparse`` type of ``--budget-size``: ``"2.5MB"`` or a fraction of W8 (``"0.5"``)."""
    expected = (
        f"a weight-memory budget: megabytes in (0, {MAX_MB:g}] like 2.5MB, or a fraction of "
        f"the W8 weight size in (0, {MAX_FRACTION:g}] like 0.5"
    )
    shown = repr(text if len(text) <= 40 else text[:37] + "...")
    match = _SIZE_TEXT.match(text)
    try:
        value = float(match[1]) if match else float("nan")
    except ValueError:
        value = float("nan")
    unit = "MB" if match and match[2] else "fraction"
    hi = MAX_MB if unit == "MB" else MAX_FRACTION
    if not (np.isfinite(value) and 0.0 < value <= hi):
        raise argparse.ArgumentTypeError(f"{shown}: expected {expected}")
    return SizeSpec(value, unit)


def group_sizes(groups: Sequence[QuantizerGroup], weights: Sequence[int]) -> list[np.ndarray]:
    """Weight memory (fraction of W8 everywhere) of each group at each candidate."""
    total = 8.0 * float(np.sum(weights))
    return [
        np.asarray([float(sum(weights[i] for i in g.layers)) * w / total for w, _ in g.candidates])
        for g in groups
    ]


def relative_size(weights: Sequence[int], w_bits: Sequence[int]) -> float:
    """Weight memory of per-layer weight bits, as a fraction of W8 everywhere."""
    return float(np.dot(np.asarray(weights, float), np.asarray(w_bits, float))) / (
        8.0 * float(np.sum(weights))
    )


def size_mb(weights: Sequence[int], w_bits: Sequence[int]) -> float:
    """Weight memory of per-layer weight bits in MB (``2^20`` bytes)."""
    return float(np.dot(np.asarray(weights, float), np.asarray(w_bits, float))) / 8.0 / MB


@dataclass(frozen=True)
class Budget:
    """Relative BOPs and/or weight memory (fraction of W8); ``None`` = not constrained."""

    bops: float | None = None
    size: float | None = None

    def __bool__(self) -> bool:
        return self.bops is not None or self.size is not None

    def limits(
        self, groups: Sequence[QuantizerGroup], macs: Sequence[int], weights: Sequence[int]
    ) -> list[tuple[str, list[np.ndarray], float]]:
        """``(name, per-group costs, limit)`` of each constrained quantity, BOPs first."""
        out = []
        if self.bops is not None:
            out.append(("BOPs", group_costs(groups, macs), float(self.bops)))
        if self.size is not None:
            out.append(("weight size", group_sizes(groups, weights), float(self.size)))
        return out

    def fits(self, rel_bops: float, rel_size: float) -> bool:
        """Whether a configuration's relative BOPs and size meet the budget."""
        return (self.bops is None or rel_bops <= self.bops + EPS) and (
            self.size is None or rel_size <= self.size + EPS
        )

    def describe(self) -> str:
        """``"relative BOPs 0.35, weight size 0.5 of W8"`` (for messages)."""
        parts = []
        if self.bops is not None:
            parts.append(f"relative BOPs {self.bops:g}")
        if self.size is not None:
            parts.append(f"weight size {self.size:.4g} of W8")
        return ", ".join(parts) or "no budget"


def check_size_budget(
    size: float, groups: Sequence[QuantizerGroup], weights: Sequence[int], given: str = ""
) -> None:
    """Clear error when no configuration's weights fit ``size`` (fraction of W8)."""
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"weight-size budget must be a positive fraction of W8, got {size}")
    floor = float(sum(c.min() for c in group_sizes(groups, weights)))
    if size < floor - EPS:
        mb = floor * 8.0 * float(np.sum(weights)) / 8.0 / MB
        shown = f" ({given})" if given else ""
        raise ValueError(
            f"weight-size budget {size:.4g} of W8{shown} is below the lowest candidates' "
            f"weight size {floor:.4g} of W8 ({mb:.4g} MB): no configuration can meet it"
        )
