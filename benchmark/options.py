"""Command-line option types: every numeric option is range-checked when it is parsed.

Each function is an ``argparse`` ``type=``: it takes the option's text and returns the
value, or raises ``argparse.ArgumentTypeError`` with what was expected, so a bad value is
refused by the parser, before any work is done or any file is written. They live in the
lowest layer so ``benchmark/`` (``--rounding`` knobs) and ``emq/`` share them.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from benchmark.quantizers import SUPPORTED_BITS

MAX_SEED = 2**32 - 1  # numpy, torch and random all take it
MAX_COUNT = 10**9
TRAIN_IMAGES = 60_000


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _fail(text: str, expected: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{_shown(text)}: expected {expected}")


def _int(text: str, expected: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _fail(text, expected) from None


def _float(text: str, expected: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise _fail(text, expected) from None
    if not math.isfinite(value):
        raise _fail(text, expected)
    return value


def int_range(lo: int, hi: int, what: str = "an integer") -> Callable[[str], int]:
    """An integer in ``[lo, hi]``."""
    expected = f"{what} from {lo:,} to {hi:,}" if hi < MAX_COUNT else f"{what} >= {lo}"

    def parse(text: str) -> int:
        value = _int(text, expected)
        if not lo <= value <= hi:
            raise _fail(text, expected)
        return value

    parse.__name__ = "integer"
    return parse


def float_range(
    lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, what: str = "a number"
) -> Callable[[str], float]:
    """A finite number in ``[lo, hi]`` (``lo_open``/``hi_open``: that end excluded)."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    expected = f"{what} in {left}{lo:g}, {hi:g}{right}" if math.isfinite(hi) else (
        f"a finite {what[2:] if what.startswith('a ') else what} {'>' if lo_open else '>='} {lo:g}"
    )  # fmt: skip

    def parse(text: str) -> float:
        value = _float(text, expected)
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            raise _fail(text, expected)
        return value

    parse.__name__ = "number"
    return parse


def text(value: str) -> str:
    """Free text (a path, a name, a list of names): refused when empty or only separators,
    which would otherwise read as "option not given" and silently fall back to a default."""
    if not value.replace(",", "").replace(";", "").strip():
        raise argparse.ArgumentTypeError(
            f"{_shown(value)}: expected a value (a path, name or list); leave the option out "
            "for its default"
        )
    return value


seed = int_range(0, MAX_SEED, "a seed, an integer")
positive_int = int_range(1, MAX_COUNT, "an integer")
nonneg_int = int_range(0, MAX_COUNT, "an integer")
images = int_range(1, TRAIN_IMAGES, "a number of images")
# Local worker processes: each imports torch and holds a model; a thousand of them would
# swap the machine to a halt. Four per core is the most that can help (more: --scheduler).
MAX_JOBS = 4 * (os.cpu_count() or 1)
jobs = int_range(1, MAX_JOBS, "a number of local processes (4 per CPU core)")
fraction = float_range(0.0, 1.0, lo_open=True, what="a fraction")
# Relative BOPs (vs W8A8): at most 4, W16A16 everywhere (the widest supported candidate);
# the allocator then checks the budget against its groups' own range.
relative_bops = float_range(0.0, 4.0, lo_open=True, what="a relative BOPs budget")
percent = float_range(0.0, 100.0, what="a percentage")
probability = float_range(0.0, 1.0, what="a probability")
positive_float = float_range(0.0, math.inf, lo_open=True, what="a number")
nonneg_float = float_range(0.0, math.inf, what="a number")

_BITS = f"integers from {SUPPORTED_BITS.start} to {SUPPORTED_BITS.stop - 1}"


def bits(text: str) -> int:
    """One supported bit-width."""
    value = _int(text, f"a bit-width, one of the {_BITS}")
    if value not in SUPPORTED_BITS:
        raise argparse.ArgumentTypeError(f"{_shown(text)}: bit-width(s) [{value}] unsupported; "
                                          f"expected {_BITS}")  # fmt: skip
    return value


def bit_list(text: str) -> tuple[int, ...]:
    """Distinct supported bit-widths, comma-separated: ``"2,3,4,8"``."""
    values = int_list(text)
    bad = sorted({v for v in values if v not in SUPPORTED_BITS})
    if bad:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)}: bit-width(s) {bad} unsupported; expected distinct {_BITS}"
        )
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"{_shown(text)}: a bit-width is given twice; expected distinct {_BITS}"
        )
    return values


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers: ``"0,1,2"``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or len(values) > 10_000:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)}: expected comma-separated integers, e.g. 2,3,4,8"
        )
    return values


def seed_list(text: str) -> tuple[int, ...]:
    """Distinct seeds, comma-separated: ``"0,1,2"``."""
    try:
        values = int_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if any(not 0 <= v <= MAX_SEED for v in values) or len(set(values)) != len(values):
        raise _fail(text, f"distinct seeds, integers from 0 to {MAX_SEED}")
    return values


def budget_list(text: str) -> tuple[float, ...]:
    """Comma-separated relative BOPs budgets in (0, 4]: ``"0.25,0.35,0.5"``."""
    expected = "comma-separated relative BOPs budgets in (0, 4], e.g. 0.25,0.35,0.5"
    parts = [p for p in text.split(",") if p.strip()]
    if not parts or len(parts) > 1000:
        raise _fail(text, expected)
    try:
        return tuple(relative_bops(p) for p in parts)
    except argparse.ArgumentTypeError:
        raise _fail(text, expected) from None
